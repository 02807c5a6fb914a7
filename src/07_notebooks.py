#!/usr/bin/env python
"""Stage 07: the stage notebooks (notebooks/NN_*.py, jupytext sources) executed over the run's
outputs -> output/<exp>/notebooks/ (ipynb + html).

    python src/07_notebooks.py                   # skipped while sources and leaderboard are unchanged
    python src/07_notebooks.py --publish         # also copy the executed demo notebooks over notebooks/*.ipynb
"""
import sys

from tokenfocus.cli import run_stage, stage_parser
from tokenfocus.stages import run_notebooks

if __name__ == "__main__":
    p = stage_parser(__doc__)
    p.add_argument("--publish", action="store_true",
                   help="copy the executed notebooks over the committed notebooks/*.ipynb (the demo's)")
    a = p.parse_args()
    sys.exit(run_stage(run_notebooks, a, publish=a.publish))
