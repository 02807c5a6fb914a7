"""Loading the configured bases and the trained fold adapters on top of them."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .config import Config, ModelConfig

log = logging.getLogger("tokenfocus")


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dtype(mcfg: ModelConfig) -> str:
    """'auto': bfloat16 where CUDA supports it, float32 on a CPU."""
    if mcfg.dtype != "auto":
        return mcfg.dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def base_path(cfg: Config, mcfg: ModelConfig) -> str:
    """A local checkpoint resolved against the repository root, or the hub id as given."""
    local = cfg.path(mcfg.path)
    return str(local) if local.is_dir() else mcfg.path


def load_model_adapter(cfg: Config, mcfg: ModelConfig, qlora: bool | None = None):
    """The base model of ``mcfg`` behind its family adapter, 4-bit when ``qlora`` (default: the
    model's training setting, so that a model trained on a 4-bit base is scored on it too)."""
    from .lvlm import load_adapter

    if qlora is None:
        qlora = mcfg.training_config(cfg.training).qlora
    options = {k: v for k, v in (("min_pixels", mcfg.min_pixels), ("max_pixels", mcfg.max_pixels)) if v is not None}
    kwargs = {}
    if qlora:
        if not torch.cuda.is_available():
            raise RuntimeError(f"model {mcfg.name}: qlora needs a CUDA GPU (bitsandbytes 4-bit)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
    adapter = load_adapter(mcfg.family, base_path(cfg, mcfg), dtype=model_dtype(mcfg), device=device(),
                           trust_remote_code=mcfg.trust_remote_code, model_kwargs=kwargs, **options)
    log.info("loaded %s (%s) from %s: %.2fM parameters", mcfg.name, mcfg.family, mcfg.path,
             adapter.num_parameters() / 1e6)
    return adapter


def load_trained(cfg: Config, mcfg: ModelConfig, adapter_dir: Path, adapter=None, merge: bool = True):
    """Base adapter + the fold's LoRA (and fully trained vision weights) in eval mode.

    With ``merge`` (the default) the LoRA deltas are folded into the base weights, so scoring
    costs what the base costs (about 2x faster than the unmerged model on the tiny bases). The
    base of ``adapter`` is changed in place: pass a freshly loaded one per fold. A 4-bit base
    keeps its LoRA unmerged (merging into quantized weights would round them).
    """
    from peft import PeftModel

    adapter = adapter or load_model_adapter(cfg, mcfg)
    model = PeftModel.from_pretrained(adapter.model, str(adapter_dir)).eval()
    if merge and not getattr(adapter.model, "is_quantized", False):
        model = model.merge_and_unload().eval()
        adapter.model = model
    return adapter, model
