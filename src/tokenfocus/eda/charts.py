"""EDA figures: numbers in, Figure out, drawn on the Agg canvas directly (no pyplot state),
so they render headless."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .tables import integer_histogram

BAR = "#4C72B0"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _no_data(title: str) -> Figure:
    fig = _figure(5, 2)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=12, color="grey")
    ax.set_axis_off()
    ax.set_title(title)
    return fig


def barh_chart(values: pd.Series, title: str, xlabel: str, fmt: str = "{:,.0f}",
               xlim: tuple[float, float] | None = None, err: pd.Series | None = None,
               ref: float | None = None, ref_label: str = "") -> Figure:
    """Horizontal bars sorted largest on top, each labelled with its value."""
    if values.empty:
        return _no_data(title)
    order = values.sort_values(ascending=True)
    fig = _figure(7, 0.32 * len(order) + 1.4)
    ax = fig.add_subplot()
    y = np.arange(len(order))
    xerr = None if err is None else err.reindex(order.index).to_numpy(float)
    vals = order.to_numpy(float)
    ends = vals + (0 if xerr is None else np.nan_to_num(xerr))
    ax.barh(y, vals, xerr=xerr, color=BAR, ecolor="0.3", capsize=2, zorder=2)
    ax.set_yticks(y, [str(i) for i in order.index])
    top = float(np.nanmax(ends))
    ax.set_xlim(*(xlim or (0, top * 1.15 if top > 0 else 1)))
    pad = (ax.get_xlim()[1] - ax.get_xlim()[0]) * 0.01
    if ref is not None:
        ax.axvline(ref, color="0.2", ls="--", lw=1, label=ref_label, zorder=1)
        ax.legend(loc="lower right", fontsize=8, framealpha=1)
    # past the error bar, on a white patch: a reference line never runs through a label
    for yi, v, end in zip(y, vals, ends):
        ax.text(end + pad, yi, fmt.format(v), va="center", fontsize=8, zorder=3,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


def histogram_chart(counts: pd.Series, title: str, xlabel: str, ylabel: str) -> Figure:
    """Bars over integer values (counts from ``integer_histogram``), each labelled with its count."""
    if counts.empty or counts.sum() == 0:
        return _no_data(title)
    fig = _figure(max(5, 0.45 * len(counts) + 2), 3.6)
    ax = fig.add_subplot()
    x = counts.index.to_numpy()
    bars = ax.bar(x, counts.to_numpy(), color=BAR, width=0.8)
    ax.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize=8, padding=2)
    ax.set_xticks(x)
    if len(x) < 4:  # a lone value should not fill the axes with one fat bar
        ax.set_xlim(x.min() - 1.5, x.max() + 1.5)
    ax.set_ylim(0, counts.max() * 1.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def total_score_chart(totals: pd.Series) -> Figure:
    """Histogram of mean total scores, one bin per possible mean of 3 votes (steps of 1/3).

    Six-annotator means between two thirds fall on a bin edge and count in the upper bin."""
    title = "Total score (mean over annotators)"
    totals = totals.dropna()
    if totals.empty:
        return _no_data(title)
    fig = _figure(7, 3.6)
    ax = fig.add_subplot()
    edges = np.arange(1 - 1 / 6, 5 + 1 / 6 + 1e-9, 1 / 3)
    ax.hist(totals, bins=edges, color=BAR, edgecolor="white")
    ax.axvline(totals.mean(), color="k", ls="--", lw=1, label=f"mean {totals.mean():.2f}")
    ax.set_xticks(range(1, 6))
    ax.set_xlabel("mean total score (1-5)")
    ax.set_ylabel("records")
    ax.set_title(f"{title}, n = {len(totals):,}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spread_chart(spread: pd.DataFrame) -> Figure:
    """Annotators' disagreement on the total score: the range (max - min) and the std per record."""
    title = "Annotator disagreement on the total score"
    if spread.empty:
        return _no_data(title)
    fig = _figure(10, 3.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    counts = integer_histogram(spread["range"]).reindex(range(5), fill_value=0)
    bars = ax1.bar(counts.index, counts.to_numpy(), color=BAR, width=0.7)
    ax1.bar_label(bars, labels=[f"{c / counts.sum():.0%}" for c in counts], fontsize=8, padding=2)
    ax1.set_ylim(0, counts.max() * 1.15)
    ax1.set_xticks(counts.index)
    ax1.set_xlabel("max - min of the annotators' scores")
    ax1.set_ylabel("records")
    ax1.set_title("Range per record")
    stds = spread["std"]
    # the std takes few distinct values (3 votes of 1-5), so coarse bins read better than fine ones
    ax2.hist(stds, bins=np.arange(0, max(2.0, float(stds.max())) + 0.1, 0.1), color=BAR, edgecolor="white")
    ax2.axvline(stds.mean(), color="0.2", ls="--", lw=1, label=f"mean {stds.mean():.2f}")
    ax2.set_xlabel("std of the annotators' scores (population)")
    ax2.set_ylabel("records")
    ax2.set_title("Std per record")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{title} ({(spread['range'] == 0).mean():.0%} of records unanimous)")
    fig.tight_layout()
    return fig


def heatmap_chart(rate: pd.DataFrame, count: pd.DataFrame, what: str = "normalised category") -> Figure:
    """Generator x category positive rates, each cell labelled; grey where too few elements."""
    title = f"Element positive rate per generator and {what}"
    if rate.empty:
        return _no_data(title)
    n_rows, n_cols = rate.shape
    fig = _figure(max(6, 0.75 * n_cols + 3), max(3, 0.36 * n_rows + 1.8))
    ax = fig.add_subplot()
    cmap = colormaps["RdYlGn"].with_extremes(bad="0.85")
    vals = rate.to_numpy(float)
    lo = math.floor(np.nanmin(vals) * 10) / 10 if np.isfinite(vals).any() else 0.0
    im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, vmin=lo, vmax=1.0, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = vals[i, j]
            if np.isfinite(v):
                r, g, b, _ = cmap((v - lo) / max(1e-9, 1.0 - lo))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.45
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    totals = count.sum(axis=0)
    tilt = n_cols > 8 or max(len(str(c)) for c in rate.columns) > 12
    sep = " " if tilt else "\n"
    ax.set_xticks(range(n_cols), [f"{c}{sep}(n={totals[c]:,})" for c in rate.columns], fontsize=8,
                  rotation=35 if tilt else 0, ha="right" if tilt else "center",
                  rotation_mode="anchor" if tilt else "default")
    ax.set_yticks(range(n_rows), rate.index, fontsize=8)
    ax.set_xlabel(f"{what} (n = elements); grey cells: too few elements to show")
    ax.set_ylabel("T2I generator (best overall on top)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label("share of elements judged present")
    fig.tight_layout()
    return fig


def total_vs_elements_chart(df: pd.DataFrame) -> Figure:
    """Box plot of mean total score per bin of the fraction of a record's elements judged present."""
    title = "Total score against elements present"
    if df.empty:
        return _no_data(title)
    bins = np.linspace(0, 1, 6)
    labels = [f"{a:.0%}-{b:.0%}" for a, b in zip(bins[:-1], bins[1:])]
    binned = pd.cut(df["fraction_present"], bins, labels=labels, include_lowest=True)
    groups = [df.loc[binned == lab, "total"].to_numpy() for lab in labels]
    keep = [i for i, g in enumerate(groups) if len(g)]
    fig = _figure(7, 3.8)
    ax = fig.add_subplot()
    ax.boxplot([groups[i] for i in keep], tick_labels=[f"{labels[i]}\n(n={len(groups[i]):,})" for i in keep],
               showfliers=False, patch_artist=True, boxprops={"facecolor": "#A6BDDB"},
               medianprops={"color": "k"})
    r = df["total"].corr(df["fraction_present"]) if len(df) > 2 else float("nan")
    ax.set_xlabel("fraction of the record's elements judged present (mean vote >= 0.5)")
    ax.set_ylabel("mean total score")
    ax.set_ylim(0.8, 5.2)
    ax.set_title(f"{title} (Pearson r = {r:.2f})")
    fig.tight_layout()
    return fig


def category_share_chart(train_el: pd.DataFrame, test_el: pd.DataFrame) -> Figure:
    """Share of elements per normalised category in the training and test files, side by side."""
    title = "Element categories: train vs test"
    share = pd.DataFrame({"train": train_el["category"].value_counts(normalize=True),
                          "test": test_el["category"].value_counts(normalize=True)}).fillna(0.0)
    if share.empty:
        return _no_data(title)
    share = share.sort_values("train", ascending=True)
    fig = _figure(7, 0.4 * len(share) + 1.6)
    ax = fig.add_subplot()
    y = np.arange(len(share))
    ax.barh(y + 0.2, share["train"], 0.4, color=BAR, label=f"train ({len(train_el):,} elements)")
    ax.barh(y - 0.2, share["test"], 0.4, color="#DD8452", label=f"test ({len(test_el):,} elements)")
    ax.set_yticks(y, share.index)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of elements")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
