#!/usr/bin/env python
"""Stages 03 and 04 with folds one after another (jobs=1) and side by side (jobs=N), in one run.

    .venv/bin/python bench/bench_parallel_folds.py            # about 4 minutes on 2 CPU cores
    .venv/bin/python bench/bench_parallel_folds.py --jobs 2 --folds 4 --questions 600

Both families of the demo's tiny bases, the demo's training settings, ``--folds`` folds each,
``--questions`` training questions per fold; every run starts from an empty output directory.
Prints the wall time of each stage per mode, the ratio, and checks that both modes wrote the
same OOF predictions (to 1e-3: one thread per process against several changes float rounding).
"""
from __future__ import annotations

import argparse
import copy
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

from tokenfocus import stages
from tokenfocus.config import load_config
from tokenfocus.infer import read_model_dumps
from tokenfocus.parallel import available_cores
from tokenfocus.stages import run_training


def experiment(base: dict, root: Path, name: str, folds: int, questions: int) -> Path:
    d = copy.deepcopy(base)
    d.update(name=name, output_root=str(root), zeroshot=False)
    d.pop("ablation", None)
    for m in d["models"]:
        m["folds"] = list(range(folds))
    d["training"]["max_train_questions"] = questions
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d), encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--jobs", type=int, default=available_cores())
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--questions", type=int, default=600)
    a = ap.parse_args(argv)
    stages.setup_logging()
    base_cfg = load_config(a.config)
    stages.make_demo(base_cfg)   # renders the demo data if it is not there yet
    base = yaml.safe_load(Path(a.config).read_text(encoding="utf-8"))
    root = Path(tempfile.mkdtemp(prefix="bench_parallel_"))
    times, oof = {}, {}
    try:
        for jobs in (1, a.jobs):
            cfg = load_config(experiment(base, root, f"jobs{jobs}", a.folds, a.questions))
            stages.make_fold_file(cfg)
            t = time.perf_counter()
            run_training(cfg, jobs=jobs)
            t_train = time.perf_counter() - t
            t = time.perf_counter()
            stages.run_inference(cfg, jobs=jobs)
            times[jobs] = (t_train, time.perf_counter() - t)
            oof[jobs] = {m.name: read_model_dumps(cfg.exp_dir / "preds", m.name, "oof") for m in cfg.models}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    n_units = a.folds * len(base["models"])
    print(f"\n{n_units} folds ({len(base['models'])} models x {a.folds}), {a.questions} questions each, "
          f"{available_cores()} cores")
    print(f"{'stage':<22}{'jobs=1 s':>10}{f'jobs={a.jobs} s':>10}{'ratio':>8}")
    for i, stage in enumerate(("03 train", "04 score (+ prior)")):
        one, many = times[1][i], times[a.jobs][i]
        print(f"{stage:<22}{one:>10.1f}{many:>10.1f}{many / one:>8.2f}")
    worst = 0.0
    for m in oof[1]:
        x = oof[1][m].sort_values(["img_path", "task", "element_key"])["pred"].to_numpy()
        y = oof[a.jobs][m].sort_values(["img_path", "task", "element_key"])["pred"].to_numpy()
        worst = max(worst, float(abs(x - y).max()))
    print(f"largest OOF prediction difference between the modes: {worst:.2e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
