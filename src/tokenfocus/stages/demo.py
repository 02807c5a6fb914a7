"""Stage 00: the demo dataset."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..config import Config
from ..demo.build import format_summary, make_demo_dataset
from .common import log


def make_demo(cfg: Config, force: bool = False, out: str | None = None, seed: int | None = None) -> str | None:
    """Stage 00: render the demo dataset into ``dataset.root`` (only for configs with ``demo:``)."""


    if cfg.demo is None:
        log.info("make_demo: %s has no 'demo' section; nothing to render", cfg.source)
        return None
    spec = cfg.demo if seed is None else replace(cfg.demo, seed=seed)
    return format_summary(make_demo_dataset(Path(out) if out else cfg.data_root, spec, force=force))
