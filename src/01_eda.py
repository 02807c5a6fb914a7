#!/usr/bin/env python
"""Stage 01: exploratory data analysis -> output/<exp>/eda/ (PNG plots and summary.md)."""

from tokenfocus.cli import stage_main
from tokenfocus.stages import run_eda

if __name__ == "__main__":
    stage_main(__doc__, run_eda)
