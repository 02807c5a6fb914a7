"""Prompt-grouped cross-validation folds, stratified on the total-score bin."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def score_bins(total: pd.Series, n_bins: int = 5) -> np.ndarray:
    """Bin the mean total score (1..5) into ``n_bins`` equal-width bins for stratification."""
    edges = np.linspace(1.0, 5.0, n_bins + 1)[1:-1]
    return np.digitize(total.to_numpy(dtype=float), edges)


def make_folds(records: pd.DataFrame, n_folds: int = 5, seed: int = 1234, n_bins: int = 5) -> pd.DataFrame:
    """Assign every labelled image to one fold; all images of one prompt share a fold.

    Groups are the prompt text (not prompt_id) so that a prompt repeated under two ids cannot
    leak across folds.
    """
    if records["total_score"].isna().any():
        n = int(records["total_score"].isna().sum())
        raise ValueError(f"make_folds: {n} record(s) have no total_score; folds need labelled records")
    n_groups = records["prompt"].nunique()
    if n_groups < n_folds:
        raise ValueError(f"make_folds: {n_groups} distinct prompts cannot fill {n_folds} folds")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.full(len(records), -1, dtype=int)
    y = score_bins(records["total_score"], n_bins)
    for k, (_, eval_idx) in enumerate(splitter.split(records, y, groups=records["prompt"])):
        fold[eval_idx] = k
    return pd.DataFrame({"img_path": records["img_path"].to_numpy(),
                         "prompt_id": records["prompt_id"].to_numpy(),
                         "fold": fold})


def fold_table(records: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Per-fold train/eval counts of images, prompts and elements (the paper's Table 6 shape)."""
    df = records[["img_path", "prompt", "element_keys"]].merge(folds[["img_path", "fold"]], on="img_path")
    df["n_elements"] = df["element_keys"].map(len)
    rows = []
    for k in sorted(df["fold"].unique()):
        ev, tr = df[df["fold"] == k], df[df["fold"] != k]
        rows.append({"fold": int(k),
                     "train_images": len(tr), "eval_images": len(ev),
                     "train_prompts": tr["prompt"].nunique(), "eval_prompts": ev["prompt"].nunique(),
                     "train_elements": int(tr["n_elements"].sum()), "eval_elements": int(ev["n_elements"].sum())})
    return pd.DataFrame(rows)


def check_folds(records: pd.DataFrame, folds: pd.DataFrame) -> None:
    """Every labelled image in exactly one fold, no prompt in two folds."""
    merged = records[["img_path", "prompt"]].merge(folds, on="img_path", how="left", indicator=True)
    missing = merged[merged["_merge"] != "both"]
    if len(missing):
        raise ValueError(f"folds: {len(missing)} image(s) have no fold, e.g. {missing['img_path'].iloc[0]!r}")
    if folds["img_path"].duplicated().any():
        raise ValueError("folds: an image appears in more than one row")
    spread = merged.groupby("prompt")["fold"].nunique()
    if (spread > 1).any():
        raise ValueError(f"folds: prompt {spread[spread > 1].index[0]!r} appears in several folds")
