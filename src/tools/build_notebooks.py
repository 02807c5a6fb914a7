#!/usr/bin/env python
"""Generate the stage walkthrough notebooks (notebooks/NN_*.ipynb) from the cell sources below.

    python src/tools/build_notebooks.py             # (re)write notebooks/*.ipynb, without outputs
    python src/tools/build_notebooks.py --check     # exit 1 when a committed notebook is out of date
    python src/tools/build_notebooks.py --execute   # run them over output/demo/, executed copies
                                                    # in output/demo/notebooks/ (needs the demo run)

The notebooks are written from here so that a change to one is a reviewable diff of Python
strings, and so that the committed files carry no outputs and stable cell ids.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
KERNEL = "python3"


def md(text: str) -> tuple[str, str]:
    return "markdown", textwrap.dedent(text).strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", textwrap.dedent(text).strip("\n")


# Every notebook starts here: find the repository from notebooks/ (or the root), import the
# package from src/, load the demo config, and say plainly when a stage output is missing.
SETUP = code('''
    %matplotlib inline
    import json
    import os
    import sys
    import warnings
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    from IPython.display import Image, display

    # Without ipywidgets tqdm falls back to text bars; its warning about that is noise here.
    warnings.filterwarnings("ignore", message="IProgress not found")
    ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "configs" / "demo.yaml").is_file())
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))

    from tokenfocus.config import load_config

    # The demo by default; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment.
    cfg = load_config(ROOT / os.environ.get("TOKENFOCUS_CONFIG", "configs/demo.yaml"))
    EXP = cfg.exp_dir
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_colwidth", 90)
    pd.set_option("display.width", 160)
    if not cfg.train_path.is_file():
        raise FileNotFoundError(f"{cfg.train_path}: dataset not found; run `bash run_all.sh` first (stage 00 renders the demo)")


    def rel(path) -> Path:
        """A path as shown: relative to the repository when it lies inside it."""
        path = Path(path)
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


    def present(path, written_by: str) -> bool:
        """True when a stage output exists; otherwise print which stage writes it."""
        if Path(path).exists():
            return True
        print(f"not there yet: {rel(path)} (written by {written_by})")
        return False


    print(f"experiment {cfg.name!r}: outputs in {EXP}")
''')


# --------------------------------------------------------------------------------------------
# 01 EDA

EDA = [
    md('''
    # 01 · Exploratory data analysis

    **Stage:** `src/01_eda.py` → `tokenfocus.stages.run_eda` → `tokenfocus.eda.write_report`.
    **Reads:** `input/demo/train_list.json`, `test.json`. **Writes:** `output/demo/eda/` (PNG plots,
    `summary.md`, `summary.json`).

    Each record is one generated image with its text prompt, the prompt's elements (keyed
    `"<text> (<category>)"`) and per-annotator votes: a 1-5 overall alignment rating
    (`total_score`) and a 0/1 "present in the image" vote per element (`element_score`).
    The targets are the means of those votes.

    Why look first: the structure of the data decides the rest of the pipeline.

    * Several images share one prompt, so the folds must be **grouped by prompt** (notebook 02).
    * Elements come in categories (object, attribute, counting, spatial, ...) with very different
      positive rates, so the **category goes into the element question** and into the
      meta-model's features.
    * Generators fail in different places (one miscounts, one ignores spatial relations): the
      **T2I model name** is useful structural information when it is known; the final test hides it.
    * Annotators disagree: their spread bounds what any model can reach (the demo's noise ceiling).

    The demo dataset is a procedurally rendered stand-in for EvalMuse-40K in the same file
    formats, so the numbers below describe the demo, not EvalMuse.
    '''),
    SETUP,
    md('''
    ## The records

    `load_records` accepts both file forms (raw per-annotator lists in `train_list.json`;
    averaged meta fields and null scores in the final-phase `test.json`) and reports what it saw.
    Element keys are kept byte-exact, trailing spaces included, because the submission must
    reproduce them.
    '''),
    code('''
    from tokenfocus.data import element_frame, load_records

    train, report = load_records(cfg.train_path, with_report=True)
    test, test_report = load_records(cfg.test_path, with_report=True)
    print("\\n".join(report.lines() + test_report.lines()))
    train[["img_path", "prompt", "type", "t2i_model", "total_score", "n_annotators", "element_keys"]].head()
    '''),
    code('''
    elements = element_frame(train)
    odd = elements[elements["element_key"] != elements["element_key"].str.strip()]
    print(f"{len(elements):,} elements in {len(train):,} training records; "
          f"{len(odd):,} keys carry leading or trailing spaces"
          + (f", e.g. {odd['element_key'].iloc[0]!r}" if len(odd) else ""))
    print(f"test: {len(test):,} images, T2I model hidden for {test['t2i_model'].isna().sum():,}, "
          f"prompt type hidden for {test['type'].isna().sum():,}")
    elements.head()
    '''),
    md('''
    ## Sample images

    Two prompts, each rendered by four generators: the prompt, each image's mean total score
    and every element with its mean vote (✓ present at ≥ 0.5, ✗ absent). The prompts shown
    are those (with four or more elements) whose images disagree most on the total score.
    '''),
    code('''
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
            ax.set_xlabel("\\n".join(lines), fontsize=8, loc="left")
        for ax in axes[len(recs):]:
            ax.axis("off")
        fig.tight_layout()
    '''),
    md('''
    ## Summary numbers

    From `output/demo/eda/summary.json`, the stage's machine-readable summary.
    '''),
    code('''
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
    '''),
    code('''
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
    '''),
    md('''
    ## Plots written by the stage

    The total-score distribution, the positive rate per generator and full category (where each
    simulated generator is weak), the annotators' spread of the total score, and the category mix
    of train versus test. Every plot of the stage is embedded in `output/demo/eda/summary.md`.
    '''),
    code('''
    for name in ("total_score", "generator_subcategory_heatmap", "annotator_total_spread", "test_categories"):
        path = EXP / "eda" / f"{name}.png"
        if present(path, "src/01_eda.py"):
            display(Image(filename=str(path), width=760))
    '''),
]


# --------------------------------------------------------------------------------------------
# 02 folds

FOLDS = [
    md('''
    # 02 · Prompt-grouped folds

    **Stage:** `src/02_make_folds.py` → `tokenfocus.stages.make_fold_file` →
    `tokenfocus.folds.make_folds`. **Writes:** `output/demo/folds.csv` (one row per labelled
    image: `img_path, prompt_id, fold`) and `fold_counts.csv` (the per-fold table below).

    Five folds from scikit-learn's `StratifiedGroupKFold`: **grouped by the prompt text** (all
    images of a prompt share a fold; the text, not the id, so that a prompt repeated under two ids
    cannot leak) and **stratified on the binned mean total score**, so every fold sees the whole
    score range.

    Why it matters:

    * The images of one prompt share its difficulty and its element list. A prompt split across
      folds lets a model score a held-out image after training on its siblings, and the
      out-of-fold (OOF) numbers come out optimistic. The final test's prompts are all unseen.
    * The **same folds serve every later stage**: stage 03 trains one LoRA adapter per fold on the
      other four, stage 04 scores each held-out fold with its own adapter (the OOF predictions), and
      stage 05 scores its meta-models with nested cross-validation over the same folds. A
      meta-model is therefore never scored on rows whose labels reached it through a base model.
    '''),
    SETUP,
    code('''
    from tokenfocus.data import load_records
    from tokenfocus.folds import check_folds, fold_table, make_folds, score_bins

    train = load_records(cfg.train_path)
    test = load_records(cfg.test_path)
    have_folds = present(cfg.folds_path, "src/02_make_folds.py")
    if have_folds:
        folds = pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})
        display(folds.head())
    '''),
    md('''
    ## Per-fold counts

    Training and held-out images, prompts and elements per fold (the shape of the paper's
    Table 6), as written to `fold_counts.csv`.
    '''),
    code('''
    counts_path = EXP / "fold_counts.csv"
    if present(counts_path, "src/02_make_folds.py"):
        counts = pd.read_csv(counts_path)
        display(counts.set_index("fold"))
    '''),
    md('''
    ## Checks

    No prompt crosses folds, every labelled image has exactly one fold, the file is what the
    config's seed produces, and no test prompt occurs in training.
    '''),
    code('''
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
    '''),
    md('''
    ## Stratification

    The share of each total-score bin per fold (stratified, so the folds are alike and the
    per-fold scores of later stages are comparable) and the generator mix (not stratified; with
    about a hundred prompts per fold it comes out close).
    '''),
    code('''
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
    '''),
]


# --------------------------------------------------------------------------------------------
# 03 train

TRAIN = [
    md(r'''
    # 03 · Token-focus fine-tuning

    **Stage:** `src/03_train.py` → `tokenfocus.stages.run_training`. For every configured model,
    task group (`mixed`: one model answers both question kinds; `separate`: one per kind) and fold:
    LoRA fine-tuning on the questions of the other four folds, the held-out fold scored after every
    epoch. **Writes:** `output/demo/models/<model>/<task>/fold<k>/` (the adapter as safetensors,
    `metrics.jsonl` with the per-epoch held-out SRCC/PLCC/ACC/Final, `train_done.json`), renamed
    into place only when the fold finished; an interrupted run resumes from the last checkpoint in
    `.work_fold<k>/`. Hugging Face `Trainer` runs the loop, `peft` the LoRA. On a CPU, the demo
    trains folds side by side, one single-thread process per core (`jobs: auto` in the config,
    `--jobs` on the command line; `tokenfocus.parallel`): a tiny base keeps one core busy, not two.

    ## The token-focus loss

    Every question ends with a strict answer format, so the **first answer token is the label**:
    `1`..`5` for the overall score, `1` (present) / `0` (absent) for an element. Inputs are
    left-padded, so for every row the last prompt position $t^\ast$ predicts that token. The LM
    head runs at that position only:

    $$z = W_{\text{head}}\, h_{t^\ast} \in \mathbb{R}^{V}.$$

    Only the logits of the $K$ label tokens $\ell_1,\dots,\ell_K$ (ids read from the tokenizer at
    load, never hard-coded) are kept and softmaxed **among themselves**:

    $$p_k = \frac{\exp z_{\ell_k}}{\sum_{j=1}^{K} \exp z_{\ell_j}}, \qquad k = 1,\dots,K.$$

    The prediction is the expected label value, with $v = (1,2,3,4,5)$ for the total and
    $v = (0, 1)$ for an element:

    $$\hat y = \sum_{k=1}^{K} v_k\, p_k .$$

    The loss is the squared error to the **mean human label** $\bar y$ (not rounded to a level).
    A mixed batch puts both question kinds on one 0..1 scale by dividing by the task's range
    $r_\tau$ (4 for the total, 1 for an element):

    $$\mathcal{L}_{\text{MSE}} = \frac{1}{B} \sum_{i=1}^{B} \left(\frac{\hat y_i - \bar y_i}{r_{\tau_i}}\right)^{2}.$$

    (The paper's eq. 2 writes the softmax over the label *probabilities*; the method intends, and
    `tokenfocus.loss.expected_value` computes, the softmax over the label *logits*: the model's
    distribution renormalised to the label tokens.)

    **Soft-label cross-entropy** (`training.loss: soft_ce`) is the alternative: the target is a
    distribution $q$ over the levels, a Gaussian $\mathcal{N}(c, \sigma^2)$ with the annotators'
    standard deviation discretised into the levels' bins, its centre $c$ moved so that
    $\sum_k v_k q_k = \bar y$ exactly (two neighbouring levels share the mass when $\sigma \approx 0$;
    an element's target is simply $(1-\bar y, \bar y)$):

    $$\mathcal{L}_{\text{CE}} = -\frac{1}{B}\sum_{i=1}^{B} \sum_{k=1}^{K} q_{ik} \log p_{ik}.$$

    **Why never materialise sequence × vocabulary logits.** A plain forward computes
    $B \times S \times V$ logits, e.g. 8 × 1,300 × 151,936 for Qwen2.5-VL with one image: 5.9 GiB
    in float32 before the backward pass doubles it, for a loss that reads $B \times K$ of
    those numbers. `answer_label_logits` calls the model with `logits_to_keep=1` (the hidden states
    are sliced before the LM head), so the head's output is $B \times V$ and then $B \times K$.
    `bench/bench_loss_memory.py` measures the difference; the plain full-vocabulary SFT loss
    (`training.loss: sft`) is kept only as the ablation baseline.
    '''),
    SETUP,
    md('''
    ## Settings

    The demo's training settings beside the defaults, which are the paper's Table 2 (LoRA r 64,
    alpha 128; vision lr 1e-5, other lr 1e-4; AdamW (0.9, 0.95); weight decay 0.05; cosine with
    200 warm-up steps; global batch 64; 3 epochs; seed 1234). The demo shrinks them to train tiny
    bases on a CPU in minutes.
    '''),
    code('''
    from dataclasses import asdict

    from tokenfocus.config import TrainingConfig

    keys = ["task_mode", "loss", "structural", "structural_drop_rate", "lora_r", "lora_alpha", "lr", "vision_lr",
            "adam_beta1", "adam_beta2", "weight_decay", "scheduler", "warmup_steps", "global_batch", "epochs",
            "seed", "max_train_questions"]
    columns = {"paper (defaults)": TrainingConfig(), **{m.name: m.training_config(cfg.training) for m in cfg.models}}
    pd.DataFrame({name: {k: str(asdict(t)[k]) for k in keys} for name, t in columns.items()})
    '''),
    md('''
    ## Where the demo's tiny bases come from

    `configs/demo.yaml` fine-tunes two tiny bases (about 1.5M parameters: Qwen2.5-VL and InternVL,
    native classes) that `src/tools/make_tiny_bases.py` built and pre-trained on freshly rendered
    scenes of the demo's grammar, drawn by a generic simulated generator (never the demo's images):
    first the vision tower alone on dense cell targets (what colour, shape and texture covers each
    image token's cell, the background, the style, where each shape's centre lies), then the whole
    model on generic visual questions (is there a star, what colour is the heart, how many squares,
    is the circle left of the star, what is the background, and `Does the image show "<text>"?` for
    whole and partial captions), answered from the drawn scene's truth. Never the fine-tune's
    scoring questions, never an annotator's label. Each base's `card.json` records held-out
    accuracy per question type beside the majority rate, and the VQAScore zero-shot reading
    (AUC per element kind, SRCC of the total) after each phase.
    '''),
    code('''
    import json

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
    '''),
    md('''
    ## One training question as the model sees it

    The question table (`tokenfocus.questions.build_questions`) has one row per image and
    question: the total question, then one per element. Fold 0's training rows are the other
    folds' questions, subsampled to the demo's budget.
    '''),
    code('''
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
    '''),
    md('''
    The question text, with all structural fields and with each field dropped at the training
    rate (the final test hides the generator and the prompt type, so training must not rely on
    them):
    '''),
    code('''
    from tokenfocus.questions import question_text

    if have_folds:
        print(question_text(example, structural=True))
        print("---- with fields dropped at random (rate", tcfg.structural_drop_rate, ")")
        print(question_text(example, structural=True, drop_rate=tcfg.structural_drop_rate,
                            rng=np.random.default_rng(3)))
    '''),
    md('''
    The model adapter (`tokenfocus.lvlm`) renders the question with the checkpoint's chat
    template: one user turn with the image, then the question, then the assistant header. The
    image placeholder is expanded to one token per image patch group (16 for the 112 px demo
    images on the tiny Qwen2.5-VL base).
    '''),
    code('''
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
        ax.set_title(f"{example['img_path']}\\ntarget {example['element_text']!r}: {example['target']:.2f}", fontsize=9)
    '''),
    md('''
    ## Label token ids

    Resolved from each tokenizer at load; every label must be exactly one token. Real checkpoints
    differ (InternVL2.5's InternLM2 tokenizer numbers its digits differently from Qwen's), which
    is why nothing hard-codes them.
    '''),
    code('''
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
    '''),
    md('''
    ## The loss on a toy batch

    One image's total question and its element questions through the untrained base: the label
    logits at the first answer position, the softmax among them, the expected value, and both
    losses, computed by the same functions the `Trainer` calls.
    '''),
    code('''
    from tokenfocus.infer import task_probabilities
    from tokenfocus.loss import answer_label_logits
    from tokenfocus.questions import build_questions
    from tokenfocus.batches import TokenFocusCollator
    from tokenfocus.train import token_focus_loss

    if have_folds:
        rows = build_questions(train[train["img_path"] == example["img_path"]]).to_dict("records")
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
    '''),
    md('''
    The same numbers from a plain forward, which materialises logits at every position: equal at
    the answer position, at the cost of a $B \\times S \\times V$ tensor. At the real vocabulary the
    gap is what the memory benchmark measures.
    '''),
    code('''
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
    '''),
    md('''
    Soft-label targets (`tokenfocus.loss.soft_label_targets`) for a few means and annotator
    standard deviations: each row's expectation equals its mean.
    '''),
    code('''
    from tokenfocus.loss import soft_label_targets

    means = torch.tensor([1.0, 2.5, 3.67, 4.33, 5.0])
    stds = torch.tensor([0.0, 0.0, 0.94, 0.47, 0.0])
    q = soft_label_targets(means, stds, [1, 2, 3, 4, 5])
    soft = pd.DataFrame(q.numpy(), columns=[f"q({k})" for k in range(1, 6)])
    soft.insert(0, "std", stds.numpy())
    soft.insert(0, "mean", means.numpy())
    soft["expectation"] = (q * torch.arange(1, 6)).sum(1).numpy()
    soft.round(3)
    '''),
    md('''
    ## Training outputs

    What stage 03 has produced so far: per model, task group and fold, whether the adapter is
    published (`train_done.json`), still in progress (a checkpoint in `.work_fold<k>/`), or not
    started.
    '''),
    code('''
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
                status.append({"model": m.name, "task": grp, "fold": k, "status": state, "path": rel(out)})
    status = pd.DataFrame(status)
    trained = status[status["status"] == "trained"]
    print(f"{len(trained)} of {len(status)} fold adapters trained")
    if trained.empty:
        print("no fold has finished training yet: run `src/03_train.py` (or `bash run_all.sh`); "
              "the tables and plots below appear once folds are trained")
    status
    '''),
    code('''
    cards = []
    for r in trained.itertuples():
        card = json.loads((model_dir(cfg, r.model, r.task, r.fold) / "train_done.json").read_text())
        cards.append({"model": r.model, "task": r.task, "fold": r.fold,
                      **{k: card.get(k) for k in ("train_questions", "eval_questions", "global_step",
                                                  "train_loss", "train_runtime_s")}})
    if cards:
        display(pd.DataFrame(cards).set_index(["model", "task", "fold"]))
    '''),
    md('''
    ### Held-out metrics per epoch and per fold

    `metrics.jsonl` holds one line per epoch: the held-out fold's SRCC and PLCC (total score),
    ACC (elements) and Final, scored with the one-prefix scorer of stage 04. The last epoch of
    every fold gives the per-fold table, in the shape of the paper's Table 4.
    '''),
    code('''
    lines = []
    for r in trained.itertuples():
        path = model_dir(cfg, r.model, r.task, r.fold) / "metrics.jsonl"
        if path.is_file():
            lines += [{"model": r.model, "task": r.task, "fold": r.fold, **json.loads(x)}
                      for x in path.read_text().splitlines() if x.strip()]
    metrics = pd.DataFrame(lines)
    if metrics.empty:
        print("no metrics.jsonl yet (written per epoch while stage 03 trains a fold)")
    else:
        cols = [c for c in ("srcc", "plcc", "acc", "final") if c in metrics]
        display(metrics[["model", "task", "fold", "epoch", "step", *cols]])
        last = metrics.sort_values("epoch").groupby(["model", "task", "fold"]).tail(1)
        for (model, task), part in last.groupby(["model", "task"]):
            per_fold = part.set_index("fold")[cols].sort_index()
            per_fold.index = [f"fold {k}" for k in per_fold.index]
            per_fold.loc["mean"] = per_fold.mean()
            per_fold.loc["std"] = per_fold.iloc[:-1].std()
            print(f"{model} ({task}): held-out scores per fold, last epoch")
            display(per_fold.rename(columns=str.upper))
    '''),
    code('''
    if not metrics.empty:
        fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3.2), squeeze=False)
        for ax, col in zip(axes[0], cols):
            for (model, task, fold), part in metrics.groupby(["model", "task", "fold"]):
                ax.plot(part["epoch"], part[col], marker="o", label=f"{model} f{fold}")
            ax.set_title(col.upper()), ax.set_xlabel("epoch")
        axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
        fig.tight_layout()
    '''),
]


# --------------------------------------------------------------------------------------------
# 04 infer

INFER = [
    md('''
    # 04 · Out-of-fold and test predictions

    **Stage:** `src/04_infer.py` → `tokenfocus.stages.run_inference`. Every fold adapter scores
    its held-out fold (the **out-of-fold**, OOF, predictions: every training image is predicted
    once, by the one model that did not see it) and the whole test set. Beside the fine-tuned
    models: the prompt-only **prior** baseline and every untuned base **zero-shot**, VQAScore's
    recipe: P(Yes) / (P(Yes) + P(No)) to `Does the image show "<element text>"?` per element, and
    1 + 4 P(Yes) to the same question about the whole prompt for the total. With `jobs`, folds
    are scored side by side like stage 03 trains them.

    **Writes:** `output/demo/preds/<model>/<task>/{oof,test}_fold<k>.parquet`, the dumps that stage
    05 reads, one row per question:
    `img_path, prompt_id, prompt, fold, model, task, element_key` (byte-exact, `''` for the
    total), `category, target` (NaN on test), `pred` (the expected value) and `p_<label>` for every
    label; `oof_scores.csv` (per-fold and pooled OOF SRCC, PLCC, ACC, Final per model),
    `bagged/<model>.parquet` (fold-averaged test predictions) and, when the config asks for
    ablations, `ablation.csv`. Each dump is checked to cover exactly its questions before it is
    written, atomically.

    **One-prefix scoring.** The usual scorer runs one full forward per (image, question), so the
    vision tower and the image tokens are recomputed for every element of a prompt. Here each
    image's prefix (system turn, image block and the question text all its questions share) runs
    once with a KV cache, then all of its questions' remaining tokens run in one batched pass over
    that cache, reading only the first-answer-token logits (`tokenfocus.fastscore`). Same tokens,
    same positions, same probabilities.
    '''),
    SETUP,
    code('''
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
    '''),
    md('''
    ## A dump

    The head of one OOF dump (a fine-tuned model's when there is one), then the contract check
    stage 05 runs on load: all dumps of a task cover the same questions, each OOF dump exactly its
    fold's images.
    '''),
    code('''
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
    '''),
    md('''
    ## OOF scores per model

    From `oof_scores.csv` (written by stage 04); when the stage has not written it yet, computed
    here from the dumps present with the same function, `tokenfocus.infer.oof_scores`.
    '''),
    code('''
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
    '''),
    code('''
    if not scores.empty:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(pooled) + 1.2))
        pooled["final"].sort_values().plot.barh(ax=ax, color="#4C72B0")
        ax.set_xlabel("pooled OOF Final"), ax.set_xlim(0, 1), ax.set_title("Out-of-fold Final per model")
        for y, v in enumerate(pooled["final"].sort_values()):
            ax.text(v + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
        fig.tight_layout()
    '''),
    md('''
    ## Zero-shot versus fine-tuned

    The same tiny base, untuned (VQAScore's yes/no caption question) and fine-tuned with the
    token-focus loss on the other folds: the gap is what the fine-tuning adds, the scoring format
    and the annotators' judgement.
    '''),
    code('''
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
    '''),
    md('''
    How much a fine-tune can add depends on how far the literal truth of a scene is from what the
    annotators say. Stage 00 scores that truth alone on the test split (`scene_truth` in
    `noise_ceiling.json`): the demo's annotators judge holistically (defects, clutter and style
    move their totals; near-miss colours pass, small or low-contrast objects are missed), so the
    truth lands well below the noise ceiling, and that gap is what the labels can teach.
    '''),
    code('''
    from tokenfocus.demo.build import REFERENCES

    ceiling_path = cfg.noise_ceiling_path
    if ceiling_path is not None and ceiling_path.is_file():
        stored = json.loads(ceiling_path.read_text())
        refs = {name: stored[key] for name, key in REFERENCES if key in stored}
        display(pd.DataFrame(refs).T.rename(columns=str.upper))
    else:
        print("no noise_ceiling.json: real data has no known truth to compare with")
    '''),
    md('''
    ## Ablation

    The config's training variants (loss, structural information) of one model on the OOF
    predictions of the ablation folds, beside the untuned base: `ablation.csv`.
    '''),
    code('''
    ablation_path = EXP / "ablation.csv"
    if cfg.ablation is None:
        print(f"{cfg.source} asks for no ablation (no 'ablation:' section), so there is no ablation.csv")
    elif present(ablation_path, "src/04_infer.py"):
        display(pd.read_csv(ablation_path).set_index("variant"))
    '''),
    code('''
    bagged = sorted((EXP / "bagged").glob("*.parquet"))
    if bagged:
        print("fold-averaged test predictions:", ", ".join(p.name for p in bagged))
        display(pd.read_parquet(bagged[0]).head(3))
    else:
        present(EXP / "bagged", "src/04_infer.py")
    '''),
    md('''
    ## Fast versus naive scoring

    Two test images with all their questions, scored by the one-prefix path and by one full
    forward per question. The probabilities must agree to 1e-4 (`tests/test_fastscore.py` checks
    the same on both tiny bases; `bench/bench_fast_scoring.py` measures the speed-up at a
    realistic image-token count, which these 16-token demo images do not have).
    '''),
    code('''
    import time

    import torch
    import transformers

    from tokenfocus.data import load_records
    from tokenfocus.fastscore import naive_label_logits, prefix_label_logits
    from tokenfocus.infer import task_probabilities
    from tokenfocus.questions import label_logit_table
    from tokenfocus.models import load_model_adapter, load_trained
    from tokenfocus.questions import build_questions, question_text
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

    q = build_questions(load_records(cfg.test_path))
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
    '''),
    code('''
    rs = per_image[0]
    probs = task_probabilities(fast[0], [r["task"] for r in rs], label_cols)
    pd.DataFrame({"question": [r["element_key"] or "(total)" for r in rs],
                  "probabilities": [np.round(p, 3).tolist() for p in probs],
                  "pred": [float(np.dot(p, [1, 2, 3, 4, 5] if r["task"] == "total" else [0, 1]))
                           for p, r in zip(probs, rs)]})
    '''),
]


# --------------------------------------------------------------------------------------------
# 05 ensemble

ENSEMBLE = [
    md('''
    # 05 · Bagging, stacking, blending and the submission

    **Stage:** `src/05_ensemble.py` → `tokenfocus.ensemble.stage.run_ensemble`. **Reads:** every dump
    under `output/demo/preds/`. **Writes:** `leaderboard.csv`, `ensemble/` (plots, per-method
    predictions, `ensemble.json`) and `submission/submission.zip` (the best method by OOF Final).

    * **Bagging:** a base model's test prediction is the mean of its five fold models.
    * **Stacking:** XGBoost and LightGBM meta-models on the base models' OOF predictions, one for
      the total score and one for the elements, with and without the **statistic features**
      (element category, number of elements, prompt length, the element's position in the prompt,
      the prompt-evaluation fields, and group statistics of each base model's prediction among the
      images of the same prompt). Scored by **nested cross-validation** over the same prompt-grouped
      folds: the meta-model is never scored on a fold it saw.
    * **Blending:** non-negative weights over base and meta predictions with an intercept, fitted
      on OOF; for the total this is also its linear calibration, which keeps the predicted total
      linear in 1-5 (the official PLCC fits a logistic from ground truth to predictions, so a
      warped prediction loses points). The element threshold is fitted on OOF too.
    * **Metadata-only:** the statistic features alone, the floor that says how much the LVLMs add.

    On the demo, `eval.json` holds the hidden test truth, so every row also has test scores, and
    the **noise ceiling** (a predictor that knows the true scene, limited only by annotator noise)
    says how far any method could go.
    '''),
    SETUP,
    code('''
    lb_path = EXP / "leaderboard.csv"
    lb = pd.read_csv(lb_path) if present(lb_path, "src/05_ensemble.py") else None
    info_path = EXP / "ensemble" / "ensemble.json"
    info = json.loads(info_path.read_text()) if present(info_path, "src/05_ensemble.py") else {}
    if lb is not None:
        display(lb.drop(columns="note").set_index("method"))
        print("best method by OOF Final:", info.get("best_method"))
        if set(info.get("base_models", [])) <= {"prior"}:
            print("only the prior baseline has dumps so far: the LVLM rows appear once stages 03 and 04 have run")
    '''),
    md('''
    ## Where the methods stand

    The best method, the best single base model and the metadata-only model on OOF and test, and
    the gap to the noise ceiling.
    '''),
    code('''
    if lb is not None:
        scored = lb[lb["kind"] != "ceiling"].set_index("method")
        base = scored[scored["kind"] == "base"].sort_values("oof_Final", ascending=False)
        picks = {"best method": info.get("best_method"),
                 "best single model": base.index[0] if len(base) else None,
                 "metadata-only": "metadata-only" if "metadata-only" in scored.index else None}
        cols = [c for c in ("oof_Final", "test_Final") if c in lb]
        view = pd.DataFrame({label: scored.loc[name, cols] for label, name in picks.items() if name}).T
        view.insert(0, "method", [picks[k] for k in view.index])
        ceiling = lb.loc[lb["kind"] == "ceiling", "test_Final"]
        if len(ceiling) and "test_Final" in view:
            view["gap to noise ceiling (test)"] = float(ceiling.iloc[0]) - view["test_Final"].astype(float)
        display(view)
        if picks["best single model"] and picks["metadata-only"]:
            for split in ("oof", "test"):
                col = f"{split}_Final"
                if col in scored:
                    s = scored[col]
                    stack = s[scored["kind"] == "stacking+features"].max()
                    print(f"{split}: stacking+features {stack:.4f} | best single {s[picks['best single model']]:.4f} "
                          f"| metadata-only {s['metadata-only']:.4f}")
    '''),
    md('''
    ## Plots written by the stage

    The leaderboard (OOF and test Final, the noise ceiling as a dashed line), predicted versus true
    total score of the best method, and element accuracy per category.
    '''),
    code('''
    for name in ("leaderboard", "pred_vs_true", "category_accuracy"):
        path = EXP / "ensemble" / f"{name}.png"
        if present(path, "src/05_ensemble.py"):
            display(Image(filename=str(path), width=820))
    '''),
    md('''
    ## Blend weights

    From `ensemble.json`: the non-negative weight of every candidate (base model predictions
    `pred__<model>` and the stacking meta-models), the intercept, and the element threshold.
    '''),
    code('''
    if info:
        print("base models:", info["base_models"], "| baselines:", info["baselines"])
        print("structural features used:", info["structural_features"] or "none",
              f"(mode {info['structural_mode']!r}; the test hides the T2I model and the prompt type)")
        print("record features:", ", ".join(info["record_features"]))
        weights = pd.DataFrame({task: pd.Series(b["weights"], index=b["candidates"])
                                for task, b in info["blend"].items()})
        extra = pd.DataFrame({task: {"intercept": b["intercept"], "threshold": b["threshold"]}
                              for task, b in info["blend"].items()})
        display(pd.concat([weights, extra]).round(4))
    '''),
    md('''
    ## The statistic features

    What the meta-models see besides the base predictions, for the first test questions
    (`tokenfocus.features.question_features`; no feature reads a label).
    '''),
    code('''
    from tokenfocus.data import load_records
    from tokenfocus.features import question_features

    test = load_records(cfg.test_path)
    question_features(test).drop(columns=["prompt"]).head(6)
    '''),
    md('''
    ## The submission

    `submission.zip` holds `output.json` (one record per test image, element keys copied
    byte-exact from `test.json`) and the challenge's `readme.txt`. It is validated before it is
    written; here it is read back, validated again against `test.json`, and scored against the
    demo's hidden truth by the same function as `src/06_evaluate.py`.
    '''),
    code('''
    import zipfile

    from tokenfocus.metrics import evaluate_files, format_table
    from tokenfocus.submission import load_json_records, load_submission, validate_submission

    sub_path = EXP / "submission" / "submission.zip"
    if present(sub_path, "src/05_ensemble.py"):
        with zipfile.ZipFile(sub_path) as z:
            print("submission.zip:", z.namelist())
            print(z.read("readme.txt").decode())
        records = load_submission(sub_path)
        validate_submission(records, load_json_records(cfg.test_path))
        print(f"valid: {len(records)} records, {sum(len(r['element_score']) for r in records):,} element scores")
        print(json.dumps(records[0], indent=1, ensure_ascii=False)[:600])
    '''),
    code('''
    if sub_path.is_file() and cfg.eval_path is not None and cfg.eval_path.is_file():
        result = evaluate_files(cfg.eval_path, sub_path)
        print(format_table(result))
        if lb is not None and info.get("best_method") in set(lb["method"]) and "test_Final" in lb:
            row = lb.set_index("method").loc[info["best_method"]]
            print(f"leaderboard test Final of {info['best_method']!r}: {row['test_Final']:.4f}")
    elif sub_path.is_file():
        print("no truth file for this dataset: the submission is scored by the challenge server")
    '''),
]


NOTEBOOKS = {
    "01_eda": EDA,
    "02_folds": FOLDS,
    "03_train": TRAIN,
    "04_infer": INFER,
    "05_ensemble": ENSEMBLE,
}


def build(name: str) -> nbformat.NotebookNode:
    """One notebook, without outputs, with stable cell ids."""
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"name": KERNEL, "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(NOTEBOOKS[name]):
        cell = new_markdown_cell(source) if kind == "markdown" else new_code_cell(source)
        cell.id = f"{name}-{i:02d}"  # random ids would change every build
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def write_all(dest: Path = NOTEBOOK_DIR) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NOTEBOOKS:
        path = dest / f"{name}.ipynb"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


def stale(dest: Path = NOTEBOOK_DIR) -> list[str]:
    """Notebooks whose file differs from what this script generates (or that are missing)."""
    out = []
    for name in NOTEBOOKS:
        path = dest / f"{name}.ipynb"
        if not path.is_file() or path.read_text(encoding="utf-8") != render(name):
            out.append(str(path))
    return out


def execute(path: Path, timeout: int = 300) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook with nbclient in its own folder; raises CellExecutionError on the first
    failing cell. Returns the executed notebook and the wall time in seconds."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 when a notebook differs from its source here")
    p.add_argument("--execute", action="store_true", help="run every notebook and save executed copies")
    p.add_argument("--out", default=str(REPO / "output" / "demo" / "notebooks"),
                   help="folder for the executed copies (default: output/demo/notebooks)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per cell when executing")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for path in bad:
            print(f"out of date: {path} (run python src/tools/build_notebooks.py)")
        return 1 if bad else 0
    if args.execute:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in NOTEBOOKS:
            nb, seconds = execute(NOTEBOOK_DIR / f"{name}.ipynb", args.timeout)
            nbformat.write(nb, out / f"{name}.ipynb")
            print(f"{name}: {seconds:.1f} s -> {out / f'{name}.ipynb'}")
        return 0
    for path in write_all():
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
