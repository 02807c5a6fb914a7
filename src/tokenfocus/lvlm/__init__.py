"""LVLM adapters: one small class per model family behind ``load_adapter``."""

from . import internvl, qwen2_5_vl  # noqa: F401  (registers the families)
from .base import IGNORE_INDEX, LVLMAdapter, families, load_adapter, read_checkpoint_config, register

__all__ = ["IGNORE_INDEX", "LVLMAdapter", "families", "load_adapter", "read_checkpoint_config", "register"]
