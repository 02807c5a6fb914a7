import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokenfocus.lvlm import IGNORE_INDEX, families, load_adapter
from tokenfocus.prompts import ELEMENT_LABELS, TOTAL_LABELS, element_question, total_question

PRETRAINED = Path(__file__).resolve().parents[1] / "input" / "pretrained"
BASES = {"qwen2_5_vl": PRETRAINED / "tiny-qwen2.5-vl", "internvl": PRETRAINED / "tiny-internvl"}
EXPECTED_MODULES = {
    "qwen2_5_vl": ("model.visual.merger", "model.language_model", "lm_head"),
    "internvl": ("model.vision_tower", "model.multi_modal_projector", "model.language_model"),
}
INFO = {"t2i_model": "SDXL-Turbo", "type": "real", "promt_meaningless": 0.0, "split_confidence": 4.3}
QUESTIONS = [
    total_question("A red circle.", None),
    element_question("two small red circles to the left of a blue star in the desert, masterpiece, 8k",
                     "blue", "attribute-color", INFO),
    "Is there a star?",
]


def images(n, size=112, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module", params=sorted(BASES))
def adapter(request):
    path = BASES[request.param]
    assert (path / "config.json").exists(), f"missing tiny base {path}; run src/tools/make_tiny_bases.py"
    return load_adapter(request.param, str(path))


def test_registry_lists_both_families():
    assert {"qwen2_5_vl", "internvl"} <= set(families())


def test_loads_native_class_with_expected_names(adapter):
    assert type(adapter.model).__name__ in ("Qwen2_5_VLForConditionalGeneration", "InternVLForConditionalGeneration")
    names = [n for n, _ in adapter.model.named_modules()]
    for prefix in EXPECTED_MODULES[adapter.family]:
        assert any(n.startswith(prefix) for n in names), prefix
    params = dict(adapter.model.named_parameters())
    vision = {n for n in params if adapter.is_vision_param(n)}
    assert vision and len(vision) < len(params)
    assert not any("language_model" in n or n.startswith("lm_head") for n in vision)
    # The LoRA regex reaches the language model's projections and nothing in the vision tower.
    lora = [n for n in names if re.fullmatch(adapter.lora_target_regex, n)]
    assert len(lora) == 7 * adapter.model.config.text_config.num_hidden_layers
    assert all("language_model" in n for n in lora)
    card = json.loads((BASES[adapter.family] / "card.json").read_text())
    assert card["parameters"]["total"] == adapter.num_parameters()


def test_label_ids_are_single_distinct_tokens(adapter):
    for labels in (TOTAL_LABELS, ELEMENT_LABELS, ("Yes", "No")):
        ids = adapter.label_ids(labels)
        assert len(set(ids)) == len(labels)
        assert [adapter.tokenizer.decode([i]) for i in ids] == list(labels)
    with pytest.raises(ValueError, match="not one"):
        adapter.label_ids(["12"])  # digits are single tokens, so two digits are two


def test_left_padding_keeps_the_answer_position_last(adapter):
    imgs = images(3)
    batch = adapter.encode(imgs, QUESTIONS)
    mask = batch["attention_mask"]
    assert bool(mask[:, -1].all()) and not bool(mask[:, 0].all())  # padding on the left only
    lengths = mask.sum(1)
    assert len(set(lengths.tolist())) == 3
    text = adapter.tokenizer.decode(batch["input_ids"][0][mask[0].bool()])
    assert text.endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        batched = adapter.last_logits(batch)
        for i in range(3):
            single = adapter.encode([imgs[i]], [QUESTIONS[i]])
            assert single["input_ids"].shape[1] == lengths[i]
            torch.testing.assert_close(batched[i], adapter.last_logits(single)[0], atol=1e-4, rtol=1e-5)  # float32 batching noise; a wrong position differs by O(1)


def test_prefix_plus_suffix_equals_encode(adapter):
    img = images(1, seed=3)[0]
    prefix = adapter.encode_prefix(img)
    suffixes = adapter.encode_suffixes(QUESTIONS)
    assert suffixes["input_ids"].shape[0] == len(QUESTIONS)
    image_token = adapter.tokenizer.convert_tokens_to_ids(adapter.image_placeholder)
    assert int((prefix["input_ids"] == image_token).sum()) == 49  # the tiny bases' image token count (7 x 7)
    assert not bool((suffixes["input_ids"] == image_token).any())
    for j, q in enumerate(QUESTIONS):
        full = adapter.encode([img], [q])
        joined = torch.cat([prefix["input_ids"][0], suffixes["input_ids"][j, : suffixes["lengths"][j]]])
        assert torch.equal(joined, full["input_ids"][0])
        assert torch.equal(prefix["pixel_values"], full["pixel_values"])
    # right padding: real tokens first
    assert bool(suffixes["attention_mask"][:, 0].all())


def test_answers_give_sft_labels(adapter):
    imgs = images(3, seed=1)
    answers = ["3", "1", "Yes"]
    batch = adapter.encode(imgs, QUESTIONS, answers=answers)
    labels = batch["labels"]
    eot = adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_turn)
    for i, a in enumerate(answers):
        kept = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert kept == adapter.label_ids([a]) + [eot]
    pos = adapter.answer_positions(labels)
    assert pos.tolist() == [labels.shape[1] - 3] * 3
    prompt_only = adapter.encode(imgs, QUESTIONS)
    with torch.no_grad():
        out = adapter.model(**adapter.prepare(batch))
        assert torch.isfinite(out.loss)
        # Logits at the answer position equal the prompt-only batch's last logits.
        at_pos = out.logits[torch.arange(3), pos].float()
        torch.testing.assert_close(at_pos, adapter.last_logits(prompt_only), atol=1e-4, rtol=0)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown LVLM family"):
        load_adapter("llava", str(BASES["internvl"]))
    with pytest.raises(ValueError, match="unknown image option"):
        load_adapter("internvl", str(BASES["internvl"]), min_pixels=10)
    with pytest.raises(ValueError, match="model_type 'internvl'"):
        load_adapter("qwen2_5_vl", str(BASES["internvl"]))
    # An original remote-code checkpoint is never loaded silently.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_adapter("internvl", str(tmp_path))
    with pytest.raises(ValueError, match="no remote-code adapter"):
        load_adapter("qwen2_5_vl", str(tmp_path), trust_remote_code=True)


def test_resolution_limits():
    small = load_adapter("qwen2_5_vl", str(BASES["qwen2_5_vl"]), min_pixels=56 * 56, max_pixels=56 * 56)
    prefix = small.encode_prefix(images(1, size=200)[0])
    assert int((prefix["input_ids"] == small.model.config.image_token_id).sum()) == 9  # 56 px rounds to 48 = 6 x 6 patches of 8 px, merged 2 x 2
    capped = load_adapter("internvl", str(BASES["internvl"]), image_size=64)
    batch = capped.encode(images(1, size=300), ["Is there a star?"])
    assert batch["pixel_values"].shape == (1, 3, 112, 112)
