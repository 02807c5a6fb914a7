"""Stage 03: one LoRA fine-tune per (model, task, fold), folds side by side on a CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import Config, ConfigError
from ..experiment import load_folds, load_split, model_dir, model_folds
from ..parallel import run_units
from ..questions import task_groups
from ..train import fold_questions, skip_trained, train_fold


def run_training(cfg: Config, force: bool = False, model: str | None = None, task: str | None = None,
                 fold: int | None = None, jobs: int | str | None = None) -> pd.DataFrame:
    """Stage 03: every (model, task, fold) of the config, or the one selected; on a CPU up to
    ``jobs`` (default: the config's) folds train side by side (see ``tokenfocus.parallel``)."""

    train, folds = load_split(cfg, "train"), load_folds(cfg)
    models = [cfg.model(model)] if model else cfg.models + cfg.ablation_models()
    units, names, selected = [], [], []
    for mcfg in models:
        tcfg = mcfg.training_config(cfg.training)
        groups = task_groups(tcfg.task_mode)
        if task and task not in groups:
            raise ConfigError(f"--task {task!r}: model {mcfg.name} trains {sorted(groups)} (task_mode {tcfg.task_mode})")
        for tname, tasks in groups.items():
            if task and tname != task:
                continue
            for k in model_folds(cfg, mcfg):
                if fold is not None and k != fold:
                    continue
                selected.append((mcfg.name, tname, k))
                if not skip_trained(cfg, mcfg.name, tname, k, force, tcfg):
                    tr, ev = fold_questions(cfg, train, folds, k, tasks, tcfg)
                    units.append((train_fold, (cfg, mcfg, tname, k, tr, ev, force)))
                    names.append(f"{mcfg.name}/{tname}/fold{k}")
    run_units(units, cfg.jobs if jobs is None else jobs, desc="train", names=names)
    return pd.DataFrame([{"model": m, "task": t, "fold": k, **_last_metrics(model_dir(cfg, m, t, k))}
                         for m, t, k in selected])


def _last_metrics(out: Path) -> dict:
    p = out / "metrics.jsonl"
    if not p.is_file():
        return {}
    lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return {k: v for k, v in lines[-1].items() if k in ("epoch", "srcc", "plcc", "acc", "final")} if lines else {}
