import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tokenfocus import loss as L

ROOT = Path(__file__).resolve().parents[1]
LEVELS5 = [1.0, 2.0, 3.0, 4.0, 5.0]
VOCAB = 64


# ----------------------------------------------------------------------------- tiny models
def _text(**kw):
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0, **kw)


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**_text(), tie_word_embeddings=False)).eval()


def tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        text_config=_text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, in_channels=3,
                           out_hidden_size=32, fullatt_block_indexes=[0]),
        image_token_id=60, video_token_id=61, vision_start_token_id=62, vision_end_token_id=63,
        tie_word_embeddings=False)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def tiny_internvl():
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(0)
    cfg = InternVLConfig(
        text_config=dict(model_type="qwen2", **_text(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=28, patch_size=14, num_channels=3),
        image_token_id=60, image_seq_length=1, downsample_ratio=0.5)
    return InternVLForConditionalGeneration(cfg).eval()


def left_padded_text(batch=3, seq=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # later rows shorter, padded on the left
        ids[row, :2 * row] = 0
        mask[row, :2 * row] = 0
    return {"input_ids": ids, "attention_mask": mask}


def qwen_vl_inputs(batch=2):
    # 28x28 image: 2x2 patches of 14 px, merged 2x2 into one image token.
    inputs = left_padded_text(batch, 10)
    img = torch.tensor([62, 60, 63])
    ids = torch.cat([inputs["input_ids"][:, :4], img.expand(batch, -1), inputs["input_ids"][:, 4:]], 1)
    mask = torch.cat([inputs["attention_mask"][:, :4], torch.ones(batch, 3, dtype=torch.long),
                      inputs["attention_mask"][:, 4:]], 1)
    g = torch.Generator().manual_seed(2)
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": (ids == 60).int(),
            "pixel_values": torch.randn(batch * 4, 3 * 2 * 14 * 14, generator=g),
            "image_grid_thw": torch.tensor([[1, 2, 2]] * batch)}


def internvl_inputs(batch=2):
    inputs = left_padded_text(batch, 10)
    inputs["input_ids"][:, 5] = 60  # one image token per row (28 px tile, pixel shuffle 0.5)
    g = torch.Generator().manual_seed(3)
    inputs["pixel_values"] = torch.randn(batch, 3, 28, 28, generator=g)
    return inputs


LABEL_IDS = torch.tensor([7, 8, 9, 10, 11])


# ----------------------------------------------------------------------------- expected value / MSE
def test_expected_value_and_mse_by_hand():
    # probabilities (.25, .25, .5) and (.5, .25, .25) over values (1, 2, 3)
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0], [2.0, 1.0, 1.0]]))
    ev = L.expected_value(logits, [1, 2, 3])
    assert torch.allclose(ev, torch.tensor([2.25, 1.75]), atol=1e-6)
    target = torch.tensor([2.0, 3.0])
    assert L.token_focus_mse(logits, [1, 2, 3], target).item() == pytest.approx((0.0625 + 1.5625) / 2, abs=1e-6)
    assert L.token_focus_mse(logits, [1, 2, 3], target, reduction="sum").item() == pytest.approx(1.625, abs=1e-6)
    per = L.token_focus_mse(logits, [1, 2, 3], target, reduction="none")
    assert torch.allclose(per, torch.tensor([0.0625, 1.5625]), atol=1e-6)


def test_expected_value_is_softmax_of_label_logits():
    # uniform logits -> mean of the values; a shift of all label logits changes nothing
    assert L.expected_value(torch.zeros(1, 5), LEVELS5).item() == pytest.approx(3.0)
    logits = torch.tensor([[0.3, -1.2, 2.0, 0.1, 0.7]])
    assert torch.allclose(L.expected_value(logits, LEVELS5), L.expected_value(logits + 17.0, LEVELS5), atol=1e-5)
    with pytest.raises(ValueError, match="label values"):
        L.expected_value(logits, [0, 1])
    with pytest.raises(ValueError, match="target shape"):
        L.token_focus_mse(logits, LEVELS5, torch.tensor([1.0, 2.0]))


def test_gradient_reaches_only_label_columns():
    full = torch.randn(3, VOCAB, requires_grad=True)
    label_logits = full[:, LABEL_IDS]
    L.token_focus_mse(label_logits, LEVELS5, torch.tensor([1.5, 4.0, 3.3])).backward()
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[LABEL_IDS] = False
    assert torch.all(full.grad[:, others] == 0)
    assert torch.all(full.grad[:, LABEL_IDS].abs().sum(0) > 0)


def test_model_gradient_only_through_label_rows_of_lm_head():
    model = tiny_qwen2().train()
    logits = L.answer_label_logits(model, left_padded_text(), LABEL_IDS)
    L.token_focus_mse(logits, LEVELS5, torch.tensor([1.0, 4.5, 2.2])).backward()
    grad = model.lm_head.weight.grad
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[LABEL_IDS] = False
    assert torch.all(grad[others] == 0)
    assert torch.all(grad[LABEL_IDS].abs().sum(1) > 0)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- soft labels
def test_soft_labels_sum_to_one_and_keep_the_mean():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        mean = (torch.rand(3000, generator=g, dtype=torch.float64) * 4 + 1).to(dtype)
        std = (torch.rand(3000, generator=g, dtype=torch.float64) * 2).to(dtype)
        std[:300] = 0.0
        p = L.soft_label_targets(mean, std, LEVELS5)
        assert p.dtype == dtype and p.shape == (3000, 5)
        assert torch.all(p >= 0)
        assert torch.allclose(p.sum(1), torch.ones((), dtype=dtype), atol=1e-6)
        ev = p.double() @ torch.tensor(LEVELS5, dtype=torch.float64)
        assert (ev - mean.double()).abs().max().item() < 1e-6


def test_soft_labels_are_gaussian_shaped():
    p = L.soft_label_targets(torch.tensor([3.0, 3.0, 4.2]), torch.tensor([0.6, 1.2, 0.8]), LEVELS5)
    assert torch.allclose(p[0], p[0].flip(0), atol=1e-6)  # symmetric around the centre level
    assert p[0].argmax() == 2 and p[0, 2] > p[1, 2]  # wider std -> flatter
    # N(3, 0.6) binned over [2.5, 3.5]: 2 * Phi(0.5/0.6) - 1, before the (tiny) truncation
    assert p[0, 2].item() == pytest.approx(math.erf(0.5 / 0.6 / math.sqrt(2)), abs=0.01)
    assert p[2].argmax() == 3 and torch.all(p[2] > 0)


def test_soft_labels_near_zero_std_split_between_neighbours():
    p = L.soft_label_targets(torch.tensor([3.4, 1.0, 5.0, 2.75]), torch.tensor([0.0, 0.0, 1e-4, 0.01]), LEVELS5)
    expected = torch.tensor([[0, 0, 0.6, 0.4, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0.25, 0.75, 0, 0]])
    assert torch.allclose(p, expected, atol=1e-6)
    # just above the threshold the Gaussian degenerates smoothly to the same split
    q = L.soft_label_targets(torch.tensor([3.4]), torch.tensor([0.06]), LEVELS5)
    assert torch.allclose(q, expected[:1], atol=1e-3)


def test_soft_labels_binary():
    mean = torch.tensor([0.0, 0.3, 0.5, 0.67, 1.0])
    for std in (0.0, 0.4, torch.tensor([0.1, 0.5, 0.2, 0.0, 0.3])):
        p = L.soft_label_targets(mean, std, [0, 1])
        assert torch.allclose(p, torch.stack([1 - mean, mean], 1), atol=1e-7)


def test_soft_labels_reject_bad_input():
    with pytest.raises(ValueError, match="outside the levels"):
        L.soft_label_targets(torch.tensor([5.5]), 0.5, LEVELS5)
    with pytest.raises(ValueError, match="increasing"):
        L.soft_label_targets(torch.tensor([2.0]), 0.5, [3, 2, 1])
    with pytest.raises(ValueError, match="std"):
        L.soft_label_targets(torch.tensor([2.0]), -1.0, LEVELS5)
    with pytest.raises(ValueError, match="stds for"):
        L.soft_label_targets(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([0.5, 0.5]), LEVELS5)


def test_soft_label_ce_by_hand_and_minimum():
    target = torch.tensor([[0.1, 0.2, 0.7]])
    logits = torch.tensor([[0.5, -0.5, 1.0]])
    by_hand = -(target * torch.log_softmax(logits, -1)).sum()
    assert L.soft_label_ce(logits, target).item() == pytest.approx(by_hand.item(), abs=1e-6)
    at_target = torch.log(target).requires_grad_(True)
    L.soft_label_ce(at_target, target).backward()
    assert at_target.grad.abs().max().item() < 1e-6


# ----------------------------------------------------------------------------- answer position
def _last_position_gather(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits[:, -1][:, LABEL_IDS].float()


@pytest.mark.parametrize("build, make_inputs", [(tiny_qwen2, left_padded_text),
                                                (tiny_qwen2_5_vl, qwen_vl_inputs),
                                                (tiny_internvl, internvl_inputs)],
                         ids=["qwen2", "qwen2.5-vl", "internvl"])
def test_answer_label_logits_equal_full_logits_gather(build, make_inputs):
    model, inputs = build(), make_inputs()
    with torch.no_grad():
        got = L.answer_label_logits(model, inputs, LABEL_IDS)
    assert got.shape == (len(inputs["input_ids"]), len(LABEL_IDS)) and got.dtype == torch.float32
    torch.testing.assert_close(got, _last_position_gather(model, inputs), atol=1e-6, rtol=0)


def test_answer_label_logits_never_builds_sequence_logits():
    model, inputs = tiny_qwen2(), left_padded_text()
    shapes = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    L.answer_label_logits(model, inputs, LABEL_IDS)
    handle.remove()
    assert shapes == [(3, 1, VOCAB)]


def test_answer_label_logits_without_logits_to_keep_argument():
    class NoKeep(torch.nn.Module):  # a remote-code style forward without logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.language_model = inner

        def forward(self, input_ids, attention_mask):
            return self.language_model(input_ids=input_ids, attention_mask=attention_mask)

    inner = tiny_qwen2()
    model, inputs = NoKeep(inner), left_padded_text()
    shapes = []
    handle = inner.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    with torch.no_grad():
        got = L.answer_label_logits(model, inputs, LABEL_IDS)
    handle.remove()
    assert shapes == [(3, 1, VOCAB)]
    torch.testing.assert_close(got, _last_position_gather(inner, inputs), atol=1e-6, rtol=0)
    assert not inner.lm_head._forward_pre_hooks  # the slicing hook is removed again


def test_answer_label_logits_through_peft():
    from peft import LoraConfig, get_peft_model

    model = tiny_qwen2()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    inputs = left_padded_text()
    with torch.no_grad():
        got = L.answer_label_logits(peft_model, inputs, LABEL_IDS)
    torch.testing.assert_close(got, _last_position_gather(peft_model, inputs), atol=1e-6, rtol=0)


def test_answer_label_logits_rejects_right_padding_and_bad_ids():
    model, inputs = tiny_qwen2(), left_padded_text()
    right = {"input_ids": inputs["input_ids"].flip(1), "attention_mask": inputs["attention_mask"].flip(1)}
    with pytest.raises(ValueError, match="left-padded"):
        L.answer_label_logits(model, right, LABEL_IDS)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        L.answer_label_logits(model, inputs, torch.tensor([3, VOCAB]))
    with pytest.raises(ValueError, match="1-D integer"):
        L.answer_label_logits(model, inputs, torch.tensor([[3, 4]]))


# ----------------------------------------------------------------------------- SFT and dispatch
def test_full_vocab_sft_loss_matches_transformers_loss():
    model, inputs = tiny_qwen2(), left_padded_text()
    labels = torch.full_like(inputs["input_ids"], L.IGNORE_INDEX)
    labels[:, -2:] = inputs["input_ids"][:, -2:]  # answer + end-of-turn
    ours = L.full_vocab_sft_loss(model, inputs, labels)
    theirs = model(**inputs, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    with pytest.raises(ValueError, match="no labelled token"):
        L.full_vocab_sft_loss(model, inputs, torch.full_like(labels, L.IGNORE_INDEX))


def test_compute_loss_dispatch():
    model, inputs = tiny_qwen2(), left_padded_text()
    target, std = torch.tensor([1.5, 4.0, 3.2]), torch.tensor([0.5, 0.0, 1.0])
    with torch.no_grad():
        logits = L.answer_label_logits(model, inputs, LABEL_IDS)
        mse = L.compute_loss("mse", model, inputs, label_ids=LABEL_IDS, values=LEVELS5, target=target)
        ce = L.compute_loss("soft_ce", model, inputs, label_ids=LABEL_IDS, values=LEVELS5, target=target, std=std)
    assert mse.loss.item() == pytest.approx(L.token_focus_mse(logits, LEVELS5, target).item(), abs=1e-7)
    probs = L.soft_label_targets(target, std, LEVELS5)
    assert ce.loss.item() == pytest.approx(L.soft_label_ce(logits, probs).item(), abs=1e-6)
    torch.testing.assert_close(mse.label_logits, logits)
    labels = torch.full_like(inputs["input_ids"], L.IGNORE_INDEX)
    labels[:, -1] = inputs["input_ids"][:, -1]
    sft = L.compute_loss("sft", model, inputs, label_ids=LABEL_IDS, values=LEVELS5, labels=labels)
    assert sft.label_logits is None and sft.loss.item() > 0
    with pytest.raises(ValueError, match="unknown loss"):
        L.compute_loss("focal", model, inputs, label_ids=LABEL_IDS, values=LEVELS5, target=target)
    with pytest.raises(ValueError, match="needs std"):
        L.compute_loss("soft_ce", model, inputs, label_ids=LABEL_IDS, values=LEVELS5, target=target)


# ----------------------------------------------------------------------------- GPU check script
def _run_gpu_check(*args):
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_gpu_check_exits_cleanly_without_gpu():
    res = _run_gpu_check()
    assert res.returncode == 0, res.stderr
    assert "no CUDA GPU" in res.stdout


def test_gpu_check_smoke_runs_on_cpu():
    res = _run_gpu_check("--smoke")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "samples/s" in res.stdout and "LoRA" in res.stdout
