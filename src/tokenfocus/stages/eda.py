"""Stage 01: exploratory data analysis."""
from __future__ import annotations

from ..config import Config
from ..eda import write_report
from ..experiment import load_split
from .common import _skip


def run_eda(cfg: Config, force: bool = False) -> str | None:
    """Stage 01: counts and label distributions as PNG plots and a markdown summary."""
    out = cfg.exp_dir / "eda"
    if _skip([out / "summary.md"], force, "eda"):
        return None
    summary = write_report(load_split(cfg, "train"), load_split(cfg, "test"), out)
    n_plots = sum(f.endswith(".png") for f in summary["files"])
    return f"EDA: {n_plots} plots and summary.md in {out}"
