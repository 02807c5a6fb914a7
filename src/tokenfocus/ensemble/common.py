"""Names the ensemble's modules share: tasks, metric labels, method kinds, the fitted frames."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..dumps import TASKS  # noqa: F401  (the ensemble's modules read it from here)

PRED = "pred__"
METRICS = (("SRCC", "srcc"), ("PLCC", "plcc"), ("ACC", "acc"), ("Final", "final"))
FEATURE_SETS = ("preds", "preds+stats", "stats")
# Tie-break between methods with the same OOF Final: the one whose test predictions are bagged.
_KIND_ORDER = ("blending", "stacking+features", "stacking", "bagging", "metadata", "base", "baseline")


@dataclass
class Method:
    """One leaderboard row's predictions: OOF and test, aligned with the question frames."""

    name: str
    kind: str
    oof: np.ndarray                    # aligned with the OOF question frame
    test: np.ndarray                   # aligned with the test question frame
    test_single: list[np.ndarray] = field(default_factory=list)  # per-fold models, base rows only
    note: str = ""
    models: tuple[str, ...] = ()


@dataclass
class Frames:
    """Everything the methods are fitted on: the question frames with every model's predictions
    (OOF; test bagged over the folds and per fold), which models are stacked, the features."""

    oof: pd.DataFrame                       # OOF questions, a pred__<model> column per model
    test: pd.DataFrame                      # test questions, fold-averaged predictions
    test_fold: dict[int, pd.DataFrame]      # test questions, one fold's model each
    base: list[str]
    baselines: list[str]
    models: dict[str, list[str]]            # per task, the base models with dumps of it
    record_cols: list[str]
    struct_cols: list[str]
    augment: Any
    truth: bool                             # test targets known

    @property
    def fold_ids(self) -> list[int]:
        return sorted(self.test_fold)
