#!/usr/bin/env python
"""Check a dataset: both record files parse and every image exists and decodes (all bad paths listed at once)."""

from tokenfocus.cli import stage_main
from tokenfocus.stages import validate_dataset

if __name__ == "__main__":
    stage_main(__doc__, validate_dataset)
