"""Scoring questions whose first answer token is the label.

Every question states a strictly controlled answer format so that the model's
first answer token is one of the label tokens: '1'..'5' for the overall score and
'1' (present) / '0' (absent) for an element. The shared part (the T2I prompt and
the optional structural information) comes first, the task-specific part last: the
answer format, then the caption question ``Does the image show "<text>"?`` about the
whole prompt (total) or the element's text (element).

Structural information (T2I model name, prompt type and the prompt-evaluation
fields) is optional field by field: the final test hides the model name and the
type, so any field may be missing, None or NaN and is then left out of the text.
Training drops fields at random (`drop_structural`) so that a model trained with
them still answers without them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

TOTAL_LABELS = ("1", "2", "3", "4", "5")
TOTAL_VALUES = (1, 2, 3, 4, 5)
ELEMENT_LABELS = ("0", "1")
ELEMENT_VALUES = (0, 1)

# Data-layer column name -> how the field reads in the question.
STRUCTURAL_FIELDS = {
    "t2i_model": "generator",
    "type": "prompt type",
    "promt_meaningless": "meaningless",
    "split_confidence": "split confidence",
    "attribute_confidence": "attribute confidence",
}

TOTAL_INSTRUCTION = (
    "How well does the image match the text prompt? "
    "Rate from 1 (not at all) to 5 (perfectly). Answer with one digit."
)
MAX_TOTAL_LEVELS = 26


def total_levels(n: int = 5) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The answer tokens and values of an ``n``-level total score, the levels spread evenly over
    1..5 (finer levels in the style of Q-Align / iMatch): digits ``1``..``n`` up to nine levels
    (five: the paper's 1-5; nine: half-steps), letters ``A``.. beyond (fifteen: ``A``..``O``)."""
    if not 2 <= n <= MAX_TOTAL_LEVELS:
        raise ValueError(f"total levels: {n} (2..{MAX_TOTAL_LEVELS})")
    if n == len(TOTAL_LABELS):
        return TOTAL_LABELS, TOTAL_VALUES
    labels = tuple(str(k + 1) for k in range(n)) if n <= 9 else tuple(chr(ord("A") + k) for k in range(n))
    return labels, tuple(1.0 + 4.0 * k / (n - 1) for k in range(n))


def total_instruction(labels: tuple[str, ...] = TOTAL_LABELS) -> str:
    """The total question's instruction for the answer tokens ``labels`` (lowest first)."""
    if tuple(labels) == TOTAL_LABELS:
        return TOTAL_INSTRUCTION
    unit = "digit" if labels[0].isdigit() else "letter"
    return ("How well does the image match the text prompt? "
            f"Rate from {labels[0]} (not at all) to {labels[-1]} (perfectly). Answer with one {unit}.")
ELEMENT_INSTRUCTION = (
    "Is this element shown correctly in the image? "
    "Answer 1 if present or 0 if absent, with one digit."
)


def is_missing(value: Any) -> bool:
    """True for None, NaN (float, numpy or pandas) and empty strings."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas placeholders, without importing pandas
        return True
    try:
        return bool(math.isnan(value))
    except (TypeError, ValueError):
        return False


def _format_value(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{float(value):.1f}"


def structural_text(info: Mapping[str, Any] | None) -> str:
    """'info: generator X; prompt type real; ...' for the fields present, '' if none are."""
    if info is None:
        return ""
    parts = []
    for field, name in STRUCTURAL_FIELDS.items():
        value = info.get(field) if hasattr(info, "get") else None
        if not is_missing(value):
            parts.append(f"{name} {_format_value(value)}")
    return "info: " + "; ".join(parts) if parts else ""


def _context(prompt: str, info: Mapping[str, Any] | None) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    lines = [f'Text prompt: "{prompt.strip()}"']
    extra = structural_text(info)
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def total_question(prompt: str, info: Mapping[str, Any] | None = None,
                   labels: tuple[str, ...] = TOTAL_LABELS) -> str:
    """The overall-alignment question; the answer is one of ``labels`` (see ``total_levels``).

    It ends with the caption question about the whole prompt (see ``element_question``), a
    second copy of the prompt that packed scoring runs in the total question's own segment.
    Measured without it (commits 0a08f9e-3ec019e, a fresh-clone demo run): the scoring
    benchmark's packed ratio 4.67x, within its run-to-run noise (4.36-5.09x with it), while the
    fine-tuned tiny InternVL fell from 0.4295 to 0.3829 OOF Final (test total SRCC 0.135 ->
    0.010); so it stays."""
    return f"{_context(prompt, info)}\n{total_instruction(labels)}\n{vqascore_question(prompt)}"


# The wording when the templates began to be recorded, frozen as it was: adapters without a
# record were trained on it (and are kept while the questions still read so).
FIRST_RECORDED_TEMPLATES = {
    "total": 'Text prompt: "<prompt>"\ninfo: generator <t2i_model>; prompt type <type>; meaningless '
             '<promt_meaningless>; split confidence <split_confidence>; attribute confidence '
             '<attribute_confidence>\nHow well does the image match the text prompt? Rate from 1 (not at all) '
             'to 5 (perfectly). Answer with one digit.\nDoes the image show "<prompt>"?',
    "element": 'Text prompt: "<prompt>"\ninfo: generator <t2i_model>; prompt type <type>; meaningless '
               '<promt_meaningless>; split confidence <split_confidence>; attribute confidence '
               '<attribute_confidence>\nIs this element shown correctly in the image? Answer 1 if present or 0 '
               'if absent, with one digit.\nDoes the image show "<element>"? (<category>)'}


def question_templates(labels: tuple[str, ...] = TOTAL_LABELS) -> dict[str, str]:
    """The scoring questions with placeholders (every structural field included), the total's
    answer tokens ``labels``: what an adapter was trained to read, recorded with it so that an
    adapter trained on another wording is not reused silently."""
    info = {field: f"<{field}>" for field in STRUCTURAL_FIELDS}
    return {"total": total_question("<prompt>", info, labels),
            "element": element_question("<prompt>", "<element>", "<category>", info)}


def element_question(
    prompt: str, element_text: str, category: str, info: Mapping[str, Any] | None = None
) -> str:
    """The question for one element of the prompt; the answer is one of ELEMENT_LABELS.

    The element comes last, as the caption question a pre-trained LVLM already answers
    (VQAScore's ``Does the image show "red"?``), followed by its category: the fine-tune then
    maps an answer the base already has onto the label digits instead of learning to read a
    new format. Measured on the tiny InternVL base, fold 0, 4800 questions: held-out Final
    0.4626 (SRCC 0.179) with this layout vs 0.4050 (SRCC 0.032) with ``Element: red
    (attribute-color)``; the words read just before answering are the ones a model most
    easily looks up in the image.
    """
    element = vqascore_question(element_text)
    if not is_missing(category):
        element += f" ({str(category).strip()})"
    return f"{_context(prompt, info)}\n{ELEMENT_INSTRUCTION}\n{element}"


def vqascore_question(text: str) -> str:
    """The zero-shot caption-matching question of VQAScore; the answer is 'Yes' or 'No'.

    An untuned LVLM's P(Yes) / (P(Yes) + P(No)) to it scores an element (its text) or, as
    1 + 4 P(Yes), the whole prompt (EvalMuse-40K reports SRCC 0.4877 for VQAScore)."""
    return f'Does the image show "{" ".join(str(text).split())}"?'


def drop_structural(info: Mapping[str, Any] | None, rate: float, rng) -> dict:
    """A copy of `info` with each structural field set to None with probability `rate`.

    `rng` is anything with a `.random()` method (numpy Generator, random.Random).
    Fields that are not structural are kept as they are; one draw is made per
    structural field whether or not it is present, so the random stream does not
    depend on which fields a record happens to have.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"drop rate must be in [0, 1], got {rate}")
    out = dict(info) if info is not None else {}
    for field in STRUCTURAL_FIELDS:
        if rng.random() < rate:
            out[field] = None
    return out
