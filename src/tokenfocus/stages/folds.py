"""Stage 02: the prompt-grouped folds."""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from ..config import Config
from ..experiment import load_folds, load_split, record_settings
from ..folds import check_folds, fold_table, make_folds
from ..io import write_csv
from .common import _skip


def make_fold_file(cfg: Config, force: bool = False) -> pd.DataFrame:
    """Stage 02: prompt-grouped, score-stratified folds -> folds.csv; prints per-fold counts."""
    train = load_split(cfg, "train")
    settings = {f"folds.{k}": v for k, v in asdict(cfg.folds).items()}
    if _skip([cfg.folds_path], force, "folds", cfg, settings):
        folds = load_folds(cfg)
    else:
        folds = make_folds(train, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.n_bins)
        write_csv(cfg.folds_path, folds)
        record_settings(cfg, "folds", settings)
    check_folds(train, folds)
    table = fold_table(train, folds)
    write_csv(cfg.exp_dir / "fold_counts.csv", table)
    return table
