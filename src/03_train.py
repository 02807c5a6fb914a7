#!/usr/bin/env python
"""Stage 03: LoRA fine-tuning with the token-focus loss, one adapter per (model, question group,
fold) -> output/<exp>/models/<model>/<group>/fold<k>/ (group: mixed, or total / element when
trained separately). Runs every model x group x fold of the config by
default; finished folds are skipped, and an interrupted fold resumes from its last checkpoint.
On a CPU, folds can train side by side (--jobs, or jobs in the config; the demo: one per core).
Several GPUs: accelerate launch src/03_train.py --config ...
"""
import sys

from tokenfocus.cli import add_jobs_option, run_stage, stage_parser
from tokenfocus.stages import run_training

if __name__ == "__main__":
    p = stage_parser(__doc__)
    p.add_argument("--model", help="only this model (a name from the config's models)")
    p.add_argument("--group", help="only this question group: 'mixed', or 'total' / 'element' when trained separately")
    p.add_argument("--fold", type=int, help="only this fold")
    add_jobs_option(p)
    a = p.parse_args()
    sys.exit(run_stage(run_training, a, model=a.model, group=a.group, fold=a.fold, jobs=a.jobs))
