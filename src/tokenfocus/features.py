"""Statistic features for the meta-models: what the record says about a question, and where a
base model's prediction sits among the images generated from the same prompt.

Nothing here reads a label. The record features come from the prompt, the element key, the
structural fields and the prompt-evaluation fields; the group statistics come from predictions.
Because folds are grouped by prompt, every image of a prompt group carries out-of-fold predictions
of the same fold model, so a group statistic never mixes in a model that saw the row's labels.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .data import META_FIELDS, question_frame, split_element_key

KEY = ["img_path", "task", "element_key"]
# Hidden by the final-phase test: the meta-model must cope without them.
STRUCTURAL = ("type", "t2i_model")
CATEGORICAL = ("category", "type", "t2i_model")
GROUP = ["prompt", "task", "element_key"]
CAT_COUNT = "n_cat__"
_WORD = re.compile(r"\w+", re.UNICODE)


def question_features(records: pd.DataFrame, categories: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per question (keyed img_path, task, element_key) with record-only features.

    Columns: prompt (the grouping key, not a feature), category, n_elements, prompt_words,
    element_words, element_found, element_pos, type, t2i_model, the three prompt-evaluation
    fields, and ``n_cat__<c>``: how many of the record's elements fall in each normalised category
    (the prompt's composition; ``categories`` fixes the list so that train and test share columns,
    default: those of ``records``). Categoricals stay strings (None where absent); see
    ``encode_categoricals``.
    """
    q = question_frame(records)[["img_path", "prompt_id", "prompt", "task", "element_key", "category"]].copy()
    if categories is None:
        categories = sorted({c for c in q["category"] if c})
    counts = q[q["task"] == "element"].groupby(["img_path", "category"]).size().unstack(fill_value=0)
    rec = records.set_index("img_path")
    q["n_elements"] = q["img_path"].map(rec["element_keys"].map(len)).astype(float)
    q["prompt_words"] = q["prompt"].map(lambda p: float(len(_WORD.findall(p))))
    texts = q["element_key"].map(lambda k: split_element_key(k)[0] if k else "")
    pos = [element_position(p, t) if t else np.nan for p, t in zip(q["prompt"], texts)]
    q["element_pos"] = np.asarray(pos, dtype=float)
    q["element_found"] = np.where(q["task"] == "element", np.isfinite(q["element_pos"]), np.nan)
    q["element_words"] = np.where(q["task"] == "element",
                                  texts.map(lambda t: float(len(_WORD.findall(t)))), np.nan)
    for col in STRUCTURAL:
        vals = q["img_path"].map(rec[col]) if col in rec else pd.Series(None, index=q.index)
        q[col] = vals.map(lambda v: v if isinstance(v, str) and v else None).astype(object)
    for col in META_FIELDS:
        q[col] = q["img_path"].map(rec[col]).astype(float) if col in rec else np.nan
    for c in categories:
        per_image = counts[c] if c in counts.columns else pd.Series(dtype=float)
        q[f"{CAT_COUNT}{c}"] = q["img_path"].map(per_image).fillna(0.0).astype(float)
    q["category"] = q["category"].map(lambda c: c or None).astype(object)
    return q.drop(columns=["prompt_id"]).reset_index(drop=True)


def element_position(prompt: str, text: str) -> float:
    """Relative position (0 = start, 1 = end) of the element text's centre in the prompt.

    Exact (case-insensitive) match first; otherwise the first word of the element found in the
    prompt; NaN when nothing matches (e.g. a count written as a digit in the key).
    """
    p, t = prompt.lower(), " ".join(text.lower().split())
    if not p:
        return np.nan
    idx, length = p.find(t) if t else -1, len(t)
    if idx < 0:
        for word in _WORD.findall(t):
            m = re.search(rf"\b{re.escape(word)}\b", p)
            if m:
                idx, length = m.start(), len(word)
                break
    if idx < 0:
        return np.nan
    return float(min(1.0, (idx + length / 2) / len(p)))


def group_features(frame: pd.DataFrame, pred_cols: Sequence[str],
                   group_cols: Sequence[str] = GROUP) -> pd.DataFrame:
    """Per prediction column: deviation from the prompt group's mean and normalised rank in it.

    A group is the images sharing a prompt text, per task and element key. The rank is
    (rank - 1) / (size - 1) with ties averaged, 0.5 for a group of one. Also returns group_size.
    Index aligned with ``frame``.
    """
    missing = [c for c in [*group_cols, *pred_cols] if c not in frame.columns]
    if missing:
        raise KeyError(f"group_features: missing column(s) {missing}")
    grouped = frame.groupby(list(group_cols), sort=False, dropna=False)
    size = grouped[list(group_cols)[0]].transform("size").astype(float)
    out = {"group_size": size}
    for col in pred_cols:
        g = grouped[col]
        out[f"{col}__dev"] = frame[col] - g.transform("mean")
        rank = g.rank(method="average")
        out[f"{col}__rank"] = np.where(size > 1, (rank - 1) / (size - 1).where(size > 1, 1.0), 0.5)
    return pd.DataFrame(out, index=frame.index)


def structural_available(features: pd.DataFrame, cols: Iterable[str] = STRUCTURAL) -> list[str]:
    """The structural columns that have at least one value in ``features``."""
    return [c for c in cols if c in features and features[c].notna().any()]


def encode_categoricals(train: pd.DataFrame, others: Sequence[pd.DataFrame] = (),
                        cols: Iterable[str] = CATEGORICAL) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Give categorical columns one fixed dtype learnt from ``train``; unseen values become NaN.

    Tree libraries map categories by code, so train and test must share the category list.
    """
    train = train.copy()
    others = [o.copy() for o in others]
    for col in cols:
        if col not in train:
            continue
        cats = sorted({v for v in train[col] if isinstance(v, str)})
        dtype = pd.CategoricalDtype(categories=cats)
        train[col] = train[col].astype(object).astype(dtype)
        for o in others:
            if col in o:
                o[col] = o[col].astype(object).where(o[col].isin(cats), None).astype(dtype)
    return train, others


def feature_columns(features: pd.DataFrame, include_structural: bool = True) -> list[str]:
    """The record feature columns of a ``question_features`` frame (no keys, no prompt text)."""
    cols = ["category", "n_elements", "prompt_words", "element_words", "element_found",
            "element_pos", *STRUCTURAL, *META_FIELDS]
    cols += [c for c in features.columns if c.startswith(CAT_COUNT)]
    if not include_structural:
        cols = [c for c in cols if c not in STRUCTURAL]
    return [c for c in cols if c in features.columns]
