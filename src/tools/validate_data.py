#!/usr/bin/env python
"""Check a dataset: both record files parse and every image exists and decodes (all bad paths listed at once)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenfocus.cli import stage_main  # noqa: E402
from tokenfocus.stages import validate_dataset  # noqa: E402

if __name__ == "__main__":
    stage_main(__doc__, validate_dataset)
