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
# # 03 · Token-focus fine-tuning
#
# **Stage:** `src/03_train.py` → `tokenfocus.stages.run_training`. For every configured model,
# task group (`mixed`: one model answers both question kinds; `separate`: one per kind) and fold:
# LoRA fine-tuning on the questions of the other four folds, the held-out fold scored after every
# epoch. **Writes:** `output/demo/models/<model>/<task>/fold<k>/` (the adapter as safetensors,
# `metrics.jsonl` with the per-epoch held-out SRCC/PLCC/ACC/Final, `train_done.json`), renamed
# into place only when the fold finished; an interrupted run resumes from the last checkpoint in
# `.work_fold<k>/`. Hugging Face `Trainer` runs the loop, `peft` the LoRA. On a CPU, the demo
# trains folds side by side, one single-thread process per core (`jobs: auto` in the config,
# `--jobs` on the command line; `tokenfocus.parallel`): a tiny base keeps one core busy, not two.
#
# ## The token-focus loss
#
# Every question ends with a strict answer format, so the **first answer token is the label**:
# `1`..`5` for the overall score, `1` (present) / `0` (absent) for an element. Inputs are
# left-padded, so for every row the last prompt position $t^\ast$ predicts that token. The LM
# head runs at that position only:
#
# $$z = W_{\text{head}}\, h_{t^\ast} \in \mathbb{R}^{V}.$$
#
# Only the logits of the $K$ label tokens $\ell_1,\dots,\ell_K$ (ids read from the tokenizer at
# load, never hard-coded) are kept and softmaxed **among themselves**:
#
# $$p_k = \frac{\exp z_{\ell_k}}{\sum_{j=1}^{K} \exp z_{\ell_j}}, \qquad k = 1,\dots,K.$$
#
# The prediction is the expected label value, with $v = (1,2,3,4,5)$ for the total and
# $v = (0, 1)$ for an element:
#
# $$\hat y = \sum_{k=1}^{K} v_k\, p_k .$$
#
# The loss is the squared error to the **mean human label** $\bar y$ (not rounded to a level).
# A mixed batch puts both question kinds on one 0..1 scale by dividing by the task's range
# $r_\tau$ (4 for the total, 1 for an element):
#
# $$\mathcal{L}_{\text{MSE}} = \frac{1}{B} \sum_{i=1}^{B} \left(\frac{\hat y_i - \bar y_i}{r_{\tau_i}}\right)^{2}.$$
#
# (The paper's eq. 2 writes the softmax over the label *probabilities*; the method intends, and
# `tokenfocus.loss.expected_value` computes, the softmax over the label *logits*: the model's
# distribution renormalised to the label tokens.)
#
# **Soft-label cross-entropy** (`training.loss: soft_ce`) is the alternative: the target is a
# distribution $q$ over the levels, a Gaussian $\mathcal{N}(c, \sigma^2)$ with the annotators'
# standard deviation discretised into the levels' bins, its centre $c$ moved so that
# $\sum_k v_k q_k = \bar y$ exactly (two neighbouring levels share the mass when $\sigma \approx 0$;
# an element's target is simply $(1-\bar y, \bar y)$):
#
# $$\mathcal{L}_{\text{CE}} = -\frac{1}{B}\sum_{i=1}^{B} \sum_{k=1}^{K} q_{ik} \log p_{ik}.$$
#
# **Why never materialise sequence × vocabulary logits.** A plain forward computes
# $B \times S \times V$ logits, e.g. 8 × 1,300 × 151,936 for Qwen2.5-VL with one image: 5.9 GiB
# in float32 before the backward pass doubles it, for a loss that reads $B \times K$ of
# those numbers. `answer_label_logits` calls the model with `logits_to_keep=1` (the hidden states
# are sliced before the LM head), so the head's output is $B \times V$ and then $B \times K$.
# `bench/bench_loss_memory.py` measures the difference; the plain full-vocabulary SFT loss
# (`training.loss: sft`) is kept only as the ablation baseline.

# %%
# %matplotlib inline
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from tokenfocus.notebook import present, rel, start

cfg, EXP = start()  # the demo; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment

# %% [markdown]
# ## Settings
#
# The demo's training settings beside the defaults, which are the paper's Table 2 (LoRA r 64,
# alpha 128; vision lr 1e-5, other lr 1e-4; AdamW (0.9, 0.95); weight decay 0.05; cosine with
# 200 warm-up steps; global batch 64; 3 epochs; seed 1234). The demo shrinks them to train tiny
# bases on a CPU in minutes.

# %%
from dataclasses import asdict

from tokenfocus.config import TrainingConfig

keys = ["task_mode", "loss", "structural", "structural_drop_rate", "lora_r", "lora_alpha", "lr", "vision_lr",
        "adam_beta1", "adam_beta2", "weight_decay", "scheduler", "warmup_steps", "global_batch", "epochs",
        "seed", "max_train_questions"]
columns = {"paper (defaults)": TrainingConfig(), **{m.name: m.training_config(cfg.training) for m in cfg.models}}
pd.DataFrame({name: {k: str(asdict(t)[k]) for k in keys} for name, t in columns.items()})

# %% [markdown]
# ## Where the demo's tiny bases come from
#
# `configs/demo.yaml` fine-tunes two tiny bases (about 1.5M parameters: Qwen2.5-VL and InternVL,
# native classes) that `src/tools/make_tiny_bases.py` built and pre-trained on freshly rendered
# scenes of the demo's grammar, drawn by a generic simulated generator (never the demo's images):
# first the vision tower alone on dense cell targets (what colour, shape and texture covers each
# image token's cell, the background, the style, where each shape's centre lies), then the whole
# model on generic visual questions (is there a star, what colour is the heart, how many squares,
# is the circle left of the star, what is the background, and `Does the image show "<text>"?` for
# whole and partial captions), answered from the drawn scene's truth; a second stage with the
# whole scene's words in every image token's target, a third drilling VQAScore's one-word question
# (`Does the image show "red"?`). Never the fine-tune's scoring questions, never an annotator's
# label. Each base's `card.json` records held-out accuracy per question type beside the majority
# rate, and the VQAScore zero-shot reading (AUC per element kind, SRCC of the total) after each
# phase.

# %%
rows = []
for m in cfg.models:
    card_path = cfg.path(m.path) / "card.json"
    if not card_path.is_file():
        print(f"{m.name}: no card.json at {card_path} (not a tiny base)")
        continue
    card = json.loads(card_path.read_text())
    majority = card["pretrain"]["majority_baseline"]
    rows.append({"model": m.name, "phase": "majority rate", **majority})
    for stage in card["pretrain"]["after_phase"]:
        rows.append({"model": m.name, "phase": stage["phase"], **stage["generic"],
                     "zero-shot element AUC": stage["zeroshot"]["all"]["auc"],
                     "zero-shot total SRCC": stage["zeroshot"]["total"]["srcc"]})
pd.DataFrame(rows).set_index(["model", "phase"]).round(3) if rows else None

# %% [markdown]
# ## One training question as the model sees it
#
# The question table (`tokenfocus.questions.question_frame`) has one row per image and
# question: the total question, then one per element. Fold 0's training rows are the other
# folds' questions, subsampled to the demo's budget.

# %%
from tokenfocus.data import load_records
from tokenfocus.questions import task_groups
from tokenfocus.train import fold_questions

mcfg = cfg.models[0]
tcfg = mcfg.training_config(cfg.training)
group, tasks = next(iter(task_groups(tcfg.task_mode).items()))
train = load_records(cfg.train_path)
have_folds = present(cfg.folds_path, "src/02_make_folds.py")
if have_folds:
    folds = pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})
    train_q, eval_q = fold_questions(cfg, train, folds, 0, tasks, tcfg)
    display(pd.DataFrame({"train (folds 1-4)": train_q["task"].value_counts(),
                          "held out (fold 0)": eval_q["task"].value_counts()}))
    example = train_q[train_q["task"] == "element"].iloc[0].to_dict()
    display(pd.Series(example).to_frame("one element question"))

# %% [markdown]
# The question text, with all structural fields and with each field dropped at the training
# rate (the final test hides the generator and the prompt type, so training must not rely on
# them):

# %%
from tokenfocus.questions import question_text

if have_folds:
    print(question_text(example, structural=True))
    print("---- with fields dropped at random (rate", tcfg.structural_drop_rate, ")")
    print(question_text(example, structural=True, drop_rate=tcfg.structural_drop_rate,
                        rng=np.random.default_rng(3)))

# %% [markdown]
# The model adapter (`tokenfocus.lvlm`) renders the question with the checkpoint's chat
# template: one user turn with the image, then the question, then the assistant header. The
# image placeholder is expanded to one token per image patch group (16 for the 112 px demo
# images on the tiny Qwen2.5-VL base).

# %%
import torch
import transformers

from tokenfocus.models import load_model_adapter
from tokenfocus.batches import load_image

transformers.utils.logging.disable_progress_bar()
torch.manual_seed(0)
adapters = {m.name: load_model_adapter(cfg, m) for m in cfg.models}
adapter = adapters[mcfg.name]
if have_folds:
    question = question_text(example, structural=True)
    image = load_image(cfg.image_dir, example["img_path"])
    enc = adapter.encode([image], [question])
    ids = enc["input_ids"][0]
    print(adapter.prompt_text(question))
    print(f"---- {len(ids)} tokens after expanding the image placeholder; the last 12:")
    print(adapter.tokenizer.convert_ids_to_tokens(ids[-12:].tolist()))
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(image), ax.axis("off")
    ax.set_title(f"{example['img_path']}\ntarget {example['element_text']!r}: {example['target']:.2f}", fontsize=9)

# %% [markdown]
# ## Label token ids
#
# Resolved from each tokenizer at load; every label must be exactly one token. Real checkpoints
# differ (InternVL2.5's InternLM2 tokenizer numbers its digits differently from Qwen's), which
# is why nothing hard-codes them.

# %%
from tokenfocus.questions import label_logit_table
from tokenfocus.questions import TASK_LABELS

rows = []
for name, ad in adapters.items():
    ids, cols = label_logit_table(ad)
    for task, labels in TASK_LABELS.items():
        for label, col in zip(labels, cols[task].tolist()):
            rows.append({"model": name, "task": task, "label": label, "token id": int(ids[col]),
                         "token": ad.tokenizer.convert_ids_to_tokens(int(ids[col]))})
label_table = pd.DataFrame(rows)
label_table["id (token)"] = label_table["token id"].astype(str) + " (" + label_table["token"] + ")"
label_table.pivot(index=["task", "label"], columns="model", values="id (token)")

# %% [markdown]
# ## The loss on a toy batch
#
# One image's total question and its element questions through the untrained base: the label
# logits at the first answer position, the softmax among them, the expected value, and both
# losses, computed by the same functions the `Trainer` calls.

# %%
from tokenfocus.infer import task_probabilities
from tokenfocus.loss import answer_label_logits
from tokenfocus.questions import question_frame
from tokenfocus.batches import TokenFocusCollator
from tokenfocus.train import token_focus_loss

if have_folds:
    rows = question_frame(train[train["img_path"] == example["img_path"]]).to_dict("records")
    batch = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False)(rows)
    task, target, std = batch.pop("tf_task"), batch.pop("tf_target"), batch.pop("tf_std")
    inputs = adapter.prepare(batch)
    label_ids, label_cols = label_logit_table(adapter)
    with torch.no_grad():
        logits = answer_label_logits(adapter.model, inputs, label_ids)
    probs = task_probabilities(logits, [r["task"] for r in rows], label_cols)
    table = pd.DataFrame({
        "question": [r["element_key"] or "(total)" for r in rows],
        "target (mean vote)": target.numpy(),
        "annotator std": std.numpy(),
        "label probabilities": [np.round(p, 3).tolist() for p in probs],
        "expected value": [float(np.dot(p, [1, 2, 3, 4, 5] if r["task"] == "total" else [0, 1]))
                           for p, r in zip(probs, rows)],
    })
    display(table)
    for kind in ("mse", "soft_ce"):
        loss = token_focus_loss(logits, task, target, std, label_cols, kind)
        print(f"{kind:8s} loss on this batch: {loss.item():.4f}")

# %% [markdown]
# The same numbers from a plain forward, which materialises logits at every position: equal at
# the answer position, at the cost of a $B \times S \times V$ tensor. At the real vocabulary the
# gap is what the memory benchmark measures.

# %%
if have_folds:
    with torch.no_grad():
        full = adapter.model(**inputs).logits
    diff = (full[:, -1, label_ids].float() - logits).abs().max().item()
    print(f"plain forward logits {tuple(full.shape)}; kept: {tuple(logits.shape)}; "
          f"max difference at the answer position {diff:.2e}")
    assert diff < 1e-4

def gib(n_floats: float) -> float:
    return n_floats * 4 / 2**30

B, S, V, K = 8, 1300, 151_936, 5
pd.Series({"full logits B x S x V (float32)": f"{gib(B * S * V):.2f} GiB",
           "answer position B x V": f"{gib(B * V) * 1024:.2f} MiB",
           "label logits B x K": f"{B * K * 4} bytes"}, name=f"B={B}, S={S:,}, V={V:,}").to_frame()

# %% [markdown]
# Soft-label targets (`tokenfocus.loss.soft_label_targets`) for a few means and annotator
# standard deviations: each row's expectation equals its mean.

# %%
from tokenfocus.loss import soft_label_targets

means = torch.tensor([1.0, 2.5, 3.67, 4.33, 5.0])
stds = torch.tensor([0.0, 0.0, 0.94, 0.47, 0.0])
q = soft_label_targets(means, stds, [1, 2, 3, 4, 5])
soft = pd.DataFrame(q.numpy(), columns=[f"q({k})" for k in range(1, 6)])
soft.insert(0, "std", stds.numpy())
soft.insert(0, "mean", means.numpy())
soft["expectation"] = (q * torch.arange(1, 6)).sum(1).numpy()
soft.round(3)

# %% [markdown]
# ## Training outputs
#
# What stage 03 has produced so far: per model, question group and fold, whether the adapter is
# published (`train_done.json`), still in progress (a checkpoint in `.work_fold<k>/`), or not
# started.

# %%
from tokenfocus.experiment import is_trained, model_dir, model_folds

status = []
for m in cfg.models + cfg.ablation_models():
    for grp in task_groups(m.training_config(cfg.training).task_mode):
        for k in model_folds(cfg, m):
            out = model_dir(cfg, m.name, grp, k)
            work = out.parent / f".work_fold{k}"
            ckpts = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if work.is_dir() else []
            state = ("trained" if is_trained(out)
                     else f"in progress or interrupted ({ckpts[-1].name})" if ckpts else "not started")
            status.append({"model": m.name, "group": grp, "fold": k, "status": state, "path": rel(out)})
status = pd.DataFrame(status)
trained = status[status["status"] == "trained"]
print(f"{len(trained)} of {len(status)} fold adapters trained")
if trained.empty:
    print("no fold has finished training yet: run `src/03_train.py` (or `bash run_all.sh`); "
          "the tables and plots below appear once folds are trained")
status

# %%
cards = []
for r in trained.itertuples():
    card = json.loads((model_dir(cfg, r.model, r.group, r.fold) / "train_done.json").read_text())
    cards.append({"model": r.model, "group": r.group, "fold": r.fold,
                  **{k: card.get(k) for k in ("train_questions", "eval_questions", "global_step",
                                              "train_loss", "constant_loss", "train_runtime_s")}})
if cards:
    display(pd.DataFrame(cards).set_index(["model", "group", "fold"]))

# %% [markdown]
# ### Held-out metrics per epoch and per fold
#
# `metrics.jsonl` holds one line per epoch: the held-out fold's SRCC and PLCC (total score),
# ACC (elements) and Final, scored with the one-prefix scorer of stage 04. The last epoch of
# every fold gives the per-fold table, in the shape of the paper's Table 4.

# %%
lines = []
for r in trained.itertuples():
    path = model_dir(cfg, r.model, r.group, r.fold) / "metrics.jsonl"
    if path.is_file():
        lines += [{"model": r.model, "group": r.group, "fold": r.fold, **json.loads(x)}
                  for x in path.read_text().splitlines() if x.strip()]
metrics = pd.DataFrame(lines)
if metrics.empty:
    print("no metrics.jsonl yet (written per epoch while stage 03 trains a fold)")
else:
    cols = [c for c in ("srcc", "plcc", "acc", "final") if c in metrics]
    display(metrics[["model", "group", "fold", "epoch", "step", *cols]])
    last = metrics.sort_values("epoch").groupby(["model", "group", "fold"]).tail(1)
    for (model, group), part in last.groupby(["model", "group"]):
        per_fold = part.set_index("fold")[cols].sort_index()
        per_fold.index = [f"fold {k}" for k in per_fold.index]
        per_fold.loc["mean"] = per_fold.mean()
        per_fold.loc["std"] = per_fold.iloc[:-1].std()
        print(f"{model} ({group}): held-out scores per fold, last epoch")
        display(per_fold.rename(columns=str.upper))

# %%
if not metrics.empty:
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for (model, group, fold), part in metrics.groupby(["model", "group", "fold"]):
            ax.plot(part["epoch"], part[col], marker="o", label=f"{model} f{fold}")
        ax.set_title(col.upper()), ax.set_xlabel("epoch")
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()

# %% [markdown]
# ### Training loss against the constant answer
#
# `train_log.jsonl` beside each adapter holds the loss curve (one line per logging step, with the
# language model's and the vision tower's learning rates). The dashed line is `constant_loss`
# from `train_done.json`: the loss of the best answer that looks at neither the image nor the
# question (each task's mean target). A curve that settles on its line has learnt the means and
# nothing else.

# %%
from tokenfocus.trainlog import TRAIN_LOG, read_train_log

pairs = sorted({(r.model, r.group) for r in trained.itertuples()})
if pairs:
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.2), squeeze=False)
    for ax, (model, group) in zip(axes[0], pairs):
        flat = []
        for r in trained[(trained["model"] == model) & (trained["group"] == group)].itertuples():
            out = model_dir(cfg, r.model, r.group, r.fold)
            curve = read_train_log(out / TRAIN_LOG)
            if not curve.empty:
                ax.plot(curve["step"], curve["loss"], marker=".", label=f"fold {r.fold}")
            card = json.loads((out / "train_done.json").read_text())
            if card.get("constant_loss") is not None:
                flat.append(card["constant_loss"])
        if flat:
            ax.axhline(np.mean(flat), color="k", ls="--", lw=1, label="constant answer")
        ax.set_title(f"{model} ({group})", fontsize=9), ax.set_xlabel("step")
        ax.set_ylabel("training loss" if ax is axes[0][0] else "")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()

# %% [markdown]
# ### Fit check: training images against the held-out fold
#
# After every epoch stage 03 also scores `training.fit_check_images` images the fold trained on
# (`train_*` in `metrics.jsonl`). Both low and close together: the model underfits (it has not
# learnt what it was shown); training far above held-out: it memorises.

# %%
pairs = [c for k in ("srcc", "acc", "final") for c in (k, f"train_{k}") if f"train_{k}" in metrics]
if not metrics.empty and pairs:
    last = metrics.sort_values(["epoch", "step"], kind="stable").groupby(["model", "group", "fold"]).tail(1)
    display(last.set_index(["model", "group", "fold"])[pairs].sort_index().round(4))
else:
    print("no fit check in metrics.jsonl (adapters trained before it existed, or fit_check_images: 0)")

