"""Challenge metrics: SRCC, PLCC (official and conventional direction), element ACC, Final.

Final = 0.25 SRCC + 0.25 PLCC + 0.5 ACC, with SRCC/PLCC over the total score of every image and ACC
pooled over every element of every image. `score_frame` is the single implementation; `score` and
`evaluate_files` only turn records and files into its frames.

Degenerate inputs (constant predictions or targets) give a correlation of 0.0 with a MetricWarning
instead of NaN, so that a collapsed model ranks last in a leaderboard rather than breaking its sort.
"""
from __future__ import annotations

import os
import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from scipy.stats import pearsonr, spearmanr

from .errors import InputError
from .submission import element_dict, load_json_records, load_submission, validate_submission

WEIGHTS = {"srcc": 0.25, "plcc": 0.25, "acc": 0.5}
THRESHOLD = 0.5  # an element counts as present when its (mean) score is >= this
_MIN_FIT = 5     # below this many pairs a 4-parameter fit is not meaningful


class MetricWarning(UserWarning):
    """A metric fell back to a defined value (0.0, or linear PLCC) on degenerate input."""


# --------------------------------------------------------------------------- single metrics

def srcc(y_true, y_pred) -> float:
    """Spearman rank correlation; 0.0 (with a MetricWarning) when either side is constant."""
    t, p = _pair(y_true, y_pred)
    if _degenerate(t, p, "SRCC"):
        return 0.0
    return float(spearmanr(t, p)[0])


def logistic4(x, b1, b2, b3, b4):
    """The VQEG 4-parameter logistic: from b2 (x -> -inf) to b1 (x -> +inf), centre b3, width |b4|."""
    return b2 + (b1 - b2) * expit((x - b3) / np.abs(b4))


def plcc(y_true, y_pred, direction: str = "official") -> float:
    """Pearson correlation after a 4-parameter logistic mapping.

    direction='official' fits the logistic FROM the ground truth TO the predictions and correlates
    fitted(gt) with the predictions, as the challenge scorer does: a prediction warped beyond what a
    logistic of the truth can follow (e.g. stretched tails) is penalised, so keep totals linear.
    direction='conventional' maps predictions to ground truth (the usual IQA practice); reported for
    information. Both are >= 0 for any monotone relation, decreasing ones included. If the fit fails,
    or there are fewer than 5 pairs, the linear Pearson correlation is returned with a MetricWarning.
    """
    t, p = _pair(y_true, y_pred)
    if direction == "official":
        x, y = t, p
    elif direction == "conventional":
        x, y = p, t
    else:
        raise ValueError(f"direction must be 'official' or 'conventional', got {direction!r}")
    if _degenerate(t, p, "PLCC"):
        return 0.0
    fitted = _fit_logistic(x, y) if len(x) >= _MIN_FIT else None
    if fitted is None:
        warnings.warn(f"PLCC ({direction}): logistic fit unavailable for {len(x)} pairs; "
                      "using linear Pearson", MetricWarning, stacklevel=2)
        return float(pearsonr(t, p)[0])
    return float(pearsonr(fitted, y)[0])


def _fit_logistic(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """logistic4 fitted to y over x, evaluated at x; None when no start converges to a usable curve."""
    rising = np.corrcoef(x, y)[0, 1] >= 0
    hi, lo = (y.max(), y.min()) if rising else (y.min(), y.max())
    # The classic start (width 0.5) suits 1-5 scores; the data-scaled one suits any other scale.
    starts = [[hi, lo, np.mean(x), np.std(x)], [hi, lo, np.mean(x), 0.5]]
    best, best_sse = None, np.inf
    for p0 in starts:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", OptimizeWarning)  # covariance is not used
                popt, _ = curve_fit(logistic4, x, y, p0=p0, maxfev=20000)
            fitted = logistic4(x, *popt)
        except (RuntimeError, ValueError, FloatingPointError):
            continue
        if not np.all(np.isfinite(fitted)) or np.ptp(fitted) == 0:
            continue
        sse = float(np.sum((fitted - y) ** 2))
        if sse < best_sse:
            best, best_sse = fitted, sse
    return best


def acc(element_true, element_pred) -> float:
    """Share of elements whose presence (score >= 0.5) is predicted right, pooled over all images."""
    t, p = _arrays(element_true, element_pred, "ACC")
    if len(t) == 0:
        raise ValueError("ACC: no elements to score")
    return float(np.mean((t >= THRESHOLD) == (p >= THRESHOLD)))


def final_score(srcc_value: float, plcc_value: float, acc_value: float) -> float:
    """0.25 SRCC + 0.25 PLCC + 0.5 ACC."""
    return WEIGHTS["srcc"] * srcc_value + WEIGHTS["plcc"] * plcc_value + WEIGHTS["acc"] * acc_value


def _arrays(y_true, y_pred, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{name}: {len(t)} targets but {len(p)} predictions")
    for label, arr in (("targets", t), ("predictions", p)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {int(np.sum(~np.isfinite(arr)))} non-finite {label}")
    return t, p


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _arrays(y_true, y_pred, "correlation")
    if len(t) < 2:
        raise ValueError(f"correlation needs at least 2 pairs, got {len(t)}")
    return t, p


def _degenerate(t: np.ndarray, p: np.ndarray, name: str) -> bool:
    for label, arr in (("predictions", p), ("targets", t)):
        if np.ptp(arr) == 0:
            warnings.warn(f"{name}: constant {label}; correlation undefined, scored 0.0",
                          MetricWarning, stacklevel=3)
            return True
    return False


# --------------------------------------------------------------------------- full score

def score_frame(total: pd.DataFrame | None, element: pd.DataFrame | None, *,
                target_col: str = "target", pred_col: str = "pred") -> dict:
    """All challenge metrics from matched frames.

    `total`: one row per image (img_path, target, pred); `element`: one row per element
    (img_path, element_key, target, pred). Returns srcc, plcc (official), plcc_conventional, acc,
    final, n_images, n_elements. Either frame may be None (a model trained on one question kind,
    ``task_mode: separate``): then only its own metrics come back, and no Final.
    """
    if total is None and element is None:
        raise ValueError("score_frame: neither a total nor an element frame to score")
    out = {}
    if total is not None:
        _check_frame(total, ["img_path"], target_col, pred_col, "total")
        # A fixed row order makes the logistic fit, and so the score, bit-identical for any input order.
        total = total.sort_values("img_path", kind="stable")
        t, p = total[target_col].to_numpy(float), total[pred_col].to_numpy(float)
        out.update(srcc=srcc(t, p), plcc=plcc(t, p, "official"), plcc_conventional=plcc(t, p, "conventional"))
    if element is not None:
        _check_frame(element, ["img_path", "element_key"], target_col, pred_col, "element")
        out["acc"] = acc(element[target_col].to_numpy(float), element[pred_col].to_numpy(float))
    if total is not None and element is not None:
        out["final"] = final_score(out["srcc"], out["plcc"], out["acc"])
    if total is not None:
        out["n_images"] = int(len(total))
    if element is not None:
        out["n_elements"] = int(len(element))
    return out


def _check_frame(df: pd.DataFrame, id_cols: list[str], target_col: str, pred_col: str,
                 name: str) -> None:
    missing = [c for c in [*id_cols, target_col, pred_col] if c not in df.columns]
    if missing:
        raise ValueError(f"{name} frame: missing column(s) {missing}; has {list(df.columns)}")
    dup = df[df.duplicated(id_cols, keep=False)]
    if len(dup):
        ids = dup[id_cols].astype(str).agg(" ".join, axis=1).unique()
        raise ValueError(f"{name} frame: {len(ids)} duplicated {'/'.join(id_cols)}, "
                         f"e.g. {list(ids[:10])}")
    for col in (target_col, pred_col):
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(vals)
        if bad.any():
            ids = df.loc[bad, id_cols[0]].astype(str).unique()
            raise ValueError(f"{name} frame: {int(bad.sum())} missing or non-finite {col!r} values, "
                             f"e.g. img_path {list(ids[:10])}")


def records_to_frames(truth_records: Iterable[Mapping], pred_records: Iterable[Mapping]
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(total, element) frames pairing truth and predictions by img_path and element key."""
    pred = {r["img_path"]: r for r in pred_records}
    totals, elements = [], []
    for i, rec in enumerate(truth_records):
        img = rec["img_path"]
        where = f"truth record {i} ({img})"
        truth_total = rec.get("total_score")
        if truth_total is None:
            raise InputError(f"{where}: total_score is null; is this test.json rather than a truth file?")
        totals.append((img, truth_total, pred[img]["total_score"]))
        pred_el = pred[img]["element_score"]
        for key, value in element_dict(rec, where).items():
            if value is None:
                raise InputError(f"{where}: element {key!r} has a null truth value")
            elements.append((img, key, value, pred_el[key]))
    total = pd.DataFrame(totals, columns=["img_path", "target", "pred"])
    element = pd.DataFrame(elements, columns=["img_path", "element_key", "target", "pred"])
    return total, element


def score(truth_records: list[Mapping], pred_records: list[Mapping]) -> dict:
    """Score submission-shaped records against truth records, matched by img_path (never by order).

    The predictions are validated first: a missing, extra or duplicate image, a missing element key
    or a non-numeric value raises SubmissionError.
    """
    truth_records, pred_records = list(truth_records), list(pred_records)
    validate_submission(pred_records, truth_records)
    return score_frame(*records_to_frames(truth_records, pred_records))


def evaluate_files(truth_path: str | os.PathLike, submission_path: str | os.PathLike) -> dict:
    """Score a submission (.zip, folder or output.json) against a truth file such as eval.json."""
    return score(load_json_records(truth_path), load_submission(submission_path))


def format_table(result: Mapping) -> str:
    """A small text table of the metrics in `result` (as returned by `score`)."""
    rows = [("SRCC", result["srcc"], ""),
            ("PLCC", result["plcc"], "official: logistic from truth to prediction"),
            ("PLCC (conventional)", result["plcc_conventional"], "information only"),
            ("ACC", result["acc"], ""),
            ("Final", result["final"], "0.25 SRCC + 0.25 PLCC + 0.5 ACC")]
    lines = [f"{'metric':<20} {'value':>7}"]
    lines += [f"{name:<20} {value:>7.4f}  {note}".rstrip() for name, value, note in rows]
    lines.append(f"{result['n_images']} images, {result['n_elements']} elements")
    return "\n".join(lines)
