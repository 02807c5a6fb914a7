"""Blending (non-negative least squares with an intercept) and the element decision threshold."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import lsq_linear


log = logging.getLogger("tokenfocus")


def fit_blend(P: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares y ~ P @ w + b with w >= 0 and a free intercept b."""
    P, y = np.asarray(P, float), np.asarray(y, float)
    if P.ndim != 2 or len(P) != len(y):
        raise ValueError(f"fit_blend: P must be (n, c) with n = len(y); got {P.shape} and {y.shape}")
    A = np.column_stack([P, np.ones(len(P))])
    lower = np.r_[np.zeros(P.shape[1]), -np.inf]
    res = lsq_linear(A, y, bounds=(lower, np.full(P.shape[1] + 1, np.inf)))
    w = np.clip(res.x[:-1], 0.0, None)
    return w, float(res.x[-1])


def apply_blend(P: np.ndarray, weights: np.ndarray, intercept: float) -> np.ndarray:
    return np.asarray(P, float) @ weights + intercept


def fit_threshold(pred: np.ndarray, target: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The decision threshold on ``pred`` that maximises element ACC against ``target >= 0.5``;
    among equally good thresholds the one closest to 0.5."""
    pred, truth = np.asarray(pred, float), np.asarray(target, float) >= 0.5
    grid = np.round(np.linspace(0.05, 0.95, 181), 6) if grid is None else np.asarray(grid, float)
    accs = np.array([np.mean((pred >= t) == truth) for t in grid])
    best = np.flatnonzero(accs >= accs.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def apply_threshold(pred: np.ndarray, threshold: float) -> np.ndarray:
    """Shift element scores so that the scorer's fixed 0.5 cut falls at ``threshold``."""
    return np.clip(np.asarray(pred, float) - threshold + 0.5, 0.0, 1.0)


@dataclass
class Blend:
    """A fitted blend of one task: candidate names, weights, intercept, element threshold."""

    candidates: list[str]
    weights: list[float]
    intercept: float
    threshold: float | None = None

    def apply(self, P: np.ndarray) -> np.ndarray:
        out = apply_blend(P, np.asarray(self.weights), self.intercept)
        return apply_threshold(out, self.threshold) if self.threshold is not None else out


def fit_task_blend(P: np.ndarray, y: np.ndarray, candidates: Sequence[str], task: str) -> Blend:
    w, b = fit_blend(P, y)
    blend = Blend(list(candidates), [float(x) for x in w], b)
    if task == "element":
        blend.threshold = fit_threshold(apply_blend(P, w, b), y)
    return blend


def nested_blend_predict(P: np.ndarray, y: np.ndarray, folds: np.ndarray, candidates: Sequence[str],
                         task: str) -> np.ndarray:
    """OOF blend predictions: fold k's weights and threshold are fitted on the other folds."""
    pred = np.full(len(y), np.nan)
    for k in np.unique(folds):
        held = folds == k
        pred[held] = fit_task_blend(P[~held], y[~held], candidates, task).apply(P[held])
    return pred
