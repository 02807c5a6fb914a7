"""The pre-training curriculum of the tiny demo bases (src/tools/make_tiny_bases.py)."""
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tokenfocus.prompts import ELEMENT_INSTRUCTION, TOTAL_INSTRUCTION

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mtb():
    spec = importlib.util.spec_from_file_location("make_tiny_bases", ROOT / "src" / "tools" / "make_tiny_bases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes(mtb):
    return mtb.pretrain_scenes(40, np.random.default_rng(0), [0, 1])


class _Tokens:
    """Stands in for an adapter: a distinct fake id per label string."""

    def label_ids(self, labels):
        return [hash(("id", str(x))) % 10**6 for x in labels]


def test_phase_mixes_are_distributions_over_known_tasks(mtb):
    known = set(mtb.QUESTION_TYPES) | {f"element:{k}" for k in mtb.ELEMENT_KINDS} | {"total"}
    for name, steps, mix in mtb.PHASES:
        assert steps > 0 and set(mix) <= known, name
        assert sum(mix.values()) == pytest.approx(1.0), name
    # The last phase asks every element kind and the total in the scoring format.
    assert {f"element:{k}" for k in mtb.ELEMENT_KINDS} | {"total"} <= set(mtb.PHASES[-1][2])
    scaled = mtb.scaled_phases(0.5)
    assert [k for _, k, _ in scaled] == [round(k / 2) for _, k, _ in mtb.PHASES]


def test_scenes_carry_truth_labels_and_generic_total(mtb, scenes):
    for sc in scenes:
        assert sc["image"].size == (mtb.IMAGE_SIZE, mtb.IMAGE_SIZE)
        assert len(sc["words"]) == mtb.GRID * mtb.GRID
        for text, category, label, kind, clarity in sc["elements"]:
            assert label == int(clarity >= 0.5) and kind in mtb.ELEMENT_KINDS and text
        assert 1.0 <= mtb.generic_total(sc["elements"]) <= 5.0
    # A scene whose elements are all shown scores 5, none shown 1; objects weigh double.
    els = [("a", "object", 1, "object", 1.0), ("b", "color", 0, "color", 0.0)]
    assert mtb.generic_total(els) == pytest.approx(1 + 4 * 2 / 3)


def test_sampler_balances_element_labels_and_asks_scoring_questions(mtb, scenes):
    sample = mtb.QuestionSampler(_Tokens(), scenes)
    rng = np.random.default_rng(1)
    one, zero = sample.element_token[1], sample.element_token[0]
    kind = next(k for k in mtb.ELEMENT_KINDS if (k, 0) in sample.groups and (k, 1) in sample.groups)
    answers = Counter()
    for _ in range(400):
        i, question, answer = sample(f"element:{kind}", rng)
        assert ELEMENT_INSTRUCTION in question and question.startswith('Text prompt: "' + scenes[i]["prompt"])
        answers[answer] += 1
    assert set(answers) == {one, zero}
    assert 0.4 < answers[one] / 400 < 0.6  # balanced, though most elements of a scene are shown
    i, question, answer = sample("total", rng)
    level = int(np.clip(np.floor(mtb.generic_total(scenes[i]["elements"]) + 0.5), 1, 5))
    assert question.endswith(TOTAL_INSTRUCTION) and answer == sample.total_token[level - 1]
    i, question, answer = sample("color", rng)
    assert question.startswith("Is there anything") and answer in (sample.answer_token["Yes"], sample.answer_token["No"])


def test_committed_cards_record_the_curriculum(mtb):
    for folder in mtb.FAMILIES.values():
        card = json.loads((ROOT / "input" / "pretrained" / folder / "card.json").read_text())
        phases = card["pretrain"]["phases"]
        assert [(p["name"], p["steps"]) for p in phases] == [(n, k) for n, k, _ in mtb.PHASES]
        assert [c["phase"] for c in card["pretrain"]["after_phase"]] == [n for n, _, _ in mtb.PHASES]
