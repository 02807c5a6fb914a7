#!/usr/bin/env python
"""Stage 02: 5 prompt-grouped folds stratified on the total-score bin -> output/<exp>/folds.csv; prints per-fold counts."""

from tokenfocus.cli import stage_main
from tokenfocus.stages import make_fold_file

if __name__ == "__main__":
    stage_main(__doc__, make_fold_file)
