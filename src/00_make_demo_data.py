#!/usr/bin/env python
"""Stage 00: render the demo dataset (a procedural stand-in for EvalMuse-40K) -> input/demo/.

Writes train_list.json, test.json, eval.json (hidden test truth), images/ and noise_ceiling.json.
Settings come from the config's `demo:` section and `dataset.root`; --out and --seed override
them. A finished dataset made by the same settings is kept unless --force. A config without a
`demo:` section (real data) has nothing to render.
"""
import sys

from tokenfocus.cli import run_stage, stage_parser
from tokenfocus.stages import make_demo

if __name__ == "__main__":
    p = stage_parser(__doc__)
    p.add_argument("--out", default=None, help="output folder (default: the config's dataset.root)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the config's demo.seed)")
    a = p.parse_args()
    sys.exit(run_stage(make_demo, a, out=a.out, seed=a.seed))
