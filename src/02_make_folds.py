#!/usr/bin/env python
"""Stage 02: 5 prompt-grouped folds stratified on the total-score bin -> output/<exp>/folds.csv; prints per-fold counts."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenfocus.cli import stage_main  # noqa: E402
from tokenfocus.stages import make_fold_file  # noqa: E402

if __name__ == "__main__":
    stage_main(__doc__, make_fold_file)
