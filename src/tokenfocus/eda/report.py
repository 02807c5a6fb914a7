"""The EDA report: ``write_report`` composes the tables and figures into PNG plots,
``summary.md`` and ``summary.json``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from ..data import element_frame
from ..io import save_figure, write_json, write_text
from .charts import (barh_chart, category_share_chart, heatmap_chart, histogram_chart, spread_chart, total_score_chart,
                     total_vs_elements_chart)
from .tables import (annotator_total_spread, annotators_per_record, element_table, elements_per_record,
                     generator_category_rates, generator_totals, generator_weaknesses, images_per_prompt,
                     overview_test_file, rates_by, total_vs_elements, value_counts_sorted)

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


def write_report(train: pd.DataFrame, test: pd.DataFrame | None, out_dir: str | Path, progress: bool = True,
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
