"""Ensemble plots: the leaderboard, predicted versus true total score, accuracy per element category.

Figures are drawn on the Agg canvas directly (no pyplot state), so they render headless and a
notebook can still display the returned Figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .io import save_figure

_COLOURS = {"oof": "#4C72B0", "test": "#DD8452"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def leaderboard_chart(lb: pd.DataFrame) -> Figure:
    """Final per method as horizontal bars (OOF, and test where scored), noise ceiling as a line."""
    rows = lb[lb["kind"] != "ceiling"].iloc[::-1]
    splits = [s for s in ("oof", "test") if f"{s}_Final" in lb and lb[f"{s}_Final"].notna().any()]
    fig = _figure(8, 0.35 * len(rows) + 1.5)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    height = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        vals = rows[f"{split}_Final"].to_numpy(float)
        ax.barh(y + (i - (len(splits) - 1) / 2) * height, np.nan_to_num(vals), height,
                label={"oof": "OOF", "test": "test"}[split], color=_COLOURS[split])
    ceiling = lb.loc[lb["kind"] == "ceiling", "test_Final"] if "test_Final" in lb else pd.Series(dtype=float)
    if len(ceiling) and np.isfinite(ceiling.iloc[0]):
        ax.axvline(float(ceiling.iloc[0]), color="k", ls="--", lw=1, label="noise ceiling")
    finals = lb[[f"{s}_Final" for s in splits]].to_numpy(float) if splits else np.array([0.0])
    lo = np.nanmin(finals) if np.isfinite(finals).any() else 0.0
    ax.set_xlim(max(0.0, lo - 0.05), 1.0)
    ax.set_yticks(y, rows["method"])
    ax.set_xlabel("Final = 0.25 SRCC + 0.25 PLCC + 0.5 ACC")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Leaderboard")
    return fig


def pred_vs_true(panels: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """One scatter per panel title: (true total, predicted total), with the identity line."""
    fig = _figure(4.2 * len(panels), 4)
    for i, (title, (true, pred)) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(true, pred, s=6, alpha=0.4)
        ax.plot([1, 5], [1, 5], color="k", lw=1, ls="--")
        r = np.corrcoef(true, pred)[0, 1] if len(true) > 1 and np.std(pred) > 0 else float("nan")
        ax.set_title(f"{title}\nPearson {r:.3f}", fontsize=9)
        ax.set_xlabel("true total score")
        ax.set_ylabel("predicted total score")
        ax.set_xlim(0.8, 5.2)
        ax.set_ylim(0.8, 5.2)
    fig.tight_layout()
    return fig


def category_accuracy(frames: Mapping[str, pd.DataFrame], title: str = "Accuracy per element category") -> Figure:
    """Element ACC per normalised category, one bar group per category, one bar per labelled frame
    (columns category, target, pred)."""
    tables = {}
    for label, df in frames.items():
        hit = (df["target"].to_numpy(float) >= 0.5) == (df["pred"].to_numpy(float) >= 0.5)
        tables[label] = pd.Series(hit, index=df["category"].astype(str).to_numpy()).groupby(level=0).mean()
    table = pd.DataFrame(tables)
    fig = _figure(max(6, 0.9 * len(table) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(table))
    width = 0.8 / max(1, table.shape[1])
    for i, label in enumerate(table.columns):
        ax.bar(x + (i - (table.shape[1] - 1) / 2) * width, table[label].to_numpy(float), width, label=label)
    ax.set_xticks(x, table.index, rotation=30, ha="right")
    lowest = np.nanmin(table.to_numpy(float)) if table.size else 0.0
    ax.set_ylim(max(0.0, np.floor((lowest - 0.05) * 10) / 10), 1.0)
    ax.set_ylabel("element ACC")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def write_plots(out_dir: str | Path, lb: pd.DataFrame, oof: pd.DataFrame, test: pd.DataFrame | None,
                predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[Path]:
    """leaderboard.png, pred_vs_true.png and category_accuracy.png in ``out_dir``.

    ``predictions`` maps a method label to its (OOF, test) predictions aligned with ``oof`` and
    ``test`` (question frames with task, category, target); test panels appear when ``test`` is
    given (it then holds the truth).
    """
    out_dir = Path(out_dir)
    paths = [save_figure(leaderboard_chart(lb), out_dir / "leaderboard.png")]
    splits = [("OOF", oof, 0)] + ([("test", test, 1)] if test is not None else [])
    first = next(iter(predictions))
    panels = {}
    for split, frame, i in splits:
        rows = (frame["task"] == "total").to_numpy()
        panels[f"{first} ({split})"] = (frame.loc[rows, "target"].to_numpy(float), predictions[first][i][rows])
    paths.append(save_figure(pred_vs_true(panels), out_dir / "pred_vs_true.png"))
    frames = {f"{label} ({split})": element_frame(frame, preds[i])
              for label, preds in predictions.items() for split, frame, i in splits}
    paths.append(save_figure(category_accuracy(frames), out_dir / "category_accuracy.png"))
    return paths


def element_frame(questions: pd.DataFrame, pred: np.ndarray) -> pd.DataFrame:
    """The element rows of a question frame as ``category_accuracy`` reads them (category,
    target, pred), ``pred`` aligned with ``questions``."""
    rows = (questions["task"] == "element").to_numpy()
    return pd.DataFrame({"category": questions.loc[rows, "category"].astype(object).to_numpy(),
                         "target": questions.loc[rows, "target"].to_numpy(float), "pred": pred[rows]})
