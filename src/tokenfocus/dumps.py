"""Prediction dumps: the contract between inference (04) and the ensemble (05).

One parquet per (model, task, split, fold), one row per question::

    img_path, prompt_id, prompt, fold, model, task, element_key, category, target, pred, p_<label>...

``element_key`` is byte-exact ('' for the total question), ``target`` is NaN on test and ``pred``
is the expected label value (1..5 for totals, 0..1 for elements).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .io import write_parquet

TASK_LABELS = {"total": ("1", "2", "3", "4", "5"), "element": ("0", "1")}
BASE_COLUMNS = ["img_path", "prompt_id", "prompt", "fold", "model", "task", "element_key",
                "category", "target", "pred"]


class DumpError(ValueError):
    pass


def dump_path(preds_dir: str | Path, model: str, task: str, split: str, fold: int) -> Path:
    return Path(preds_dir) / model / task / f"{split}_fold{fold}.parquet"


def dump_columns(task: str) -> list[str]:
    return BASE_COLUMNS + [f"p_{lab}" for lab in TASK_LABELS[task]]


def check_dump(df: pd.DataFrame, expected: pd.DataFrame, task: str, where: str) -> None:
    """The dump must hold exactly the questions of ``expected`` (img_path, element_key), once each."""
    missing_cols = [c for c in dump_columns(task) if c not in df.columns]
    if missing_cols:
        raise DumpError(f"{where}: missing column(s) {missing_cols}")
    key = ["img_path", "element_key"]
    if df.duplicated(key).any():
        dup = df[df.duplicated(key)].iloc[0]
        raise DumpError(f"{where}: duplicate question {dup['img_path']!r} / {dup['element_key']!r}")
    want = set(map(tuple, expected[key].to_numpy()))
    have = set(map(tuple, df[key].to_numpy()))
    if want != have:
        lack, extra = want - have, have - want
        raise DumpError(f"{where}: covers the wrong questions: {len(lack)} missing "
                        f"(e.g. {next(iter(lack), None)}), {len(extra)} extra (e.g. {next(iter(extra), None)})")
    if not np.isfinite(df["pred"].to_numpy(dtype=float)).all():
        raise DumpError(f"{where}: non-finite predictions")


def write_dump(df: pd.DataFrame, path: str | Path, expected: pd.DataFrame, task: str) -> Path:
    """Check coverage against the expected question set, then write atomically."""
    check_dump(df, expected, task, str(path))
    return write_parquet(path, df[dump_columns(task)].reset_index(drop=True))


def read_dump(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DumpError(f"{path}: dump not found")
    return pd.read_parquet(path)
