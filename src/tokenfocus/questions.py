"""The question table shared by training and inference: one row per (image, question)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .data import ELEMENT, STRUCTURAL_COLUMNS, TOTAL, question_frame
from .prompts import (ELEMENT_LABELS, ELEMENT_VALUES, drop_structural, element_question, total_levels,
                      total_question, vqascore_question)

INFO_COLUMNS = STRUCTURAL_COLUMNS   # the fields prompts.STRUCTURAL_FIELDS names, in its order
TASK_ID = {TOTAL: 0, ELEMENT: 1}   # the task column of a batch (tf_task)


def level_name(value: float) -> str:
    """How a level's value names its probability column in the dumps (``p_<name>``): ``1``,
    ``2.5``, ``1.2857`` (4 decimals)."""
    return f"{round(float(value), 4):g}"


@dataclass(frozen=True)
class LabelSet:
    """Per task, the answer tokens a model is read at and the value of each level, lowest
    first (a token None has no probability: the zero-shot total). ``label_set_of(5)`` is the
    paper's 1-5 total and 0/1 element; ``label_set_of(15)`` reads the total from fifteen level tokens."""

    tokens: dict
    values: dict

    def names(self, task: str) -> tuple[str, ...]:
        return tuple(level_name(v) for v in self.values[task])

    @property
    def total_tokens(self) -> tuple[str, ...]:
        return tuple(t for t in self.tokens[TOTAL] if t is not None)


def label_set_of(levels: int = 5) -> LabelSet:
    """The label set of a model trained with ``training.total_levels: levels`` (the total's
    levels: ``prompts.total_levels``; the element's 0/1 always)."""
    tokens, values = total_levels(levels)
    return LabelSet({TOTAL: tokens, ELEMENT: ELEMENT_LABELS}, {TOTAL: values, ELEMENT: ELEMENT_VALUES})


PAPER_LABELS = label_set_of(5)
TASK_LABELS, TASK_VALUES = PAPER_LABELS.tokens, PAPER_LABELS.values   # the paper's 1-5 and 0/1


def label_logit_table(adapter, task_tokens: dict[str, tuple[str | None, ...]] = TASK_LABELS
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """All answer-token ids in one vector and, per task, which columns of it belong to the task,
    in the order of the task's canonical labels (``task_tokens`` may spell them differently,
    e.g. 'No'/'Yes' for a zero-shot '0'/'1'). A label spelled None has no token: its column is
    -1 and its probability 0 (the VQAScore total puts P(No) on level 1 and P(Yes) on level 5)."""
    tokens = sorted({lab for t in (TOTAL, ELEMENT) for lab in task_tokens[t] if lab is not None})
    ids = torch.tensor(adapter.label_ids(tokens))
    cols = {t: torch.tensor([-1 if lab is None else tokens.index(lab) for lab in task_tokens[t]])
            for t in (TOTAL, ELEMENT)}
    return ids, cols


def task_groups(mode: str) -> dict[str, tuple[str, ...]]:
    """Which question kinds each trained model answers: one mixed model, or one per kind."""
    return {"mixed": (TOTAL, ELEMENT)} if mode == "mixed" else {TOTAL: (TOTAL,), ELEMENT: (ELEMENT,)}


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def question_info(row: dict, structural: bool, drop_rate: float = 0.0, rng=None) -> dict | None:
    if not structural:
        return None
    info = {c: row.get(c) for c in INFO_COLUMNS if _present(row.get(c))}
    return drop_structural(info, drop_rate, rng) if drop_rate > 0 else info


def question_text(row: dict, structural: bool = True, drop_rate: float = 0.0, rng=None,
                  label_set: LabelSet = PAPER_LABELS) -> str:
    """The question for one row of ``question_frame``, structural fields dropped at ``drop_rate``;
    the total question names the levels of ``label_set``."""
    return question_text_with_info(row, question_info(row, structural, drop_rate, rng), label_set)


def question_text_with_info(row: dict, info: dict | None, label_set: LabelSet = PAPER_LABELS) -> str:
    """The question for one row, with the structural fields ``info`` (None: without)."""
    if row["task"] == TOTAL:
        return total_question(row["prompt"], info, label_set.total_tokens)
    return element_question(row["prompt"], row["element_text"], row["category_raw"], info)


# Zero-shot (VQAScore): an untuned instruct model answers Yes or No to whether the image shows a
# text; for the total, P(No) goes to level 1 and P(Yes) to level 5, so the expected level is
# 1 + 4 P(Yes) (None: no token, probability 0).
ZEROSHOT_TOKENS = {TOTAL: ("No", None, None, None, "Yes"), ELEMENT: ("No", "Yes")}
ZEROSHOT_LABELS = LabelSet(ZEROSHOT_TOKENS, TASK_VALUES)


def zeroshot_question(row: dict, structural: bool = False, drop_rate: float = 0.0, rng=None,
                      label_set: LabelSet = ZEROSHOT_LABELS) -> str:
    """VQAScore's question: ``Does the image show "<text>"?`` for the element's text, or for the
    whole prompt on the total row (no structural information)."""
    return vqascore_question(row["prompt"] if row["task"] == TOTAL else row["element_text"])


__all__ = ["LabelSet", "PAPER_LABELS", "ZEROSHOT_LABELS", "label_set_of", "level_name", "ZEROSHOT_TOKENS", "zeroshot_question", "TOTAL", "ELEMENT", "TASK_LABELS", "TASK_VALUES", "question_frame", "question_text",
           "question_text_with_info",
           "question_info"]
