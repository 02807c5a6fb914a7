from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tokenfocus.config import TrainingConfig
from tokenfocus.fastscore import (check_supported, encode_image_questions, merge_prefixes, naive_label_logits,
                                  prefill, prefix_label_logits)
from tokenfocus.infer import label_logit_table, predict_questions, predict_questions_fast, task_probabilities
from tokenfocus.lvlm import load_adapter
from tokenfocus.prompts import element_question, total_question
from tokenfocus.questions import ELEMENT, TOTAL
from tokenfocus.train import TokenFocusCollator

PRETRAINED = Path(__file__).resolve().parents[1] / "input" / "pretrained"
BASES = {"qwen2_5_vl": PRETRAINED / "tiny-qwen2.5-vl", "internvl": PRETRAINED / "tiny-internvl"}
INFO = {"t2i_model": "SDXL-Turbo", "type": "real", "split_confidence": 4.3}
PROMPTS = ["a red circle left of a blue square", "two green stars under a yellow moon, oil painting", "a cat"]
ELEMENTS = [["circle", "red", "square", "blue", "left of"], ["star", "two", "green"], []]
SIZES = [(112, 112), (84, 140), (168, 112)]  # Qwen: different image-token counts per image


def make_images(seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES]


def image_questions():
    """Per image: the total question, then one question per element (counts 6, 4, 1)."""
    return [[total_question(p, INFO)] + [element_question(p, e, "object", INFO) for e in els]
            for p, els in zip(PROMPTS, ELEMENTS)]


def probabilities(logits, n_total_rows, cols):
    tasks = [TOTAL] * n_total_rows + [ELEMENT] * (len(logits) - n_total_rows)
    return np.stack([np.pad(p, (0, 5 - len(p))) for p in task_probabilities(logits, tasks, cols)])


def load(family):
    path = BASES[family]
    assert (path / "config.json").exists(), f"missing tiny base {path}; run src/tools/make_tiny_bases.py"
    return load_adapter(family, str(path))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on busy cores every threaded
    # op waits for a second core: one thread keeps this module fast under load.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomise(model, seed=0):
    """Random weights at unit gain. The tiny bases' label logits move by under 1e-3 when
    the image or a position changes, too little for a 1e-4 check to notice a wrong
    position or a swapped image; with these weights such a slip moves them by 0.1-1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 0.5 if "embed" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.fixture(scope="module", params=sorted(BASES))
def adapter(request):
    return load(request.param)


@pytest.fixture(scope="module", params=sorted(BASES))
def sharp(request):
    a = load(request.param)
    randomise(a.model)
    return a


def assert_same_scores(adapter, fast, ref, cols):
    assert [len(f) for f in fast] == [len(r) for r in ref]
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=0)
        np.testing.assert_allclose(probabilities(f, 1, cols), probabilities(r, 1, cols), atol=1e-4, rtol=0)


@pytest.mark.parametrize("prefix_batch,share_context", [(1, True), (3, True), (2, False)])
def test_fast_equals_one_forward_per_question(sharp, prefix_batch, share_context):
    images, questions = make_images(), image_questions()
    ids, cols = label_logit_table(sharp)
    ref = naive_label_logits(sharp, images, questions, ids, batch_size=4)
    # suffix_batch 4 splits the first image's questions over two passes of one cached prefix.
    fast = prefix_label_logits(sharp, images, questions, ids, prefix_batch=prefix_batch, suffix_batch=4,
                               share_context=share_context)
    assert_same_scores(sharp, fast, ref, cols)
    # Not trivially satisfied: the image and the question do move the scores.
    swapped = naive_label_logits(sharp, images[::-1], questions, ids, batch_size=4)
    assert float((swapped[0] - ref[0]).abs().max()) > 1e-2
    assert float((ref[0][1] - ref[0][2]).abs().max()) > 1e-2


def test_pretrained_tiny_bases_agree_too(adapter):
    images, questions = make_images(), image_questions()
    ids, cols = label_logit_table(adapter)
    ref = naive_label_logits(adapter, images, questions, ids, batch_size=6)
    assert_same_scores(adapter, prefix_label_logits(adapter, images, questions, ids, prefix_batch=2), ref, cols)


def test_prefixes_of_different_lengths_share_a_batch():
    adapter = load("qwen2_5_vl")
    prefixes = [encode_image_questions(adapter, img, qs)[0] for img, qs in zip(make_images(), image_questions())]
    lengths = [p["input_ids"].shape[1] for p in prefixes]
    assert len(set(lengths)) == 3
    batch = merge_prefixes(adapter, prefixes)
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert bool(batch["attention_mask"][:, -1].all())  # left padding
    assert batch["image_grid_thw"].shape == (3, 3)


def test_shared_question_text_moves_into_the_prefix(adapter):
    img = make_images()[0]
    qs = image_questions()[0]
    plain, plain_suf = encode_image_questions(adapter, img, qs, share_context=False)
    shared, shared_suf = encode_image_questions(adapter, img, qs, share_context=True)
    moved = shared["input_ids"].shape[1] - plain["input_ids"].shape[1]
    assert moved > 10  # at least the quoted T2I prompt
    for a, b in zip(plain_suf, shared_suf):
        assert a == plain_suf[0][:moved] + b and len(b) >= 1
    # One question: everything but its last token is shared.
    one, one_suf = encode_image_questions(adapter, img, qs[:1])
    assert len(one_suf[0]) == 1


def test_qwen_suffix_positions_continue_the_full_forward():
    adapter = load("qwen2_5_vl")
    img, q = make_images()[1], image_questions()[1][1]
    prefix, suffixes = encode_image_questions(adapter, img, [q], share_context=False)
    state = prefill(adapter, adapter.model, prefix)
    assert state.mrope
    full = adapter.encode([img], [q])
    pos, _ = adapter.model.model.get_rope_index(full["input_ids"], mm_token_type_ids=full["mm_token_type_ids"],
                                                image_grid_thw=full["image_grid_thw"])
    n = prefix["input_ids"].shape[1]
    # Image positions are 2-D grids, so the first text position after them is less than n.
    assert int(state.next_pos[0]) == int(pos[0, 0, n]) < n
    assert pos[:, 0, n:].tolist() == [list(range(int(pos[0, 0, n]), int(pos[0, 0, n]) + len(suffixes[0])))] * 3


@pytest.mark.parametrize("family", sorted(BASES))
def test_fast_path_under_lora(family):
    from peft import LoraConfig, get_peft_model

    adapter = load(family)  # fresh: get_peft_model changes the model in place
    randomise(adapter.model)
    images, questions = make_images(1), image_questions()
    ids, cols = label_logit_table(adapter)
    before = naive_label_logits(adapter, images[:1], questions[:1], ids)
    torch.manual_seed(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=adapter.lora_target_regex, init_lora_weights=False,
                     task_type="CAUSAL_LM")
    model = get_peft_model(adapter.model, cfg).eval()
    ref = naive_label_logits(adapter, images, questions, ids, model=model)
    assert float((ref[0] - before[0]).abs().max()) > 1e-2  # the LoRA weights act
    fast = prefix_label_logits(adapter, images, questions, ids, model=model, prefix_batch=2, suffix_batch=3)
    assert_same_scores(adapter, fast, ref, cols)


def test_predict_questions_fast_matches_predict_questions(adapter, tmp_path):
    rows = []
    for k, (img, prompt, els) in enumerate(zip(make_images(2), PROMPTS, ELEMENTS)):
        img.save(tmp_path / f"img{k}.png")
        base = {"img_path": f"img{k}.png", "prompt_id": str(k), "prompt": prompt, **INFO, "target": 0.5}
        rows.append({**base, "task": TOTAL, "element_key": "", "element_text": "", "category_raw": "",
                     "category": ""})
        rows += [{**base, "task": ELEMENT, "element_key": f"{e} (object)", "element_text": e,
                  "category_raw": "object", "category": "object"} for e in els]
    # Interleave the images' rows: the output must keep the input order.
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)
    collator = TokenFocusCollator(adapter, tmp_path, TrainingConfig(), train=False)
    ref = predict_questions(adapter, adapter.model, table, tmp_path, 4, collator, progress=False)
    fast = predict_questions_fast(adapter, adapter.model, table, tmp_path, 4, collator, progress=False,
                                  prefix_batch=2)
    assert list(fast.columns) == list(ref.columns)
    pd.testing.assert_frame_equal(fast.drop(columns=[c for c in fast if c.startswith("p_")] + ["pred"]),
                                  ref.drop(columns=[c for c in ref if c.startswith("p_")] + ["pred"]))
    p_cols = [c for c in ref if c.startswith("p_")] + ["pred"]
    np.testing.assert_allclose(fast[p_cols].to_numpy(float), ref[p_cols].to_numpy(float), atol=1e-4, rtol=0)
    assert fast[p_cols].notna().any(axis=1).all()


def test_bad_calls_are_refused(adapter):
    images, questions = make_images(), image_questions()
    ids, _ = label_logit_table(adapter)
    with pytest.raises(ValueError, match="3 images for 2 question lists"):
        prefix_label_logits(adapter, images, questions[:2], ids)
    with pytest.raises(ValueError, match="prefix_batch"):
        prefix_label_logits(adapter, images, questions, ids, prefix_batch=0)
    out = prefix_label_logits(adapter, images[:2], [[], questions[1]], ids)
    assert out[0].shape == (0, len(ids)) and out[1].shape == (len(questions[1]), len(ids))


def test_models_without_cache_positions_are_named():
    adapter = load("internvl")

    class NoCache(torch.nn.Module):
        config = adapter.model.config

        def forward(self, input_ids=None, pixel_values=None, attention_mask=None):
            raise AssertionError("not called")

    with pytest.raises(NotImplementedError, match="takes no"):
        check_supported(adapter, NoCache())
