"""What every stage notebook starts with: the repository, the experiment's config, display
settings, and a plain message where a stage output is not there yet.

    from tokenfocus.notebook import start, present, rel
    cfg, EXP = start()          # the demo, or TOKENFOCUS_CONFIG=configs/X.yaml
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from tokenfocus.config import CONFIG_ENV, DEFAULT_CONFIG, REPO_ROOT, Config, load_config


def rel(path) -> Path:
    """A path as shown: relative to the repository when it lies inside it."""
    path = Path(path)
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def present(path, written_by: str) -> bool:
    """True when a stage output exists; otherwise print which stage writes it."""
    if Path(path).exists():
        return True
    print(f"not there yet: {rel(path)} (written by {written_by})")
    return False


def start(config: str | os.PathLike | None = None) -> tuple[Config, Path]:
    """Load the experiment (``config``, else $TOKENFOCUS_CONFIG, else the demo), set the display
    options, and fail with the command to run when its dataset is not there.
    Returns the config and the experiment's output folder."""
    # Without ipywidgets tqdm falls back to text bars; its warning about that is noise here.
    warnings.filterwarnings("ignore", message="IProgress not found")
    cfg = load_config(REPO_ROOT / (config or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG))
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_colwidth", 90)
    pd.set_option("display.width", 160)
    if not cfg.train_path.is_file():
        raise FileNotFoundError(f"{cfg.train_path}: dataset not found; run `bash run_all.sh` first "
                                "(stage 00 renders the demo)")
    print(f"experiment {cfg.name!r}: outputs in {rel(cfg.exp_dir)}")
    return cfg, cfg.exp_dir
