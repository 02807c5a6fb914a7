"""Scoring a method's predictions, the truth and the noise ceiling, and the leaderboard table."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..features import KEY
from ..metrics import MetricWarning, score_frame
from .common import METRICS, Method, _KIND_ORDER

log = logging.getLogger("tokenfocus")


def score_questions(frame: pd.DataFrame, pred: np.ndarray) -> dict:
    """Challenge metrics of one prediction per question (rows of ``frame``: task, img_path,
    element_key, target); NaN metrics when a prediction is missing."""
    pred = np.asarray(pred, float)
    if len(pred) != len(frame):
        raise ValueError(f"score_questions: {len(pred)} predictions for {len(frame)} questions")
    if not np.isfinite(pred).all():
        return {k: float("nan") for _, k in METRICS}
    df = frame[["img_path", "element_key", "task", "target"]].assign(pred=pred)
    is_total = df["task"] == "total"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return score_frame(df.loc[is_total, ["img_path", "target", "pred"]],
                           df.loc[~is_total, ["img_path", "element_key", "target", "pred"]])


def finalise(frame: pd.DataFrame, pred: np.ndarray) -> np.ndarray:
    """Clip to the label ranges (1..5 total, 0..1 element): what a submission may hold."""
    is_total = (frame["task"] == "total").to_numpy()
    pred = np.asarray(pred, float).copy()
    pred[is_total] = np.clip(pred[is_total], 1.0, 5.0)
    pred[~is_total] = np.clip(pred[~is_total], 0.0, 1.0)
    return pred


def truth_frame(truth: Any) -> pd.DataFrame:
    """Test ground truth as (img_path, task, element_key, target) from a path, a list of
    eval.json-style records or a ``load_records``-shaped frame."""
    from ..submission import element_dict, load_json_records

    if isinstance(truth, (str, Path)):
        truth = load_json_records(truth)
    rows = []
    if isinstance(truth, pd.DataFrame):
        for rec in truth.itertuples(index=False):
            rows.append((rec.img_path, "total", "", rec.total_score))
            rows += [(rec.img_path, "element", k, rec.element_scores[k]) for k in rec.element_keys]
    else:
        for i, rec in enumerate(truth):
            where = f"truth record {i} ({rec.get('img_path')})"
            if "img_path" not in rec or "total_score" not in rec:
                raise ValueError(f"{where}: needs img_path and total_score")
            rows.append((rec["img_path"], "total", "", rec["total_score"]))
            rows += [(rec["img_path"], "element", k, v) for k, v in element_dict(rec, where).items()]
    df = pd.DataFrame(rows, columns=[*KEY, "target"])
    df["target"] = pd.to_numeric(df["target"], errors="coerce").astype(float)
    if df["target"].isna().any():
        bad = df[df["target"].isna()].iloc[0]
        raise ValueError(f"truth: missing value for {bad['img_path']!r} {bad['element_key']!r}")
    return df


def ceiling_metrics(noise_ceiling: Any) -> dict:
    """The noise ceiling as metric dict: a number is its Final; a mapping may hold srcc/plcc/acc/final
    (any case) directly or under a key such as 'test'."""
    if isinstance(noise_ceiling, (int, float)) and not isinstance(noise_ceiling, bool):
        return {"final": float(noise_ceiling)}
    if isinstance(noise_ceiling, Mapping):
        low = {str(k).lower(): v for k, v in noise_ceiling.items()}
        if "final" in low:
            return {k: float(low[k]) for _, k in METRICS if isinstance(low.get(k), (int, float))}
        for key in ("noise_ceiling", "ceiling", "test", *low):
            if isinstance(low.get(key), Mapping):
                try:
                    return ceiling_metrics(low[key])
                except ValueError:
                    continue
    raise ValueError(f"noise ceiling: expected a number or a mapping holding 'final', got {noise_ceiling!r}")


def category_accuracy_table(methods: list[Method], oof_m: pd.DataFrame, test_m: pd.DataFrame | None) -> pd.DataFrame:
    """Element ACC per normalised category of every method, on OOF and (with truth) on test; the
    test predictions of a fold-trained model are its fold-bagged ones. Column 'all' is the
    pooled ACC, 'n' rows below give the element counts."""
    rows = []
    for split, frame in (("oof", oof_m), ("test", test_m)):
        if frame is None:
            continue
        el = (frame["task"] == "element").to_numpy()
        cat = frame.loc[el, "category"].astype(str).to_numpy()
        y = frame.loc[el, "target"].to_numpy(float) >= 0.5
        rows.append({"method": "n", "kind": "count", "split": split,
                     **pd.Series(cat).value_counts().sort_index().to_dict(), "all": int(el.sum())})
        for m in methods:
            hit = ((m.oof if split == "oof" else m.test)[el] >= 0.5) == y
            rows.append({"method": m.name, "kind": m.kind, "split": split,
                         **pd.Series(hit, index=cat).groupby(level=0).mean().to_dict(), "all": float(hit.mean())})
    return pd.DataFrame(rows)


def _leaderboard(methods: list[Method], oof_m: pd.DataFrame, test_m: pd.DataFrame | None,
                 noise_ceiling: Any) -> pd.DataFrame:
    rows = []
    for m in methods:
        row = {"method": m.name, "kind": m.kind}
        sc = score_questions(oof_m, m.oof)
        row.update({f"oof_{name}": sc[key] for name, key in METRICS})
        if test_m is not None:
            if m.test_single:
                singles = [score_questions(test_m, p) for p in m.test_single]
                sc = {key: float(np.mean([x[key] for x in singles])) for _, key in METRICS}
            else:
                sc = score_questions(test_m, m.test)
            row.update({f"test_{name}": sc[key] for name, key in METRICS})
        row["note"] = m.note
        rows.append(row)
    if noise_ceiling is not None:
        c = ceiling_metrics(noise_ceiling)
        row = {"method": "noise ceiling", "kind": "ceiling"}
        row.update({f"test_{name}": c.get(key, np.nan) for name, key in METRICS})
        row["note"] = "perfect-vision predictor on the test split"
        rows.append(row)
    lb = pd.DataFrame(rows)
    cols = ["method", "kind", *(f"oof_{n}" for n, _ in METRICS)]
    if test_m is not None or noise_ceiling is not None:
        cols += [f"test_{n}" for n, _ in METRICS]
    return lb.reindex(columns=[*cols, "note"])


def _best_method(lb: pd.DataFrame) -> str:
    cand = lb[(lb["kind"] != "ceiling") & lb["oof_Final"].notna()].copy()
    if cand.empty:
        raise ValueError("ensemble: no method could be scored on OOF")
    cand["order"] = cand["kind"].map({k: i for i, k in enumerate(_KIND_ORDER)})
    cand["final"] = cand["oof_Final"].round(10)
    return str(cand.sort_values(["final", "order"], ascending=[False, True]).iloc[0]["method"])


def _best_base(lb: pd.DataFrame, methods: list[Method]) -> dict:
    base = lb[lb["kind"] == "base"].dropna(subset=["oof_Final"])
    if base.empty:
        return {}
    name = str(base.sort_values("oof_Final", ascending=False).iloc[0]["method"])
    m = next(x for x in methods if x.name == name)
    return {f"{name} (best single model)": (m.oof, m.test)}


def format_leaderboard(lb: pd.DataFrame) -> str:
    """The leaderboard as an aligned text table (no notes)."""
    show = lb.drop(columns=["note"], errors="ignore")
    return show.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-")
