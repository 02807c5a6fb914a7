"""What the stage modules share: the skip rule, the truth files, score tables."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..config import Config, ConfigError, settings_diff
from ..data import read_json
from ..experiment import record_settings, recorded_settings

log = logging.getLogger("tokenfocus")


def _skip(outputs: list[Path], force: bool, stage: str, cfg: Config | None = None,
          settings: dict | None = None) -> bool:
    """Whether the stage's outputs exist and may be kept. With ``settings`` (the config values
    the outputs depend on), outputs made with other values stop the run with a message naming
    each changed setting; ``record_settings`` stores them once the outputs are written."""
    if force or not all(p.exists() for p in outputs):
        return False
    if settings is not None:
        made = recorded_settings(cfg).get(stage)
        if made is None:  # made before settings were recorded: take them as made with these
            record_settings(cfg, stage, settings)
        elif made != settings:
            changed = "; ".join(settings_diff(made, settings))
            raise ConfigError(f"{cfg.source}: {changed} (since {outputs[0]} was made). Run this stage with "
                              f"--force to redo it, and retrain what was made from it, or restore the setting")
    log.info("%s: outputs exist, skipping (use --force to redo): %s", stage, outputs[0])
    return True


def load_truth_records(cfg: Config) -> list[dict] | None:
    p = cfg.eval_path
    return read_json(p) if p is not None and p.is_file() else None


def noise_ceiling(cfg: Config) -> dict | None:
    """SRCC/PLCC/ACC/Final of a predictor that knows the true scene (demo only)."""
    p = cfg.noise_ceiling_path
    return read_json(p)["noise_ceiling"] if p is not None and p.is_file() else None


def score_rows(results: dict[str, dict]) -> pd.DataFrame:
    """{'method/split': metrics} -> a small table for printing."""
    rows = [{"method": k, **{m: round(float(v[m]), 4) for m in ("srcc", "plcc", "acc", "final")}}
            for k, v in results.items()]
    return pd.DataFrame(rows)
