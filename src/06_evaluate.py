#!/usr/bin/env python
"""Stage 06: score a submission with the challenge's metrics (SRCC, PLCC, ACC, Final).

    python src/06_evaluate.py --config configs/demo.yaml        # the experiment's submission vs its eval file
    python src/06_evaluate.py --truth input/demo/eval.json --submission output/demo/submission/submission.zip

A submission with a missing, extra or duplicate image, a missing element key or a null value is
refused with the reason and exit status 2.

"""
import sys

from tokenfocus.cli import run_stage, stage_parser
from tokenfocus.stages import evaluate_submission

if __name__ == "__main__":
    p = stage_parser(__doc__)
    p.add_argument("--truth", default=None, help="truth records (output.json shape); default: the config's eval file")
    p.add_argument("--submission", default=None,
                   help="submission.zip, a folder holding output.json, or output.json; default: the experiment's")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    a = p.parse_args()
    sys.exit(run_stage(evaluate_submission, a, truth=a.truth, submission=a.submission, json_out=a.json))
