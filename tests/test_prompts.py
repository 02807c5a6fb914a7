import math
import random

import numpy as np
import pandas as pd
import pytest

from tokenfocus.prompts import (ELEMENT_INSTRUCTION, ELEMENT_LABELS, ELEMENT_VALUES, STRUCTURAL_FIELDS,
                                TOTAL_INSTRUCTION, TOTAL_LABELS, TOTAL_VALUES, drop_structural, element_question,
                                is_missing, structural_text, total_question)

FULL = {"t2i_model": "SDXL-Turbo", "type": "real", "promt_meaningless": 0.0, "split_confidence": 4.333,
        "attribute_confidence": 5.0}


def test_label_constants():
    assert TOTAL_LABELS == ("1", "2", "3", "4", "5") and TOTAL_VALUES == (1, 2, 3, 4, 5)
    assert ELEMENT_LABELS == ("0", "1") and ELEMENT_VALUES == (0, 1)


def test_total_question_with_all_fields():
    q = total_question("A red circle in the desert.", FULL)
    assert 'Text prompt: "A red circle in the desert."' in q
    assert "generator SDXL-Turbo" in q and "prompt type real" in q
    assert "meaningless 0" in q and "split confidence 4.3" in q and "attribute confidence 5" in q
    # The answer format, then the caption question about the whole prompt, read last.
    assert q.endswith(f'{TOTAL_INSTRUCTION}\nDoes the image show "A red circle in the desert."?')
    assert all(d in TOTAL_INSTRUCTION for d in ("1", "5"))


def test_element_question_names_element_and_category():
    q = element_question("two blue squares", "two", "counting", FULL)
    # The element is the last thing read, as a caption question, after the answer format.
    assert q.endswith(f'{ELEMENT_INSTRUCTION}\nDoes the image show "two"? (counting)')
    assert element_question("a  cat", " big\n red ", "attribute").endswith('show "big red"? (attribute)')
    assert "1 if present" in ELEMENT_INSTRUCTION and "0 if absent" in ELEMENT_INSTRUCTION
    # The shared part (prompt + info) comes before the element.
    assert q.index("Text prompt") < q.index("info:") < q.index("Does the image show")


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, "", "  "])
def test_missing_values_are_left_out(missing):
    assert is_missing(missing)
    info = dict(FULL, t2i_model=missing, type=missing)  # what the final test hides
    q = total_question("a star", info)
    assert "generator" not in q and "prompt type" not in q
    assert "split confidence 4.3" in q


def test_no_info_at_all():
    for info in (None, {}, {k: None for k in STRUCTURAL_FIELDS}, pd.Series({k: np.nan for k in STRUCTURAL_FIELDS})):
        assert structural_text(info) == ""
        q = element_question("a star", "star", "object", info)
        assert "info:" not in q
        assert q == element_question("a star", "star", "object")


def test_info_from_pandas_row_and_missing_category():
    row = pd.Series({**FULL, "attribute_confidence": np.nan, "other": 1})
    text = structural_text(row)
    assert text.startswith("info: generator SDXL-Turbo") and "attribute" not in text
    q = element_question("a star", "star", None, row)
    assert q.endswith("\nDoes the image show \"star\"?")
    assert not is_missing(0.0) and not is_missing(0) and not is_missing("x")


def test_drop_structural_extremes_and_no_mutation():
    info = dict(FULL, extra="keep")
    rng = np.random.default_rng(0)
    assert drop_structural(info, 0.0, rng) == info
    dropped = drop_structural(info, 1.0, rng)
    assert all(dropped[k] is None for k in STRUCTURAL_FIELDS)
    assert dropped["extra"] == "keep"
    assert info == dict(FULL, extra="keep")
    assert drop_structural(None, 1.0, rng) == {k: None for k in STRUCTURAL_FIELDS}
    with pytest.raises(ValueError):
        drop_structural(info, 1.5, rng)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_drop_structural_rate(rate):
    rng = np.random.default_rng(42)
    n = 4000
    counts = {k: 0 for k in STRUCTURAL_FIELDS}
    for _ in range(n):
        out = drop_structural(FULL, rate, rng)
        for k in STRUCTURAL_FIELDS:
            counts[k] += out[k] is None
    for k, c in counts.items():
        # 5 standard errors: fails only if the rate is wrong, not by chance.
        assert abs(c / n - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (k, c / n)


def test_drop_structural_is_seeded():
    rng_a, rng_b = random.Random(7), random.Random(7)
    a = [drop_structural(FULL, 0.5, rng_a) for _ in range(20)]
    b = [drop_structural(FULL, 0.5, rng_b) for _ in range(20)]
    assert a == b and len({tuple(d.values()) for d in a}) > 1


def test_zero_shot_questions_are_vqascore_ones():
    """Element: P(Yes)/(P(Yes)+P(No)) to 'Does the image show "<text>"?'; total: 1 + 4 P(Yes) to
    the same question about the whole prompt."""
    import torch

    from tokenfocus.infer import task_probabilities
    from tokenfocus.prompts import vqascore_question
    from tokenfocus.questions import ZEROSHOT_TOKENS, zeroshot_question

    row = {"task": "element", "prompt": "two red  circles", "element_text": "red", "category_raw": "attribute-color"}
    assert zeroshot_question(row) == 'Does the image show "red"?'
    assert zeroshot_question({**row, "task": "total"}) == vqascore_question("two red circles") \
        == 'Does the image show "two red circles"?'
    # Columns of a label table holding 'No' and 'Yes' (sorted), as label_logit_table builds it.
    tokens = sorted({t for labels in ZEROSHOT_TOKENS.values() for t in labels if t is not None})
    cols = {task: torch.tensor([-1 if t is None else tokens.index(t) for t in labels])
            for task, labels in ZEROSHOT_TOKENS.items()}
    logits = torch.tensor([[0.0, 1.0], [0.3, -0.2]])   # (No, Yes)
    total, element = task_probabilities(logits, ["total", "element"], cols)
    p_yes = float(torch.softmax(logits[0], -1)[1])
    assert total @ [1, 2, 3, 4, 5] == pytest.approx(1 + 4 * p_yes) and total[1:4].sum() == 0
    assert element[1] == pytest.approx(float(torch.softmax(logits[1], -1)[1]))


def test_total_levels_spread_evenly_over_one_to_five():
    from tokenfocus.prompts import total_instruction, total_levels

    assert total_levels(5) == (TOTAL_LABELS, TOTAL_VALUES)
    assert total_instruction(TOTAL_LABELS) == TOTAL_INSTRUCTION
    nine, values = total_levels(9)
    assert nine == tuple("123456789") and values == (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    fifteen, values = total_levels(15)
    assert fifteen == tuple("ABCDEFGHIJKLMNO") and values[0] == 1.0 and values[-1] == 5.0
    assert np.allclose(np.diff(values), 4 / 14)
    assert total_instruction(fifteen).endswith("Rate from A (not at all) to O (perfectly). Answer with one letter.")
    assert "Rate from 1 (not at all) to 9 (perfectly). Answer with one digit." in total_question("x", None, nine)
    for bad in (1, 27):
        with pytest.raises(ValueError, match="total levels"):
            total_levels(bad)
