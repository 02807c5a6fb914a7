"""Loading the configured bases and the trained fold adapters on top of them."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import Config, ModelConfig

log = logging.getLogger("tokenfocus")


def device() -> str:
    """This process's device: its own GPU under a multi-process launcher (LOCAL_RANK), else cuda:0 / cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"


def model_dtype(mcfg: ModelConfig) -> str:
    """'auto': bfloat16 where CUDA supports it, float32 on a CPU."""
    if mcfg.dtype != "auto":
        return mcfg.dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def base_path(cfg: Config, mcfg: ModelConfig) -> str:
    """What from_pretrained gets: the hub id as written (``hub: true``), else the local directory."""
    return mcfg.path if mcfg.hub else str(cfg.path(mcfg.path))


def qlora_config(mcfg: ModelConfig):
    """bitsandbytes 4-bit NF4 with double quantisation (QLoRA), computing in the model's dtype
    (bfloat16 on a GPU; float32 on a CPU, where bitsandbytes' CPU backend runs it, slowly). The
    vision tower, the projector and the LM head stay unquantised: the first two are fully
    trained at vision_lr (a 4-bit weight cannot take gradients)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(f"model {mcfg.name}: qlora needs bitsandbytes (pip install -r requirements.txt "
                           "installs it)") from None
    from transformers import BitsAndBytesConfig

    from .lvlm.base import adapter_class

    # transformers matches these as regexes from the start of a module's full name.
    keep = [rf"(.*\.)?{m}" for m in adapter_class(mcfg.family, mcfg.trust_remote_code).vision_modules] + ["lm_head"]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, model_dtype(mcfg)),
                              llm_int8_skip_modules=keep)


def load_model_adapter(cfg: Config, mcfg: ModelConfig, qlora: bool | None = None):
    """The base model of ``mcfg`` behind its family adapter, 4-bit when ``qlora`` (default: the
    model's training setting, so that a model trained on a 4-bit base is scored on it too)."""
    from .lvlm import load_adapter

    if qlora is None:
        qlora = mcfg.training_config(cfg.training).qlora
    options = {k: v for k, v in (("min_pixels", mcfg.min_pixels), ("max_pixels", mcfg.max_pixels)) if v is not None}
    kwargs = {}
    if qlora:
        kwargs["quantization_config"] = qlora_config(mcfg)
    adapter = load_adapter(mcfg.family, base_path(cfg, mcfg), dtype=model_dtype(mcfg), device=device(),
                           trust_remote_code=mcfg.trust_remote_code, model_kwargs=kwargs, **options)
    log.info("loaded %s (%s) from %s: %.2fM parameters", mcfg.name, mcfg.family, mcfg.path,
             adapter.num_parameters() / 1e6)
    return adapter


def check_adapter_questions(cfg: Config, mcfg: ModelConfig, adapter_dir: Path) -> None:
    """Refuse to score with a fold adapter trained on other questions than the config asks now
    (another wording or number of total levels, from its ``train_done.json`` record): its label
    logits would be read off questions it never learned to answer."""
    from .config import ConfigError
    from .data import read_json
    from .prompts import FIRST_RECORDED_TEMPLATES, question_templates
    from .questions import label_set_of

    done = Path(adapter_dir) / "train_done.json"
    if not done.is_file():
        return
    made = read_json(done).get("made_with")
    if made is None:   # published before adapters recorded what they were made with
        return
    recorded = made.get("question templates", FIRST_RECORDED_TEMPLATES)
    now = question_templates(label_set_of(mcfg.training_config(cfg.training).total_levels).total_tokens)
    changed = [task for task in now if recorded.get(task) != now[task]]
    if changed:
        raise ConfigError(f"{adapter_dir}: trained on other {' and '.join(changed)} question wording than "
                          f"{cfg.source} asks now (train_done.json, made_with['question templates']); "
                          "retrain it (stage 03 --force) or restore the wording")


def load_trained(cfg: Config, mcfg: ModelConfig, adapter_dir: Path, adapter=None, merge: bool = True):
    """Base adapter + the fold's LoRA (and fully trained vision weights) in eval mode.

    With ``merge`` (the default) the LoRA deltas are folded into the base weights, so scoring
    costs what the base costs (about 2x faster than the unmerged model on the tiny bases). The
    base of ``adapter`` is changed in place: pass a freshly loaded one per fold. A 4-bit base
    keeps its LoRA unmerged (merging into quantized weights would round them).
    """
    from peft import PeftModel

    check_adapter_questions(cfg, mcfg, adapter_dir)
    adapter = adapter or load_model_adapter(cfg, mcfg)
    model = PeftModel.from_pretrained(adapter.model, str(adapter_dir)).eval()
    if merge and not getattr(adapter.model, "is_quantized", False):
        model = model.merge_and_unload().eval()
        adapter.model = model
    return adapter, model
