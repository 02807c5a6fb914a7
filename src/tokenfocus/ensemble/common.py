"""Names the ensemble's modules share: tasks, metric labels, method kinds."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
