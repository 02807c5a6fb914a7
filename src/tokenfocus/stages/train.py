"""Stage 03: one LoRA fine-tune per (model, question group, fold), folds side by side on a CPU."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import Config, ConfigError
from ..experiment import load_folds, load_split, model_dir, model_folds
from ..infer import infer_model, model_dumps_done
from ..dumps import dump_path
from ..parallel import process_state, run_units
from ..pseudo import source_folds
from ..questions import task_groups
from ..train import fold_questions, skip_trained, train_fold
from ..trainlog import METRICS_LOG, log_lines


def run_training(cfg: Config, force: bool = False, model: str | None = None, group: str | None = None,
                 fold: int | None = None, jobs: int | str | None = None) -> pd.DataFrame:
    """Stage 03: every (model, question group, fold) of the config, or the one selected; on a CPU up to
    ``jobs`` (default: the config's) folds train side by side (see ``tokenfocus.parallel``).

    Models trained on pseudo-labels (``training.pseudo_labels``) go second: once the first round
    has trained, the test dumps of their source models are written (stage 04's scoring, which
    stage 04 then finds done), and they train on them."""

    train, folds = load_split(cfg, "train"), load_folds(cfg)
    models = [cfg.model(model)] if model else cfg.models + cfg.ablation_models()
    jobs = cfg.jobs if jobs is None else jobs
    selected = []
    rounds = ([m for m in models if m.training_config(cfg.training).pseudo_labels is None],
              [m for m in models if m.training_config(cfg.training).pseudo_labels is not None])
    for second, round_models in enumerate(rounds):
        todo = list(_fold_units(cfg, round_models, group, fold))
        if second:
            _source_dumps(cfg, [(tcfg, k) for _, _, k, _, tcfg in todo], jobs)
        units, names = [], []
        for mcfg, gname, k, tasks, tcfg in todo:
            selected.append((mcfg.name, gname, k))
            if not skip_trained(cfg, mcfg.name, gname, k, force, tcfg):
                tr, ev = fold_questions(cfg, train, folds, k, tasks, tcfg)
                units.append((train_fold, (cfg, mcfg, gname, k, tr, ev, force)))
                names.append(f"{mcfg.name}/{gname}/fold{k}")
        run_units(units, jobs, desc="train" if not second else "train on pseudo-labels", names=names)
    return pd.DataFrame([{"model": m, "group": g, "fold": k, **_last_metrics(model_dir(cfg, m, g, k))}
                         for m, g, k in selected])


def _fold_units(cfg: Config, models, group: str | None, fold: int | None):
    """(model, group name, fold, tasks, training config) of every selected unit of ``models``."""
    for mcfg in models:
        tcfg = mcfg.training_config(cfg.training)
        groups = task_groups(tcfg.task_mode)
        if group and group not in groups:
            raise ConfigError(f"--group {group!r}: model {mcfg.name} trains {sorted(groups)} (task_mode {tcfg.task_mode})")
        for gname, tasks in groups.items():
            if group and gname != group:
                continue
            for k in model_folds(cfg, mcfg):
                if fold is None or k == fold:
                    yield mcfg, gname, k, tasks, tcfg


def _source_dumps(cfg: Config, units, jobs) -> None:
    """The test dumps the pseudo-label units ((training config, fold) pairs) learn from: the
    source models' folds, scored side by side where their dumps are missing."""
    if not units:
        return
    pairs = sorted({(tcfg.pseudo_labels, k) for tcfg, fold in units for k in source_folds(cfg, tcfg, fold)})
    # Missing dumps, or dumps older than the adapter they come from (a source retrained since,
    # e.g. by --force): scored again.
    need = [(m, k) for m, k in pairs if not model_dumps_done(cfg, m, [k]) or _stale_dumps(cfg, m, k)]
    # Under accelerate launch the processes share the units out, then wait for each other's dumps.
    state = process_state()
    state.wait_for_everyone()   # every process has listed the same dumps
    run_units([(infer_model, (cfg, cfg.model(m), True, k)) for m, k in need], jobs,
              desc="score for pseudo-labels", names=[f"{m}/fold{k}" for m, k in need], distribute=True)
    state.wait_for_everyone()


def _stale_dumps(cfg: Config, model: str, fold: int) -> bool:
    """Whether a test dump of ``model``'s fold is older than one of that fold's adapters."""
    mcfg = cfg.model(model)
    groups = task_groups(mcfg.training_config(cfg.training).task_mode)
    trained = [model_dir(cfg, model, g, fold) / "train_done.json" for g in groups]
    dumps = [dump_path(cfg.exp_dir / "preds", model, t, "test", fold) for ts in groups.values() for t in ts]
    newest = max((p.stat().st_mtime for p in trained if p.is_file()), default=0.0)
    return any(d.stat().st_mtime < newest for d in dumps if d.is_file())


def _last_metrics(out: Path) -> dict:
    lines = log_lines(out / METRICS_LOG)
    return {k: v for k, v in lines[-1].items() if k in ("epoch", "srcc", "plcc", "acc", "final")} if lines else {}
