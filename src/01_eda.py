#!/usr/bin/env python
"""Stage 01: exploratory data analysis -> output/<exp>/eda/ (PNG plots and summary.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenfocus.cli import stage_main  # noqa: E402
from tokenfocus.stages import run_eda  # noqa: E402

if __name__ == "__main__":
    stage_main(__doc__, run_eda)
