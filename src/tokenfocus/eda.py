"""Exploratory data analysis of EvalMuse records: counts, label distributions, annotator agreement.

Each table has a pure function (records in, numbers out) and a drawing function (numbers in,
Figure out); ``run_eda`` composes them into PNG plots, ``summary.md`` and ``summary.json``.
An element counts as positive when its mean vote is >= 0.5, the binarisation the ACC metric uses.
Figures are drawn on the Agg canvas directly (no pyplot state), so they render headless.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm import tqdm

from .data import element_frame
from .io import save_figure, write_json, write_text

BAR = "#4C72B0"
HIDDEN = "(hidden)"

# ----------------------------------------------------------------------------------------------
# Tables


def element_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per element: element_frame's columns plus category_fine, t2i_model, n_votes, unanimous,
    positive.

    ``category_fine`` is the whole category lower-cased (``attribute-color``), finer than the
    normalised one; ``unanimous`` is NaN where the votes are not known (final-phase records)."""
    el = element_frame(records)
    models = dict(zip(records["img_path"], records["t2i_model"]))
    votes = {(r.img_path, k): v for r in records.itertuples(index=False) for k, v in r.element_votes.items()}
    vote_lists = [votes.get(key) for key in zip(el["img_path"], el["element_key"])]
    el["category_fine"] = el["category_raw"].str.strip().str.lower()
    el["t2i_model"] = el["img_path"].map(models)
    el["n_votes"] = [len(v) if v else 0 for v in vote_lists]
    el["unanimous"] = [float(len(set(v)) == 1) if v else np.nan for v in vote_lists]
    el["positive"] = np.where(el["target"].notna(), (el["target"] >= 0.5).astype(float), np.nan)
    return el


def value_counts_sorted(values: pd.Series) -> pd.Series:
    """Counts of each value, largest first; missing values counted as ``(hidden)``."""
    return values.astype(object).where(values.notna(), HIDDEN).value_counts()


def integer_histogram(values: pd.Series) -> pd.Series:
    """Counts of each integer value, every value from min to max present (zeros kept)."""
    values = pd.Series(values).dropna().astype(int)
    if values.empty:
        return pd.Series(dtype=int)
    return values.value_counts().reindex(range(values.min(), values.max() + 1), fill_value=0)


def images_per_prompt(records: pd.DataFrame) -> pd.Series:
    return integer_histogram(records.groupby("prompt_id").size())


def elements_per_record(records: pd.DataFrame) -> pd.Series:
    return integer_histogram(records["element_keys"].map(len))


def annotators_per_record(records: pd.DataFrame) -> pd.Series:
    return integer_histogram(records.loc[records["n_annotators"] > 0, "n_annotators"])


def rates_by(elements: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per group of ``by``: elements, positive_rate, mean_vote, unanimous; most elements first."""
    labelled = elements[elements["target"].notna()]
    g = labelled.groupby(by, dropna=True)
    out = pd.DataFrame({"elements": g.size(), "positive_rate": g["positive"].mean(),
                        "mean_vote": g["target"].mean(), "unanimous": g["unanimous"].mean()})
    return out.sort_values(["elements", "positive_rate"], ascending=[False, False])


def generator_totals(records: pd.DataFrame) -> pd.DataFrame:
    """Per T2I generator: records, mean_total, sem_total; best mean first."""
    lab = records[records["t2i_model"].notna() & records["total_score"].notna()]
    g = lab.groupby("t2i_model")["total_score"]
    out = pd.DataFrame({"records": g.size(), "mean_total": g.mean(), "sem_total": g.sem().fillna(0.0)})
    return out.sort_values("mean_total", ascending=False)


def generator_category_rates(elements: pd.DataFrame, min_count: int = 5, max_categories: int = 15,
                             column: str = "category") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Element positive rate and element count per (generator, category in ``column``).

    Rows: generators, best overall positive rate first; columns: the ``max_categories`` most
    frequent categories. Rates from fewer than ``min_count`` elements are NaN (too noisy to read)."""
    lab = elements[elements["target"].notna() & elements["t2i_model"].notna()]
    if lab.empty:
        return pd.DataFrame(), pd.DataFrame()
    cats = lab[column].value_counts().index[:max_categories]
    lab = lab[lab[column].isin(cats)]
    rate = lab.pivot_table(index="t2i_model", columns=column, values="positive", aggfunc="mean")
    count = lab.pivot_table(index="t2i_model", columns=column, values="positive", aggfunc="size")
    rows = lab.groupby("t2i_model")["positive"].mean().sort_values(ascending=False).index
    rate, count = rate.reindex(index=rows, columns=cats), count.reindex(index=rows, columns=cats).fillna(0)
    return rate.where(count >= min_count), count.astype(int)


def generator_weaknesses(rate: pd.DataFrame) -> pd.DataFrame:
    """For each generator, the category where it falls furthest below the mean of all generators
    (generators at or above the mean everywhere are left out)."""
    if rate.empty:
        return pd.DataFrame(columns=["category", "positive_rate", "vs_mean"])
    gap = rate - rate.mean(axis=0)
    rows = []
    for gen, row in gap.iterrows():
        if (row < 0).any():
            cat = row.idxmin()
            rows.append((gen, cat, rate.loc[gen, cat], row[cat]))
    return pd.DataFrame(rows, columns=["t2i_model", "category", "positive_rate", "vs_mean"]).set_index("t2i_model")


def annotator_total_spread(records: pd.DataFrame) -> pd.DataFrame:
    """Per record with votes: the range (max - min) and population std of its annotators' totals."""
    votes = records["total_votes"].dropna()
    return pd.DataFrame({"range": [int(max(v) - min(v)) for v in votes],
                         "std": [float(np.std(v)) for v in votes]}, index=votes.index)


def total_vs_elements(records: pd.DataFrame, elements: pd.DataFrame) -> pd.DataFrame:
    """Per labelled record: mean total and the fraction of its elements judged present."""
    lab = elements[elements["target"].notna()]
    frac = lab.groupby("img_path")["positive"].mean()
    tot = records.set_index("img_path")["total_score"].dropna()
    return pd.DataFrame({"total": tot, "fraction_present": frac}).dropna()


def overview_test_file(test: pd.DataFrame, train: pd.DataFrame) -> dict:
    """Counts of the test file and how much of its structure is hidden or unseen in training."""
    el = element_frame(test)
    train_cats = set(element_frame(train)["category"])
    return {
        "records": len(test),
        "prompts": int(test["prompt_id"].nunique()),
        "elements": len(el),
        "hidden_model": int(test["t2i_model"].isna().sum()),
        "hidden_type": int(test["type"].isna().sum()),
        "labelled": int(test["total_score"].notna().sum()),
        "prompts_also_in_train": int(test["prompt"].isin(set(train["prompt"])).sum()),
        "categories_unseen_in_train": sorted(set(el["category"]) - train_cats),
    }


# ----------------------------------------------------------------------------------------------
# Drawing


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


# ----------------------------------------------------------------------------------------------
# Summary


def _num(v):
    """JSON-friendly scalar: numpy types to Python, floats rounded."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 4)
    return v


def _as_dict(s: pd.Series) -> dict:
    return {str(k): _num(v) for k, v in s.items()}


def md_table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    """A pipe table (no tabulate dependency); the index becomes the first column."""
    df = df.reset_index()
    cells = [[floats.format(v) if isinstance(v, (float, np.floating)) and np.isfinite(v)
              else ("" if isinstance(v, (float, np.floating)) else f"{v:,}" if isinstance(v, (int, np.integer))
                    else str(v).replace("|", "\\|")) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(r) + " |" for r in cells])


def _image(name: str, title: str) -> str:
    return f"![{title}]({name})"


def summary_markdown(s: dict, tables: dict[str, pd.DataFrame], plots: dict[str, str]) -> str:
    """The markdown report: headline numbers, the tables, every plot embedded beside its table."""
    t = s["train"]
    ipp, epr = t["images_per_prompt"], t["elements_per_record"]
    counts = pd.DataFrame({"value": [
        f"{t['records']:,}", f"{t['prompts']:,}", f"{t['generators']:,}", f"{t['elements']:,}",
        f"{ipp['mean']:.2f} (min {ipp['min']}, max {ipp['max']})",
        f"{epr['mean']:.2f} (min {epr['min']}, max {epr['max']})",
        ", ".join(f"{k}: {v:,}" for k, v in t["annotators_per_record"].items()) or "-",
        ", ".join(f"{k}: {v:,}" for k, v in t["prompt_types"].items()) or "-",
        f"{t['total_mean']:.3f} ± {t['total_std']:.3f}",
        f"{t['element_positive_rate']:.3f}",
        f"{t['element_unanimous_rate']:.3f}",
        f"{t['total_annotator_std_mean']:.3f}",
        f"{t['total_unanimous_rate']:.3f}",
    ]}, index=pd.Index(["records", "prompts", "T2I generators", "elements", "images per prompt",
                        "elements per record", "annotators per record", "prompt types",
                        "total score (mean ± std)", "element positive rate (mean vote >= 0.5)",
                        "element votes unanimous", "annotator std of total (mean)",
                        "total score unanimous"], name="training"))
    out = ["# EDA summary", "", md_table(counts), ""]
    sections = [
        ("Counts", None, ["images_per_prompt", "elements_per_record", "prompt_types"]),
        ("Element categories", "categories", ["elements_per_category", "positive_rate_per_category"]),
        ("T2I generators", "generators", ["records_per_generator", "mean_total_per_generator",
                                           "positive_rate_per_generator", "generator_category_heatmap",
                                           "generator_subcategory_heatmap"]),
        ("Labels", None, ["total_score", "total_vs_elements"]),
        ("Annotator agreement", None, ["annotators_per_record", "unanimous_per_category", "annotator_total_spread"]),
        ("Test file", "test", ["test_categories"]),
    ]
    for head, table, names in sections:
        present = [n for n in names if n in plots]
        if not present and (table is None or table not in tables):
            continue
        out += [f"## {head}", ""]
        if head == "T2I generators":
            out += ["`weakest category`: the full category where the generator's element positive rate "
                    "falls furthest below the mean of all generators (`vs mean`); blank when it is nowhere "
                    "below the mean.", ""]
        if table in tables:
            out += [md_table(tables[table]), ""]
        out += [_image(f"{n}.png", plots[n]) + "\n" for n in present]
    return "\n".join(out).rstrip() + "\n"


def _train_summary(train: pd.DataFrame, el: pd.DataFrame, cats: pd.DataFrame, gen_rates: pd.DataFrame,
                   gen_totals: pd.DataFrame, weak: pd.DataFrame, spread: pd.DataFrame) -> dict:
    lab = el[el["target"].notna()]
    per_prompt = train.groupby("prompt_id").size()
    per_record = train["element_keys"].map(len)
    return {
        "records": len(train),
        "prompts": int(train["prompt_id"].nunique()),
        "generators": int(train["t2i_model"].nunique()),
        "elements": len(el),
        "images_per_prompt": {"mean": _num(per_prompt.mean()), "min": int(per_prompt.min()),
                              "max": int(per_prompt.max())},
        "elements_per_record": {"mean": _num(per_record.mean()), "min": int(per_record.min()),
                                "max": int(per_record.max())},
        "annotators_per_record": _as_dict(annotators_per_record(train).loc[lambda s: s > 0]),
        "prompt_types": _as_dict(value_counts_sorted(train["type"])),
        "records_per_generator": _as_dict(value_counts_sorted(train["t2i_model"])),
        "elements_per_category": _as_dict(cats["elements"]),
        "total_mean": _num(train["total_score"].mean()),
        "total_std": _num(train["total_score"].std()),
        "element_positive_rate": _num(lab["positive"].mean()),
        "element_unanimous_rate": _num(lab["unanimous"].mean()),
        "total_annotator_std_mean": _num(spread["std"].mean()),
        "total_unanimous_rate": _num((spread["range"] == 0).mean()),
        "positive_rate_per_category": _as_dict(cats["positive_rate"]),
        "unanimous_per_category": _as_dict(cats["unanimous"]),
        "positive_rate_per_generator": _as_dict(gen_rates["positive_rate"]),
        "mean_total_per_generator": _as_dict(gen_totals["mean_total"]),
        "weakest_category_per_generator": {str(g): str(r.category) for g, r in weak.iterrows()},
    }


# ----------------------------------------------------------------------------------------------
# Composition


def run_eda(train: pd.DataFrame, test: pd.DataFrame | None, out_dir: str | Path, progress: bool = True,
            min_cell: int = 5) -> dict:
    """Write the EDA plots, ``summary.md`` and ``summary.json`` into ``out_dir``; return the numbers.

    ``train`` and ``test`` are record frames as ``load_records`` returns them; ``min_cell`` is the
    fewest elements a generator x category cell needs to be shown in the heatmap."""
    out_dir = Path(out_dir)
    el = element_table(train)
    cats = rates_by(el, "category")
    gen_rates = rates_by(el, "t2i_model")
    gen_totals = generator_totals(train)
    rate, count = generator_category_rates(el, min_count=min_cell)
    fine_rate, fine_count = generator_category_rates(el, min_count=min_cell, column="category_fine")
    # the fine categories say what fails (colour, size, texture are all "attribute" once normalised)
    weak = generator_weaknesses(fine_rate)
    spread = annotator_total_spread(train)
    overall_pos = float(el["positive"].mean()) if el["positive"].notna().any() else None

    # name -> (title, draw); drawing is deferred so the progress bar tracks the real work
    plots: dict[str, tuple[str, Callable[[], Figure]]] = {
        "images_per_prompt": ("Images per prompt", lambda: histogram_chart(
            images_per_prompt(train), "Images per prompt", "images (T2I outputs) of one prompt", "prompts")),
        "elements_per_record": ("Elements per record", lambda: histogram_chart(
            elements_per_record(train), "Elements per record", "elements in the record", "records")),
        "prompt_types": ("Prompt types", lambda: barh_chart(
            value_counts_sorted(train["type"]), "Records per prompt type", "records")),
        "elements_per_category": ("Elements per category", lambda: barh_chart(
            cats["elements"], "Elements per category (normalised)", "elements")),
        "positive_rate_per_category": ("Positive rate per category", lambda: barh_chart(
            cats["positive_rate"], "Element positive rate per category", "share of elements judged present",
            fmt="{:.2f}", xlim=(0, 1.1), ref=overall_pos, ref_label="all elements")),
        "records_per_generator": ("Records per generator", lambda: barh_chart(
            value_counts_sorted(train["t2i_model"]), "Records per T2I generator", "records")),
        "mean_total_per_generator": ("Mean total per generator", lambda: barh_chart(
            gen_totals["mean_total"], "Mean total score per T2I generator (± s.e.)", "mean total score",
            fmt="{:.2f}", xlim=(1, 5.4), err=gen_totals["sem_total"], ref=_num(train["total_score"].mean()),
            ref_label="all records")),
        "positive_rate_per_generator": ("Positive rate per generator", lambda: barh_chart(
            gen_rates["positive_rate"], "Element positive rate per T2I generator",
            "share of elements judged present", fmt="{:.2f}", xlim=(0, 1.1), ref=overall_pos,
            ref_label="all elements")),
        "generator_category_heatmap": ("Positive rate per generator and category",
                                       lambda: heatmap_chart(rate, count)),
        "generator_subcategory_heatmap": ("Positive rate per generator and full category", lambda: heatmap_chart(
            fine_rate, fine_count, "full category")),
        "total_score": ("Total score histogram", lambda: total_score_chart(train["total_score"])),
        "total_vs_elements": ("Total score vs elements present",
                              lambda: total_vs_elements_chart(total_vs_elements(train, el))),
        "annotators_per_record": ("Annotators per record", lambda: histogram_chart(
            annotators_per_record(train), "Annotators per record", "annotators", "records")),
        "unanimous_per_category": ("Unanimous element votes per category", lambda: barh_chart(
            cats["unanimous"], "Unanimous element votes per category", "share of elements all annotators agree on",
            fmt="{:.2f}", xlim=(0, 1.1), ref=_num(el["unanimous"].mean()), ref_label="all elements")),
        "annotator_total_spread": ("Annotator spread of the total score", lambda: spread_chart(spread)),
    }
    summary: dict = {"train": _train_summary(train, el, cats, gen_rates, gen_totals, weak, spread)}
    tables = {
        "categories": cats.rename(columns={"positive_rate": "positive rate", "mean_vote": "mean vote"})
        .rename_axis("category"),
        "generators": gen_totals[["records", "mean_total"]].join(gen_rates[["positive_rate"]])
        .join(weak[["category", "vs_mean"]].rename(columns={"category": "weakest category"}))
        .rename(columns={"mean_total": "mean total", "positive_rate": "positive rate", "vs_mean": "vs mean"})
        .rename_axis("generator"),
    }
    if test is not None:
        overview = overview_test_file(test, train)
        tables["test"] = pd.DataFrame(
            {"value": [", ".join(v) or "none" if isinstance(v, list) else v for v in overview.values()]},
            index=pd.Index([k.replace("_", " ") for k in overview], name="test"))
        test_el = element_frame(test)
        summary["test"] = {**overview, "elements_per_category": _as_dict(test_el["category"].value_counts())}
        plots["test_categories"] = ("Element categories, train vs test",
                                    lambda: category_share_chart(el, test_el))

    for name, (_, draw) in tqdm(plots.items(), desc="eda plots", unit="plot", disable=not progress, leave=False):
        save_figure(draw(), out_dir / f"{name}.png")
    titles = {name: title for name, (title, _) in plots.items()}
    summary["files"] = [f"{name}.png" for name in plots] + ["summary.md", "summary.json"]
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", summary_markdown(summary, tables, titles))
    return summary
