"""Prediction tables and design matrices: one row per question, one column per base model (and features)."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..dumps import level_value, prob_columns
from ..features import KEY, group_features
from .common import FEATURE_SETS, PRED

log = logging.getLogger("tokenfocus")


def _spread(long: pd.DataFrame) -> np.ndarray:
    """Standard deviation of each total question's label distribution (NaN for elements)."""
    out = np.full(len(long), np.nan)
    is_total = (long["task"] == "total").to_numpy()
    # Every total level any model has (models trained with other total_levels read other ones).
    cols = prob_columns(long[is_total], "total")
    labels = np.array([level_value(c) for c in cols])
    if is_total.any() and len(cols) >= 2:
        p = np.nan_to_num(long.loc[is_total, cols].to_numpy(float))
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        mean = p @ labels
        out[is_total] = np.sqrt(np.clip(p @ labels ** 2 - mean ** 2, 0, None))
    return out


def prediction_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per question: ``pred__<model>`` and ``sd__<model>`` (the spread of a total question's
    label distribution), averaged over the rows of a question (the folds, for test dumps)."""
    long = long.assign(sd=_spread(long))
    g = long.groupby([*KEY, "model"], sort=False)[["pred", "sd"]].mean()
    pred = g["pred"].unstack("model")
    sd = g["sd"].unstack("model")
    pred.columns = [f"{PRED}{m}" for m in pred.columns]
    sd.columns = [f"sd__{m}" for m in sd.columns]
    sd = sd.loc[:, sd.notna().any()]
    return pd.concat([pred, sd], axis=1).reset_index()


def add_image_features(master: pd.DataFrame, models: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Each model's view of the whole image, on every question of it: its total prediction, and the
    mean, minimum and share-present of its element predictions. Predictions only, no labels."""
    master = master.copy()
    el = master[master["task"] == "element"]
    tot = master[master["task"] == "total"]
    for m in models["element"]:
        g = el.groupby("img_path")[PRED + m]
        master[f"img_elmean__{m}"] = master["img_path"].map(g.mean())
        master[f"img_elmin__{m}"] = master["img_path"].map(g.min())
        master[f"img_elfrac__{m}"] = master["img_path"].map((el[PRED + m] >= 0.5).groupby(el["img_path"]).mean())
    for m in models["total"]:
        master[f"img_total__{m}"] = master["img_path"].map(tot.set_index("img_path")[PRED + m])
    return master


def prediction_columns(task: str, models: Mapping[str, Sequence[str]], frame: pd.DataFrame) -> list[str]:
    """The base-model prediction features of one task's meta-model."""
    if task == "total":
        cols = [f"{PRED}{m}" for m in models["total"]] + [f"sd__{m}" for m in models["total"]]
        cols += [f"img_{s}__{m}" for m in models["element"] for s in ("elmean", "elmin", "elfrac")]
    else:
        cols = [f"{PRED}{m}" for m in models["element"]] + [f"img_total__{m}" for m in models["total"]]
        cols += [f"img_elmean__{m}" for m in models["element"]]
    return [c for c in cols if c in frame.columns]


def design_matrix(master: pd.DataFrame, task: str, models: Mapping[str, Sequence[str]],
                  feature_set: str, record_cols: Sequence[str]) -> pd.DataFrame:
    """The meta-model inputs of one task: 'preds' (base predictions), 'preds+stats' (plus record
    features and prompt-group statistics of the predictions) or 'stats' (record features only)."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
    rows = master[master["task"] == task]
    pred_cols = prediction_columns(task, models, rows)
    parts = []
    if feature_set != "stats":
        parts.append(rows[pred_cols])
    if feature_set != "preds":
        parts.append(rows[list(record_cols)])
        grouped = [c for c in pred_cols if c.startswith((PRED, "img_elmean__"))] if feature_set != "stats" else []
        parts.append(group_features(rows, grouped))
    return pd.concat(parts, axis=1)
