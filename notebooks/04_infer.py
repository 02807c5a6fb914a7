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
# # 04 · Out-of-fold and test predictions
#
# **Stage:** `src/04_infer.py` → `tokenfocus.stages.run_inference`. Every fold adapter scores
# its held-out fold (the **out-of-fold**, OOF, predictions: every training image is predicted
# once, by the one model that did not see it) and the whole test set. Beside the fine-tuned
# models: the prompt-only **prior** baseline and every untuned base **zero-shot**, VQAScore's
# recipe: P(Yes) / (P(Yes) + P(No)) to `Does the image show "<element text>"?` per element, and
# 1 + 4 P(Yes) to the same question about the whole prompt for the total. With `jobs`, folds
# are scored side by side like stage 03 trains them.
#
# **Writes:** `output/demo/preds/<model>/<task>/{oof,test}_fold<k>.parquet`, the dumps that stage
# 05 reads, one row per question:
# `img_path, prompt_id, prompt, fold, model, task, element_key` (byte-exact, `''` for the
# total), `category, target` (NaN on test), `pred` (the expected value) and `p_<label>` for every
# label; `oof_scores.csv` (per-fold and pooled OOF SRCC, PLCC, ACC, Final per model),
# `bagged/<model>.parquet` (fold-averaged test predictions) and, when the config asks for
# ablations, `ablation.csv`. Each dump is checked to cover exactly its questions before it is
# written, atomically.
#
# **One-prefix scoring.** The usual scorer runs one full forward per (image, question), so the
# vision tower and the image tokens are recomputed for every element of a prompt. Here each
# image's prefix (system turn, image block and the question text all its questions share) runs
# once with a KV cache, then all of its questions' remaining tokens run in one batched pass over
# that cache, reading only the first-answer-token logits (`tokenfocus.fastscore`). Same tokens,
# same positions, same probabilities.

# %%
# %matplotlib inline
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from tokenfocus.notebook import present, rel, start

cfg, EXP = start()  # the demo; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment

# %%
preds_dir = EXP / "preds"
files = sorted(preds_dir.glob("*/*/*.parquet")) if present(preds_dir, "src/04_infer.py") else []
inventory = pd.DataFrame([{"model": f.parts[-3], "task": f.parts[-2], "split": f.stem.split("_")[0],
                           "fold": int(f.stem.split("fold")[1])} for f in files])
if inventory.empty:
    print("no prediction dumps yet")
else:
    display(inventory.pivot_table(index="model", columns=["task", "split"], values="fold", aggfunc="count"))
trained_models = [m.name for m in cfg.models if m.name in set(inventory.get("model", []))]
if not trained_models:
    print("no fine-tuned model has dumps yet (stages 03 and 04 write them); the prior baseline's are shown")

# %% [markdown]
# ## A dump
#
# The head of one OOF dump (a fine-tuned model's when there is one), then the contract check
# stage 05 runs on load: all dumps of a task cover the same questions, each OOF dump exactly its
# fold's images.

# %%
from tokenfocus.dumps import dump_path, read_dump
from tokenfocus.dumps import load_dumps

if not inventory.empty:
    shown = trained_models[0] if trained_models else inventory["model"].iloc[0]
    for task in ("total", "element"):
        path = dump_path(preds_dir, shown, task, "oof", 0)
        if path.is_file():
            print(rel(path))
            display(read_dump(path).head(4))
    folds = pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})
    # Models scored on every fold; ablation variants cover their ablation folds only.
    dumped = set(inventory["model"])
    baselines = sorted(m for m in dumped if m == "prior" or m.startswith("zeroshot_"))
    every_fold = [m for m in [mc.name for mc in cfg.models] + baselines if m in dumped]
    oof_long, test_long = load_dumps(preds_dir, models=every_fold, folds=folds)
    print(f"load_dumps: {oof_long['model'].nunique()} model(s), {len(oof_long):,} OOF rows and "
          f"{len(test_long):,} test rows, coverage checked")

# %% [markdown]
# ## OOF scores per model
#
# From `oof_scores.csv` (written by stage 04); when the stage has not written it yet, computed
# here from the dumps present with the same function, `tokenfocus.infer.oof_scores`.

# %%
from tokenfocus.infer import oof_scores

scores_path = EXP / "oof_scores.csv"
if scores_path.is_file():
    scores = pd.read_csv(scores_path)
    print(f"read {rel(scores_path)}")
elif not inventory.empty:
    print(f"{rel(scores_path)} not there yet (written by src/04_infer.py); "
          "computing from the dumps present")
    scores = oof_scores(preds_dir, sorted(inventory["model"].unique()))
else:
    scores = pd.DataFrame()
if not scores.empty:
    scores["fold"] = scores["fold"].astype(str)
    pooled = scores[scores["fold"] == "pooled"].set_index("model")[["srcc", "plcc", "acc", "final"]]
    display(pooled.sort_values("final", ascending=False).rename(columns=str.upper))
    per_fold = scores[scores["fold"] != "pooled"].pivot_table(index="fold", columns="model", values="final")
    print("Final per fold (the shape of the paper's Table 4):")
    display(per_fold)

# %%
if not scores.empty:
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(pooled) + 1.2))
    pooled["final"].sort_values().plot.barh(ax=ax, color="#4C72B0")
    ax.set_xlabel("pooled OOF Final"), ax.set_xlim(0, 1), ax.set_title("Out-of-fold Final per model")
    for y, v in enumerate(pooled["final"].sort_values()):
        ax.text(v + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
    fig.tight_layout()

# %% [markdown]
# ## Zero-shot versus fine-tuned
#
# The same tiny base, untuned (VQAScore's yes/no caption question) and fine-tuned with the
# token-focus loss on the other folds: the gap is what the fine-tuning adds, the scoring format
# and the annotators' judgement.

# %%
rows = []
if not scores.empty:
    for m in cfg.models:
        for name, kind in ((f"zeroshot_{m.name}", "zero-shot"), (m.name, "fine-tuned")):
            if name in pooled.index:
                rows.append({"base": m.name, "variant": kind, **pooled.loc[name].to_dict()})
if rows:
    display(pd.DataFrame(rows).set_index(["base", "variant"]).rename(columns=str.upper))
else:
    print("no zero-shot or fine-tuned dumps yet: stage 04 writes them after stage 03 has trained the folds")

# %% [markdown]
# How much a fine-tune can add depends on how far the literal truth of a scene is from what the
# annotators say. Stage 00 scores that truth alone on the test split (`scene_truth` in
# `noise_ceiling.json`): the demo's annotators judge holistically (defects, clutter and style
# move their totals; near-miss colours pass, small or low-contrast objects are missed), so the
# truth lands well below the noise ceiling, and that gap is what the labels can teach.

# %%
from tokenfocus.demo.build import REFERENCES

ceiling_path = cfg.noise_ceiling_path
if ceiling_path is not None and ceiling_path.is_file():
    stored = json.loads(ceiling_path.read_text())
    refs = {name: stored[key] for name, key in REFERENCES if key in stored}
    display(pd.DataFrame(refs).T.rename(columns=str.upper))
else:
    print("no noise_ceiling.json: real data has no known truth to compare with")

# %% [markdown]
# ## Ablation
#
# The config's training variants (loss, structural information) of one model on the OOF
# predictions of the ablation folds, beside the untuned base: `ablation.csv`.

# %%
ablation_path = EXP / "ablation.csv"
if cfg.ablation is None:
    print(f"{cfg.source} asks for no ablation (no 'ablation:' section), so there is no ablation.csv")
elif present(ablation_path, "src/04_infer.py"):
    display(pd.read_csv(ablation_path).set_index("variant"))

# %%
bagged = sorted((EXP / "bagged").glob("*.parquet"))
if bagged:
    print("fold-averaged test predictions:", ", ".join(p.name for p in bagged))
    display(pd.read_parquet(bagged[0]).head(3))
else:
    present(EXP / "bagged", "src/04_infer.py")

# %% [markdown]
# ## Fast versus naive scoring
#
# Two test images with all their questions, scored by the one-prefix path and by one full
# forward per question. The probabilities must agree to 1e-4 (`tests/test_fastscore.py` checks
# the same on both tiny bases; `bench/bench_fast_scoring.py` measures the speed-up at a
# realistic image-token count, which these 49-token demo images do not have).

# %%
import time

import transformers

from tokenfocus.data import load_records
from tokenfocus.fastscore import naive_label_logits, prefix_label_logits
from tokenfocus.infer import task_probabilities
from tokenfocus.questions import label_logit_table
from tokenfocus.models import load_model_adapter, load_trained
from tokenfocus.questions import question_frame, question_text
from tokenfocus.batches import load_image
from tokenfocus.experiment import is_trained, model_dir
from tokenfocus.questions import task_groups

transformers.utils.logging.disable_progress_bar()
mcfg = cfg.models[0]
tcfg = mcfg.training_config(cfg.training)
adapter_dir = model_dir(cfg, mcfg.name, next(iter(task_groups(tcfg.task_mode))), 0)
if is_trained(adapter_dir):
    adapter, model = load_trained(cfg, mcfg, adapter_dir)
    print(f"model: {mcfg.name}, fold-0 adapter {rel(adapter_dir)}")
else:
    adapter = load_model_adapter(cfg, mcfg)
    model = adapter.model
    print(f"model: {mcfg.name} base (no trained fold-0 adapter yet)")

q = question_frame(load_records(cfg.test_path))
paths = list(dict.fromkeys(q["img_path"]))[:2]
per_image = [q[q["img_path"] == p].to_dict("records") for p in paths]
images = [load_image(cfg.image_dir, p) for p in paths]
texts = [[question_text(r, tcfg.structural) for r in rs] for rs in per_image]
label_ids, label_cols = label_logit_table(adapter)

t0 = time.perf_counter()
fast = prefix_label_logits(adapter, images, texts, label_ids, model=model)
t1 = time.perf_counter()
naive = naive_label_logits(adapter, images, texts, label_ids, model=model)
t2 = time.perf_counter()
n = sum(map(len, texts))
worst = 0.0
for rs, f, g in zip(per_image, fast, naive):
    tasks = [r["task"] for r in rs]
    for pf, pg in zip(task_probabilities(f, tasks, label_cols), task_probabilities(g, tasks, label_cols)):
        worst = max(worst, float(np.abs(pf - pg).max()))
print(f"{n} questions on {len(paths)} images: max |p_fast - p_naive| = {worst:.2e}")
print(f"(this run: one-prefix {n / (t1 - t0):.0f} questions/s, one forward each {n / (t2 - t1):.0f} questions/s)")
assert worst < 1e-4

# %%
rs = per_image[0]
probs = task_probabilities(fast[0], [r["task"] for r in rs], label_cols)
pd.DataFrame({"question": [r["element_key"] or "(total)" for r in rs],
              "probabilities": [np.round(p, 3).tolist() for p in probs],
              "pred": [float(np.dot(p, [1, 2, 3, 4, 5] if r["task"] == "total" else [0, 1]))
                       for p, r in zip(probs, rs)]})
