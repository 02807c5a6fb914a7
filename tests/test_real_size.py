"""The real experiments' models at their real sizes, on the meta device (no weights, no GPU).

Each real config's base is built from its hub config.json numbers (``configs/hub/``, written in
the repository since no hub is reachable here), LoRA and the optimizer's parameter groups are
applied exactly as stage 03 applies them, and the result is checked: LoRA on the language
model's linear layers only, the vision tower and projector trained at ``vision_lr``, and the
trainable parameter count (printed in the README's real-experiments table). QLoRA's 4-bit
quantisation needs real weights; it leaves the LoRA placement and counts unchanged, so it is
skipped here (tests/test_train.py runs the QLoRA path on a tiny base). This is the closest a
CPU machine gets to the real run.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from transformers import CONFIG_MAPPING

from tokenfocus import prompts
from tokenfocus.config import REPO_ROOT, load_config
from tokenfocus.lvlm import load_adapter
from tokenfocus.lvlm.base import adapter_class
from tokenfocus.train import optimizer_groups, prepare_model

REAL_CONFIGS = ("qwen2_5_vl_7b.yaml", "internvl3_8b.yaml", "internvl3_38b.yaml")
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def hub_config(hub_id: str) -> dict:
    """The config.json numbers of a hub checkpoint, as kept in configs/hub/."""
    data = json.loads((REPO_ROOT / "configs" / "hub" / f"{hub_id.replace('/', '--')}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def meta_model(family: str, hub_id: str):
    data = hub_config(hub_id)
    cls = adapter_class(family)
    config = CONFIG_MAPPING[data.pop("model_type")](**data)
    with torch.device("meta"):
        model = cls.model_class(config)
    adapter = cls.__new__(cls)  # the family's parameter rules around a weightless model
    adapter.model = model
    return adapter


def real_size_report(config_name: str) -> dict:
    cfg = load_config(REPO_ROOT / "configs" / config_name)
    mcfg = cfg.models[0]
    tcfg = mcfg.training_config(cfg.training)
    adapter = meta_model(mcfg.family, mcfg.path)
    base = {n: p.numel() for n, p in adapter.model.named_parameters()}
    shapes = {n: m for n, m in adapter.model.named_modules() if isinstance(m, torch.nn.Linear)}
    model = prepare_model(adapter, replace(tcfg, qlora=False))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = optimizer_groups(model, tcfg, adapter.is_vision_param, set(names), tcfg.weight_decay)
    return {"cfg": cfg, "tcfg": tcfg, "adapter": adapter, "model": model, "base": base, "linears": shapes,
            "trainable": names, "groups": groups,
            "n_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


@pytest.mark.parametrize("config_name", REAL_CONFIGS)
def test_real_size_lora_and_parameter_groups(config_name):
    r = real_size_report(config_name)
    tcfg, adapter, model = r["tcfg"], r["adapter"], r["model"]
    lora = [n for n in r["trainable"] if ".lora_" in n]
    assert lora, "no LoRA parameters"
    for n in lora:  # LoRA on the language model's linear layers only
        assert "language_model" in n and not adapter.is_vision_param(n), n
        assert re.search(r"\.(" + "|".join(LINEAR_NAMES) + r")\.lora_[AB]\.", n), n
    other = [n for n in r["trainable"] if ".lora_" not in n]
    assert other and all(adapter.is_vision_param(n) for n in other), [n for n in other if not adapter.is_vision_param(n)][:5]
    # Every language-model linear layer of the seven kinds carries LoRA; none outside it.
    targeted = {n for n in r["linears"] if "language_model" in n and n.rsplit(".", 1)[-1] in LINEAR_NAMES}
    with_lora = {n.split(".lora_")[0].removeprefix("base_model.model.") for n in lora}
    assert with_lora == targeted
    # Count: r * (in + out) per targeted layer, plus the whole vision tower and projector.
    expected_lora = sum(tcfg.lora_r * (m.in_features + m.out_features) for n, m in r["linears"].items() if n in targeted)
    expected_vision = sum(v for n, v in r["base"].items() if adapter.is_vision_param(n))
    assert r["n_trainable"] == expected_lora + expected_vision
    # Two learning rates: vision at vision_lr, LoRA at lr (ids: the groups hold the same tensors).
    by_id = {id(p): n for n, p in model.named_parameters()}
    for g in r["groups"]:
        kinds = {adapter.is_vision_param(by_id[id(p)]) for p in g["params"]}
        assert len(kinds) == 1
        assert g["lr"] == (tcfg.vision_lr if kinds.pop() else tcfg.lr)
    assert sum(len(g["params"]) for g in r["groups"]) == len(r["trainable"])
    # The LoRA groups first: the Trainer's progress line reports the first group's rate.
    assert not adapter.is_vision_param(by_id[id(r["groups"][0]["params"][0])])
    print(f"{config_name}: LoRA r{tcfg.lora_r} on {r['cfg'].models[0].path}: {expected_lora / 1e6:.1f}M LoRA + "
          f"{expected_vision / 1e6:.1f}M vision = {r['n_trainable'] / 1e6:.1f}M trainable of "
          f"{sum(r['base'].values()) / 1e9:.2f}B")


def test_label_tokens_are_single_ids_with_qwen_digit_handling():
    """Qwen2.5's pre-tokenizer splits digits one by one; the tiny bases' tokenizer uses the same
    split, so every label of the scoring questions must be one id there (the real run checks its
    own tokenizer at load, as this does)."""
    adapter = load_adapter("qwen2_5_vl", str(REPO_ROOT / "input/pretrained/tiny-qwen2.5-vl"))
    tok = adapter.tokenizer
    assert tok("12345", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(d) for d in "12345"]
    for labels in (prompts.TOTAL_LABELS, prompts.ELEMENT_LABELS):
        ids = adapter.label_ids(list(labels))  # raises unless each is exactly one token
        assert len(set(ids)) == len(labels)
