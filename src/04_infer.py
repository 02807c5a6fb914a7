#!/usr/bin/env python
"""Stage 04: out-of-fold and test prediction dumps -> output/<exp>/preds/<model>/<task>/{oof,test}_fold<k>.parquet.
On a CPU, folds can be scored side by side (--jobs, or jobs in the config; the demo: one per core)."""
import sys

from tokenfocus.cli import add_jobs_option, run_stage, stage_parser
from tokenfocus.stages import run_inference

if __name__ == "__main__":
    p = stage_parser(__doc__)
    add_jobs_option(p)
    a = p.parse_args()
    sys.exit(run_stage(run_inference, a, jobs=a.jobs))
