"""Stage 03: one LoRA fine-tune per (model, question group, fold), folds side by side on a CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import Config, ConfigError
from ..experiment import load_folds, load_split, model_dir, model_folds
from ..parallel import run_units
from ..questions import task_groups
from ..train import fold_questions, skip_trained, train_fold


def run_training(cfg: Config, force: bool = False, model: str | None = None, group: str | None = None,
                 fold: int | None = None, jobs: int | str | None = None) -> pd.DataFrame:
    """Stage 03: every (model, question group, fold) of the config, or the one selected; on a CPU up to
    ``jobs`` (default: the config's) folds train side by side (see ``tokenfocus.parallel``)."""

    train, folds = load_split(cfg, "train"), load_folds(cfg)
    models = [cfg.model(model)] if model else cfg.models + cfg.ablation_models()
    units, names, selected = [], [], []
    for mcfg in models:
        tcfg = mcfg.training_config(cfg.training)
        groups = task_groups(tcfg.task_mode)
        if group and group not in groups:
            raise ConfigError(f"--group {group!r}: model {mcfg.name} trains {sorted(groups)} (task_mode {tcfg.task_mode})")
        for gname, tasks in groups.items():
            if group and gname != group:
                continue
            for k in model_folds(cfg, mcfg):
                if fold is not None and k != fold:
                    continue
                selected.append((mcfg.name, gname, k))
                if not skip_trained(cfg, mcfg.name, gname, k, force, tcfg):
                    tr, ev = fold_questions(cfg, train, folds, k, tasks, tcfg)
                    units.append((train_fold, (cfg, mcfg, gname, k, tr, ev, force)))
                    names.append(f"{mcfg.name}/{gname}/fold{k}")
    run_units(units, cfg.jobs if jobs is None else jobs, desc="train", names=names)
    return pd.DataFrame([{"model": m, "group": g, "fold": k, **_last_metrics(model_dir(cfg, m, g, k))}
                         for m, g, k in selected])


def _last_metrics(out: Path) -> dict:
    p = out / "metrics.jsonl"
    if not p.is_file():
        return {}
    lines = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return {k: v for k, v in lines[-1].items() if k in ("epoch", "srcc", "plcc", "acc", "final")} if lines else {}
