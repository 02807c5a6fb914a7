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
# # 02 · Prompt-grouped folds
#
# **Stage:** `src/02_make_folds.py` → `tokenfocus.stages.make_fold_file` →
# `tokenfocus.folds.make_folds`. **Writes:** `output/demo/folds.csv` (one row per labelled
# image: `img_path, prompt_id, fold`) and `fold_counts.csv` (the per-fold table below).
#
# Five folds from scikit-learn's `StratifiedGroupKFold`: **grouped by the prompt text** (all
# images of a prompt share a fold; the text, not the id, so that a prompt repeated under two ids
# cannot leak) and **stratified on the binned mean total score**, so every fold sees the whole
# score range.
#
# Why it matters:
#
# * The images of one prompt share its difficulty and its element list. A prompt split across
#   folds lets a model score a held-out image after training on its siblings, and the
#   out-of-fold (OOF) numbers come out optimistic. The final test's prompts are all unseen.
# * The **same folds serve every later stage**: stage 03 trains one LoRA adapter per fold on the
#   other four, stage 04 scores each held-out fold with its own adapter (the OOF predictions), and
#   stage 05 scores its meta-models with nested cross-validation over the same folds. A
#   meta-model is therefore never scored on rows whose labels reached it through a base model.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from tokenfocus.notebook import present, start

cfg, EXP = start()  # the demo; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment

# %%
from tokenfocus.data import load_records
from tokenfocus.folds import check_folds, fold_table, make_folds, score_bins

train = load_records(cfg.train_path)
test = load_records(cfg.test_path)
have_folds = present(cfg.folds_path, "src/02_make_folds.py")
if have_folds:
    folds = pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})
    display(folds.head())

# %% [markdown]
# ## Per-fold counts
#
# Training and held-out images, prompts and elements per fold (the shape of the paper's
# Table 6), as written to `fold_counts.csv`.

# %%
counts_path = EXP / "fold_counts.csv"
if present(counts_path, "src/02_make_folds.py"):
    counts = pd.read_csv(counts_path)
    display(counts.set_index("fold"))

# %% [markdown]
# ## Checks
#
# No prompt crosses folds, every labelled image has exactly one fold, the file is what the
# config's seed produces, and no test prompt occurs in training.

# %%
if have_folds:
    merged = train[["img_path", "prompt", "total_score", "t2i_model"]].merge(folds, on="img_path", how="left")
    per_prompt = merged.groupby("prompt")["fold"].nunique()
    print(f"prompts: {len(per_prompt):,}; folds per prompt: max {per_prompt.max()}")
    assert (per_prompt == 1).all(), "a prompt crosses folds"
    assert merged["fold"].notna().all() and not folds["img_path"].duplicated().any()
    check_folds(train, folds)  # the stage's own check: raises on any violation
    print("check_folds: every labelled image in exactly one fold, no prompt in two folds")

    again = make_folds(train, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.n_bins)
    same = again.merge(folds, on=["img_path", "prompt_id"], suffixes=("", "_file"))
    print(f"re-made with seed {cfg.folds.seed}: {(same['fold'] == same['fold_file']).mean():.0%} "
          "of the images land in the same fold as in folds.csv")
    assert fold_table(train, again).equals(fold_table(train, folds))

shared = set(test["prompt"]) & set(train["prompt"])
print(f"test prompts also in training: {len(shared)}")

# %% [markdown]
# ## Stratification
#
# The share of each total-score bin per fold (stratified, so the folds are alike and the
# per-fold scores of later stages are comparable) and the generator mix (not stratified; with
# about a hundred prompts per fold it comes out close).

# %%
if have_folds:
    edges = np.linspace(1, 5, cfg.folds.n_bins + 1)
    labels = [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])]
    merged["score bin"] = [labels[b] for b in score_bins(merged["total_score"], cfg.folds.n_bins)]
    shares = pd.crosstab(merged["fold"], merged["score bin"], normalize="index")
    display((100 * shares).round(1).rename_axis(columns="% of the fold's images in score bin"))
    display(merged.groupby("fold")["total_score"].agg(["count", "mean", "std"]))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4))
    shares.plot.bar(stacked=True, ax=ax1, colormap="viridis", width=0.8, rot=0)
    ax1.set_ylabel("share of the fold's images"), ax1.set_title("Total-score bins per fold")
    ax1.legend(title="mean total", fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    pd.crosstab(merged["t2i_model"], merged["fold"]).plot.barh(ax=ax2, width=0.8)
    ax2.set_xlabel("images"), ax2.set_title("Generator mix per fold")
    ax2.legend(title="fold", fontsize=8)
    fig.tight_layout()
