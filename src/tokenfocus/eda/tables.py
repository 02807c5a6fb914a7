"""EDA tables: records in, numbers out. An element counts as positive when its mean vote is
>= 0.5, the binarisation the ACC metric uses."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import element_frame

HIDDEN = "(hidden)"


def element_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per element: element_frame's columns plus category_fine, n_votes, unanimous and
    positive.

    ``category_fine`` is the whole category lower-cased (``attribute-color``), finer than the
    normalised one; ``unanimous`` is NaN where the votes are not known (final-phase records)."""
    el = element_frame(records)
    votes = {(r.img_path, k): v for r in records.itertuples(index=False) for k, v in r.element_votes.items()}
    vote_lists = [votes.get(key) for key in zip(el["img_path"], el["element_key"])]
    el["category_fine"] = el["category_raw"].str.strip().str.lower()
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
