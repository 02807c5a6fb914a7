#!/usr/bin/env python
"""Stage 04: out-of-fold and test prediction dumps -> output/<exp>/preds/<model>/<task>/{oof,test}_fold<k>.parquet."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenfocus.cli import stage_main  # noqa: E402
from tokenfocus.stages import run_inference  # noqa: E402

if __name__ == "__main__":
    stage_main(__doc__, run_inference)
