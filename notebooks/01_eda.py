# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Exploratory data analysis
#
# **Stage:** `src/01_eda.py` → `tokenfocus.stages.run_eda` → `tokenfocus.eda.write_report`.
# **Reads:** `input/demo/train_list.json`, `test.json`. **Writes:** `output/demo/eda/` (PNG plots,
# `summary.md`, `summary.json`).
#
# Each record is one generated image with its text prompt, the prompt's elements (keyed
# `"<text> (<category>)"`) and per-annotator votes: a 1-5 overall alignment rating
# (`total_score`) and a 0/1 "present in the image" vote per element (`element_score`).
# The targets are the means of those votes.
#
# Why look first: the structure of the data decides the rest of the pipeline.
#
# * Several images share one prompt, so the folds must be **grouped by prompt** (notebook 02).
# * Elements come in categories (object, attribute, counting, spatial, ...) with very different
#   positive rates, so the **category goes into the element question** and into the
#   meta-model's features.
# * Generators fail in different places (one miscounts, one ignores spatial relations): the
#   **T2I model name** is useful structural information when it is known; the final test hides it.
# * Annotators disagree: their spread bounds what any model can reach (the demo's noise ceiling).
#
# The demo dataset is a procedurally rendered stand-in for EvalMuse-40K in the same file
# formats, so the numbers below describe the demo, not EvalMuse.

# %%
# %matplotlib inline
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

from tokenfocus.notebook import present, rel, start

cfg, EXP = start()  # the demo; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment

# %% [markdown]
# ## The records
#
# `load_records` accepts both file forms (raw per-annotator lists in `train_list.json`;
# averaged meta fields and null scores in the final-phase `test.json`) and reports what it saw.
# Element keys are kept byte-exact, trailing spaces included, because the submission must
# reproduce them.

# %%
from dataclasses import replace

from tokenfocus.data import element_frame, load_records

train, report = load_records(cfg.train_path, with_report=True)
test, test_report = load_records(cfg.test_path, with_report=True)
# (file names shown relative to the repository)
print("\n".join(line for r in (report, test_report) for line in replace(r, path=str(rel(r.path))).lines()))
train[["img_path", "prompt", "type", "t2i_model", "total_score", "n_annotators", "element_keys"]].head()

# %%
elements = element_frame(train)
odd = elements[elements["element_key"] != elements["element_key"].str.strip()]
print(f"{len(elements):,} elements in {len(train):,} training records; "
      f"{len(odd):,} keys carry leading or trailing spaces"
      + (f", e.g. {odd['element_key'].iloc[0]!r}" if len(odd) else ""))
print(f"test: {len(test):,} images, T2I model hidden for {test['t2i_model'].isna().sum():,}, "
      f"prompt type hidden for {test['type'].isna().sum():,}")
elements.head()

# %% [markdown]
# ## Sample images
#
# Two prompts, each rendered by four generators: the prompt, each image's mean total score
# and every element with its mean vote (✓ present at ≥ 0.5, ✗ absent). The prompts shown
# are those (with four or more elements) whose images disagree most on the total score.

# %%
from textwrap import fill

from PIL import Image as PILImage

n_elements = train.groupby("prompt_id")["element_keys"].first().map(len)
spread = train.groupby("prompt_id")["total_score"].agg(lambda s: s.max() - s.min())
spread = spread[n_elements.reindex(spread.index) >= 4]  # prompts with a few elements to show
for pid in spread.sort_values(ascending=False, kind="stable").index[:2]:
    recs = train[train["prompt_id"] == pid].head(4)
    n_lines = max(len(k) for k in recs["element_keys"])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.9 + 0.17 * n_lines))
    fig.suptitle(fill(recs["prompt"].iloc[0], 120), fontsize=11, fontweight="bold")
    for ax, rec in zip(axes, recs.itertuples()):
        ax.imshow(PILImage.open(cfg.image_dir / rec.img_path))
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(f"{rec.t2i_model}: total {rec.total_score:.2f}", fontsize=9)
        lines = [f"{'✓' if rec.element_scores[k] >= 0.5 else '✗'} {rec.element_scores[k]:.2f}  {k.strip()}"
                 for k in rec.element_keys]
        ax.set_xlabel("\n".join(lines), fontsize=8, loc="left")
    for ax in axes[len(recs):]:
        ax.axis("off")
    fig.tight_layout()

# %% [markdown]
# ## Summary numbers
#
# From `output/demo/eda/summary.json`, the stage's machine-readable summary.

# %%
summary_path = EXP / "eda" / "summary.json"
summary = json.loads(summary_path.read_text()) if present(summary_path, "src/01_eda.py") else None
if summary:
    t = summary["train"]
    display(pd.Series({
        "records": t["records"], "prompts": t["prompts"], "T2I generators": t["generators"],
        "elements": t["elements"],
        "images per prompt (mean)": t["images_per_prompt"]["mean"],
        "elements per record (mean)": t["elements_per_record"]["mean"],
        "annotators per record": t["annotators_per_record"],
        "prompt types": t["prompt_types"],
        "total score mean ± std": f"{t['total_mean']:.3f} ± {t['total_std']:.3f}",
        "element positive rate": t["element_positive_rate"],
        "element votes unanimous": t["element_unanimous_rate"],
        "annotator std of the total (mean)": t["total_annotator_std_mean"],
    }, name="training set").to_frame())

# %%
if summary:
    categories = pd.DataFrame({"elements": t["elements_per_category"],
                               "positive rate": t["positive_rate_per_category"],
                               "unanimous votes": t["unanimous_per_category"]})
    generators = pd.DataFrame({"records": t["records_per_generator"],
                               "mean total": t["mean_total_per_generator"],
                               "element positive rate": t["positive_rate_per_generator"],
                               "weakest category": t["weakest_category_per_generator"]}).fillna("-")
    display(categories.sort_values("elements", ascending=False))
    display(generators.sort_values("mean total", ascending=False))
    if "test" in summary:
        display(pd.Series({k: v for k, v in summary["test"].items() if k != "elements_per_category"},
                          name="test file").to_frame())

# %% [markdown]
# ## Plots written by the stage
#
# The total-score distribution, the positive rate per generator and full category (where each
# simulated generator is weak), the annotators' spread of the total score, and the category mix
# of train versus test. Every plot of the stage is embedded in `output/demo/eda/summary.md`.

# %%
for name in ("total_score", "generator_subcategory_heatmap", "annotator_total_spread", "test_categories"):
    path = EXP / "eda" / f"{name}.png"
    if present(path, "src/01_eda.py"):
        display(Image(filename=str(path), width=760))
