"""The prior baseline: what can be predicted from the prompt alone, without looking at the image.

Elements get their category's positive rate; the total is a linear function of the mean prior of
the record's elements, fitted on training records. A real floor the fine-tuned models must beat.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import element_frame, question_frame


@dataclass
class PriorModel:
    category_rate: dict[str, float]
    global_rate: float
    slope: float
    intercept: float

    def element_pred(self, elements: pd.DataFrame) -> np.ndarray:
        return elements["category"].map(self.category_rate).fillna(self.global_rate).to_numpy(dtype=float)

    def total_pred(self, records: pd.DataFrame) -> np.ndarray:
        elements = element_frame(records)
        elements["prior"] = self.element_pred(elements)
        mean_prior = elements.groupby("img_path")["prior"].mean()
        x = records["img_path"].map(mean_prior).fillna(self.global_rate).to_numpy(dtype=float)
        return np.clip(self.intercept + self.slope * x, 1.0, 5.0)


def fit_prior(records: pd.DataFrame) -> PriorModel:
    elements = element_frame(records)
    rate = elements.groupby("category")["target"].mean().to_dict()
    glob = float(elements["target"].mean())
    model = PriorModel(rate, glob, 0.0, float(records["total_score"].mean()))
    x = pd.Series(model.element_pred(elements), index=elements.index).groupby(elements["img_path"]).mean()
    x = records["img_path"].map(x).fillna(glob).to_numpy(dtype=float)
    if np.ptp(x) > 1e-9:
        model.slope, model.intercept = map(float, np.polyfit(x, records["total_score"].to_numpy(dtype=float), 1))
    return model


def prior_dumps(model: PriorModel, records: pd.DataFrame, name: str, fold: int) -> dict[str, pd.DataFrame]:
    """Dump-shaped predictions for ``records`` (one frame per task). Probabilities are those of
    the closest two-level split of the expected value, so p_<label> stays consistent with pred."""
    q = question_frame(records)
    q["fold"] = fold
    q["model"] = name
    q["kind"] = "baseline"
    out = {}
    tot = q[q["task"] == "total"].copy()
    tot["pred"] = pd.Series(model.total_pred(records), index=records["img_path"]).reindex(tot["img_path"]).to_numpy()
    lo = np.clip(np.floor(tot["pred"].to_numpy()), 1, 4)
    frac = tot["pred"].to_numpy() - lo
    for lab in range(1, 6):
        tot[f"p_{lab}"] = np.where(lo == lab, 1 - frac, 0.0) + np.where(lo + 1 == lab, frac, 0.0)
    out["total"] = tot
    el = q[q["task"] == "element"].copy()
    el["pred"] = model.element_pred(el)
    el["p_1"], el["p_0"] = el["pred"], 1 - el["pred"]
    out["element"] = el
    return out
