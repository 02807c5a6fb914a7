"""Pseudo-labels (iMatch): test inputs labelled by another model's test predictions.

A model with ``training.pseudo_labels: <source>`` trains a second round: each fold's training
questions plus every test question, whose target is the source model's predicted value (the
expected level of its total, the probability of "1" of an element) and whose loss counts
``pseudo_weight`` times a labelled question's. No test label is read: the targets come from the
source's test dumps (stage 04's files), the questions from the test split's inputs.

Which of the source's fold models label fold k's extra questions (``pseudo_folds``):

* ``unseen`` (default): only the source's fold-k model, the one that never saw fold k's labels,
  so the second round's fold-k model does not learn fold k's labels through its pseudo-labels and
  its OOF predictions stay honest for the stack;
* ``all``: the mean over every fold model of the source (the fold-bagged test predictions):
  better pseudo-labels, but fold k's labels then reach fold k's OOF predictions through them.

A question's confidence (0..1) decides whether it is kept (``pseudo_threshold``): for an element
``|2 p - 1|``; for a total ``1 - sd / 2``, with ``sd`` the standard deviation of the predicted
distribution over the levels (2 is the most a distribution on 1-5 can have).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .config import Config, TrainingConfig
from .dumps import check_dump, dump_path, level_value, prob_columns, read_dump
from .errors import InputError
from .experiment import load_split, model_dir, model_folds
from .questions import ELEMENT, TOTAL, question_frame, task_groups

log = logging.getLogger("tokenfocus")

KEYS = ["img_path", "task", "element_key"]


def source_folds(cfg: Config, tcfg: TrainingConfig, fold: int) -> list[int]:
    """The folds of the source model whose test predictions label fold ``fold``'s extra questions."""
    if tcfg.pseudo_folds == "unseen":
        return [fold]
    return model_folds(cfg, cfg.model(tcfg.pseudo_labels))


def source_dumps(cfg: Config, tcfg: TrainingConfig, fold: int, tasks: tuple[str, ...]) -> list:
    """The test dump files the pseudo-labels of fold ``fold`` are read from."""
    return [dump_path(cfg.exp_dir / "preds", tcfg.pseudo_labels, t, "test", k)
            for t in tasks for k in source_folds(cfg, tcfg, fold)]


def source_adapters(cfg: Config, tcfg: TrainingConfig, fold: int, tasks: tuple[str, ...]) -> list:
    """The source's trained adapter weights whose test predictions label fold ``fold`` (what a
    pseudo-label model depends on: retraining them makes it stale, rescoring them does not)."""
    source = cfg.model(tcfg.pseudo_labels)
    groups = [g for g, ts in task_groups(source.training_config(cfg.training).task_mode).items()
              if set(ts) & set(tasks)]
    return [model_dir(cfg, source.name, g, k) / "adapter_model.safetensors"
            for g in groups for k in source_folds(cfg, tcfg, fold)]


def level_spread(task: str, df: pd.DataFrame) -> np.ndarray:
    """Per question, the standard deviation of the predicted distribution over the levels."""
    cols = prob_columns(df, task)
    probs = df[cols].to_numpy(float)
    probs = probs / probs.sum(1, keepdims=True)
    values = np.array([level_value(c) for c in cols])
    mean = probs @ values
    return np.sqrt(np.clip(probs @ values ** 2 - mean ** 2, 0, None))


def confidence(task: str, df: pd.DataFrame) -> np.ndarray:
    """How sure the source is of each question (see the module docstring), 0..1."""
    if task == ELEMENT:
        return np.abs(2 * _p1(df) - 1)
    return 1 - level_spread(task, df) / 2


def _p1(df: pd.DataFrame) -> np.ndarray:
    return df["p_1"].to_numpy(float) / (df["p_0"].to_numpy(float) + df["p_1"].to_numpy(float))


def _predictions(files: list, task: str, expected: pd.DataFrame) -> pd.DataFrame:
    """The mean over ``files`` (one task's test dumps, each checked by ``dumps.check_dump`` to hold
    exactly the test questions ``expected`` with finite values) of ``pred`` and the level
    probabilities."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"pseudo-labels need the source model's test dumps; missing: {missing} "
                         "(stage 03 writes them before it trains a pseudo-label model)")
    parts = []
    for f in files:
        part = read_dump(f)
        check_dump(part, expected, task, str(f))
        parts.append(part[KEYS + ["pred"] + prob_columns(part, task)])
    return pd.concat(parts, ignore_index=True).groupby(KEYS, sort=False).mean().reset_index()


def pseudo_questions(cfg: Config, tcfg: TrainingConfig, fold: int, tasks: tuple[str, ...]) -> pd.DataFrame:
    """The test questions of ``tasks`` with the source's predictions as targets, the confident ones
    only, each with ``weight`` = ``pseudo_weight`` (logged: how many were kept)."""
    questions = question_frame(load_split(cfg, "test"))
    out = []
    for task in tasks:
        q = questions[questions["task"] == task].drop(columns=["target", "target_std"])
        files = source_dumps(cfg, tcfg, fold, (task,))
        merged = q.merge(_predictions(files, task, q), on=KEYS, how="left", validate="one_to_one")
        keep = confidence(task, merged) >= tcfg.pseudo_threshold
        std = level_spread(task, merged) if task == TOTAL else np.zeros(len(merged))
        part = q.assign(target=merged["pred"].to_numpy(float), target_std=std, weight=tcfg.pseudo_weight)
        out.append(part[keep])
        log.info("pseudo-labels %s fold %d %s: %d of %d test questions kept (confidence >= %.2f), from %s",
                 tcfg.pseudo_labels, fold, task, int(keep.sum()), len(keep), tcfg.pseudo_threshold,
                 ", ".join(str(f) for f in files))
    return pd.concat(out, ignore_index=True) if out else questions.iloc[:0]
