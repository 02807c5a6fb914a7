"""Stage 05: bagging, stacking and blending into the leaderboard and the submission."""
from __future__ import annotations

from pathlib import Path

from ..config import Config, check_inputs
from ..ensemble import ensemble_stage, format_leaderboard
from ..experiment import check_training_data


def run_ensemble(cfg: Config, force: bool = False) -> str:
    """Stage 05: bagging, stacking and blending -> leaderboard.csv, submission.zip, plots."""
    check_inputs(cfg)
    check_training_data(cfg)
    lb = ensemble_stage(cfg, force=force)
    return "\n".join([format_leaderboard(lb), f"best method: {lb.attrs.get('best_method')}",
                      f"leaderboard: {cfg.exp_dir / 'leaderboard.csv'}", f"submission: {lb.attrs['submission']}"])


def final_submission(cfg: Config) -> Path:
    """The experiment's submission: the ensemble's when it exists, else the prior baseline's."""
    for p in (cfg.exp_dir / "submission" / "submission.zip", cfg.exp_dir / "baselines" / "prior" / "submission.zip"):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{cfg.exp_dir}: no submission.zip yet (run the earlier stages)")
