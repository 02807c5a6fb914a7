"""Label-token probabilities for question tables: the scorer behind evaluation and the dumps."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .batches import TokenFocusCollator, load_image
from .dumps import dump_path, write_dump
from .experiment import is_trained, load_folds, load_split, model_dir, model_folds
from .fastscore import unsupported_reason
from .loss import answer_label_logits
from .metrics import score_frame
from .models import load_model_adapter, load_trained
from .packed import packed_image_logits
from .parallel import in_worker
from .questions import (ELEMENT, PAPER_LABELS, TOTAL, ZEROSHOT_LABELS, LabelSet, question_frame,
                        label_logit_table, task_groups, zeroshot_question)

log = logging.getLogger("tokenfocus")
def task_probabilities(label_logits: torch.Tensor, tasks: list[str], cols: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Per row: the softmax over its own task's label logits (float64 numpy); 0 for a label
    without a token."""
    out = []
    lg = label_logits.detach().float().cpu()
    for i, t in enumerate(tasks):
        c = cols[t]
        p = torch.zeros(len(c), dtype=torch.float64)
        p[c >= 0] = torch.softmax(lg[i, c[c >= 0]], dim=-1).double()
        out.append(p.numpy())
    return out


def attach_predictions(questions: pd.DataFrame, probs: list[np.ndarray],
                       label_set: LabelSet = PAPER_LABELS) -> pd.DataFrame:
    """Add a p_<level> column per level of either task (named by the level's value,
    ``questions.level_name``; NaN where a level is not the row's task's) and the expected
    value ``pred``."""
    df = questions.reset_index(drop=True).copy()
    labels = sorted(set(label_set.names(TOTAL)) | set(label_set.names(ELEMENT)), key=float)
    mat = np.full((len(df), len(labels)), np.nan)
    pred = np.empty(len(df))
    for i, (t, p) in enumerate(zip(df["task"], probs)):
        idx = [labels.index(lab) for lab in label_set.names(t)]
        mat[i, idx] = p
        pred[i] = float(np.dot(p, label_set.values[t]))
    for j, lab in enumerate(labels):
        df[f"p_{lab}"] = mat[:, j]
    df["pred"] = pred
    return df


@torch.no_grad()
def predict_questions(adapter, model, questions: pd.DataFrame, image_dir: Path, batch_size: int,
                      collator, progress: bool = True, desc: str = "score") -> pd.DataFrame:
    """One forward per question (batched), logits at the first answer position only, read at
    the collator's label set."""
    ids, cols = label_logit_table(adapter, collator.label_set.tokens)
    was_training = model.training
    model.eval()
    rows = questions.to_dict("records")
    probs: list[np.ndarray] = []
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    bar = tqdm(total=len(rows), desc=desc, unit="q", disable=not progress or in_worker(), leave=False)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        batch = collator(chunk)
        for k in ("tf_task", "tf_target", "tf_std", "tf_weight", "labels"):
            batch.pop(k, None)
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        logits = answer_label_logits(model, batch, ids.to(device))
        probs += task_probabilities(logits, [r["task"] for r in chunk], cols)
        bar.update(len(chunk))
        bar.set_postfix(q_per_s=f"{len(probs) / (time.perf_counter() - t0):.1f}")
    bar.close()
    if was_training:
        model.train()
    return attach_predictions(questions, probs, collator.label_set)


def score_predictions(pred: pd.DataFrame) -> dict:
    """SRCC / PLCC / ACC / Final of a scored question table with targets."""

    tot = pred[pred["task"] == TOTAL]
    el = pred[pred["task"] == ELEMENT]
    return score_frame(tot[["img_path", "target", "pred"]] if len(tot) else None,
                       el[["img_path", "element_key", "target", "pred"]] if len(el) else None)


def evaluate_questions(adapter, model, questions: pd.DataFrame, image_dir: Path, batch_size: int,
                       collator) -> dict:
    pred = predict_questions_fast(adapter, model, questions, image_dir, batch_size, collator, desc="held-out")
    return {k: v for k, v in score_predictions(pred).items() if isinstance(v, (int, float))}


@torch.no_grad()
def predict_questions_fast(adapter, model, questions: pd.DataFrame, image_dir: Path, batch_size: int,
                           collator, progress: bool = True, desc: str = "score",
                           prefix_batch: int = 1) -> pd.DataFrame:
    """``predict_questions`` with one packed forward per image (``tokenfocus.packed``).

    Each image and the question text its rows share run once, every question's own tokens as
    a segment that sees only the prefix (and its stem) and itself. Same questions
    (``collator``'s eval questions), same output, rows in the input order. Models the fast
    path cannot serve (e.g. remote-code checkpoints) are scored by ``predict_questions``
    (``batch_size`` questions a forward).
    """

    reason = unsupported_reason(adapter, model)
    if reason is not None:
        log.warning("one-prefix scoring unavailable (%s); scoring one forward per question", reason)
        return predict_questions(adapter, model, questions, image_dir, batch_size, collator, progress, desc)
    if getattr(collator, "train", False):
        raise ValueError("predict_questions_fast needs an evaluation collator (train=False)")
    ids, cols = label_logit_table(adapter, collator.label_set.tokens)
    was_training = model.training
    model.eval()
    rows = questions.reset_index(drop=True).to_dict("records")
    by_image: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(r["img_path"], []).append(i)
    paths = list(by_image)
    probs: list[np.ndarray | None] = [None] * len(rows)
    t0 = time.perf_counter()
    bar = tqdm(total=len(rows), desc=desc, unit="q", disable=not progress or in_worker(), leave=False)
    done = 0
    for s in range(0, len(paths), prefix_batch):
        group = paths[s:s + prefix_batch]
        images = [load_image(image_dir, p) for p in group]
        texts = [[collator.question(rows[i]) for i in by_image[p]] for p in group]
        # One packed forward per image (prefix, stems and every question's tokens): 4.9x the
        # naive pairs/s on bench_fast_scoring, against 3.45x for the cached prefix + suffix pass.
        logits = packed_image_logits(adapter, images, texts, ids, model=model, image_batch=prefix_batch)
        for p, lg in zip(group, logits):
            idx = by_image[p]
            for i, pr in zip(idx, task_probabilities(lg, [rows[i]["task"] for i in idx], cols)):
                probs[i] = pr
            done += len(idx)
        bar.update(sum(len(by_image[p]) for p in group))
        bar.set_postfix(q_per_s=f"{done / (time.perf_counter() - t0):.1f}")
    bar.close()
    if was_training:
        model.train()
    return attach_predictions(questions, probs, collator.label_set)


def _dumps_done(preds_dir: Path, model: str, tasks, fold: int) -> bool:

    return all(dump_path(preds_dir, model, t, s, fold).is_file() for t in tasks for s in ("oof", "test"))


def model_dumps_done(cfg, name: str, folds) -> bool:
    """Whether dump ``name`` (a fine-tuned model, or a zero-shot base) has both tasks' OOF and
    test dumps for every fold in ``folds``."""
    return all(_dumps_done(cfg.exp_dir / "preds", name, (TOTAL, ELEMENT), k) for k in folds)


def write_fold_dumps(preds_dir: Path, model: str, fold: int, scored: dict[str, pd.DataFrame],
                     expected: dict[str, pd.DataFrame], kind: str) -> None:
    """Split scored question tables by task and write one checked dump per (task, split);
    ``kind`` is the model's kind (``dumps.MODEL_KINDS``)."""

    for split, df in scored.items():
        for task, part in df.groupby("task"):
            out = part.assign(fold=fold, model=model, kind=kind)
            if split == "test":
                out["target"] = np.nan
            exp = expected[split]
            write_dump(out, dump_path(preds_dir, model, task, split, fold),
                       exp[exp["task"] == task], task)


def infer_model(cfg, mcfg, force: bool = False, fold: int | None = None) -> list[str]:
    """OOF and test dumps of every fold (or only ``fold``) of one fine-tuned model; returns what
    was written."""

    tcfg = mcfg.training_config(cfg.training)
    train = load_split(cfg, "train").merge(load_folds(cfg)[["img_path", "fold"]], on="img_path")
    test = load_split(cfg, "test")
    q_train, q_test = question_frame(train), question_frame(test)
    q_train = q_train.merge(train[["img_path", "fold"]], on="img_path")
    preds_dir = cfg.exp_dir / "preds"
    kind = "ablation" if mcfg.name in {m.name for m in cfg.ablation_models()} else "base"
    written = []
    for group, tasks in task_groups(tcfg.task_mode).items():
        for k in model_folds(cfg, mcfg):
            if (fold is not None and k != fold) or (not force and _dumps_done(preds_dir, mcfg.name, tasks, k)):
                continue
            adir = model_dir(cfg, mcfg.name, group, k)
            if not is_trained(adir):
                raise FileNotFoundError(f"{adir}: no trained adapter (run stage 03 for {mcfg.name}/{group}/fold{k})")
            adapter, model = load_trained(cfg, mcfg, adir)
            collator = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False)
            expected = {"oof": q_train[(q_train["fold"] == k) & q_train["task"].isin(tasks)].drop(columns="fold"),
                        "test": q_test[q_test["task"].isin(tasks)]}
            scored = {s: predict_questions_fast(adapter, model, q, cfg.image_dir, tcfg.eval_batch, collator,
                                                desc=f"{mcfg.name} fold{k} {s}") for s, q in expected.items()}
            write_fold_dumps(preds_dir, mcfg.name, k, scored, expected, kind)
            written.append(f"{mcfg.name}/{group}/fold{k}")
    return written


def zeroshot_model(cfg, mcfg, force: bool = False) -> list[str]:
    """The untuned base as a baseline, VQAScore's recipe: P(Yes) / (P(Yes) + P(No)) to
    ``Does the image show "<element text>"?`` per element, 1 + 4 P(Yes) to the same question
    about the whole prompt for the total; the same predictions serve as every fold's OOF and
    test dump."""

    name = f"zeroshot_{mcfg.name}"
    preds_dir = cfg.exp_dir / "preds"
    folds = range(cfg.folds.n_folds)
    if not force and model_dumps_done(cfg, name, folds):
        return []
    tcfg = mcfg.training_config(cfg.training)
    train = load_split(cfg, "train").merge(load_folds(cfg)[["img_path", "fold"]], on="img_path")
    q_train = question_frame(train).merge(train[["img_path", "fold"]], on="img_path")
    q_test = question_frame(load_split(cfg, "test"))
    adapter = load_model_adapter(cfg, mcfg)
    collator = TokenFocusCollator(adapter, cfg.image_dir, tcfg, train=False, question_fn=zeroshot_question,
                                  label_set=ZEROSHOT_LABELS)
    scored = {s: predict_questions_fast(adapter, adapter.model, q, cfg.image_dir, tcfg.eval_batch, collator,
                                        desc=f"{name} {s}")
              for s, q in (("oof", q_train), ("test", q_test))}
    for k in folds:
        in_fold = scored["oof"]["fold"] == k
        write_fold_dumps(preds_dir, name, k, {"oof": scored["oof"][in_fold], "test": scored["test"]},
                         {"oof": q_train[q_train["fold"] == k], "test": q_test}, "baseline")
    return [f"{name}/fold{k}" for k in folds]


def read_model_dumps(preds_dir: Path, model: str, split: str) -> pd.DataFrame:
    files = sorted(Path(preds_dir, model).glob(f"*/{split}_fold*.parquet"))
    if not files:
        raise FileNotFoundError(f"{Path(preds_dir, model)}: no {split} dumps")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def oof_scores(preds_dir: Path, models: list[str]) -> pd.DataFrame:
    """Per-fold and pooled out-of-fold SRCC, PLCC, ACC, Final of each model."""
    rows = []
    for m in models:
        oof = read_model_dumps(preds_dir, m, "oof")
        for fold, part in [*oof.groupby("fold"), ("pooled", oof)]:
            r = score_predictions(part)
            rows.append({"model": m, "fold": fold, **{k: r[k] for k in ("srcc", "plcc", "acc", "final")},
                         "n_images": r["n_images"], "n_elements": r["n_elements"]})
    return pd.DataFrame(rows)


def bag_test(preds_dir: Path, model: str) -> pd.DataFrame:
    """Fold-averaged test predictions (probabilities and expected value) of one model."""
    test = read_model_dumps(preds_dir, model, "test")
    value_cols = ["pred"] + [c for c in test.columns if c.startswith("p_")]
    keys = ["img_path", "prompt_id", "prompt", "model", "task", "element_key", "category"]
    out = test.groupby(keys, sort=False, dropna=False)[value_cols].mean().reset_index()
    out["n_folds"] = test.groupby(keys, sort=False, dropna=False)["fold"].nunique().to_numpy()
    return out
