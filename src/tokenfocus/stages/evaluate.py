"""Stage 06: a submission scored against a truth file."""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..io import write_json
from ..metrics import evaluate_files, format_table
from .common import noise_ceiling
from .ensemble import final_submission


def evaluate_submission(cfg: Config, force: bool = False, truth: str | None = None,
                        submission: str | None = None, json_out: str | None = None) -> str:
    """Stage 06: score a submission against a truth file; the demo's noise ceiling beside it."""
    truth_path = Path(truth) if truth else cfg.eval_path
    if truth_path is None or not truth_path.is_file():
        raise FileNotFoundError(f"{cfg.source}: no truth file to score against (dataset.eval_file, or --truth)")
    sub = Path(submission) if submission else final_submission(cfg)
    result = evaluate_files(truth_path, sub)
    lines = [f"submission: {sub}", f"truth:      {truth_path}", format_table(result)]
    ceiling = noise_ceiling(cfg)
    if ceiling is not None and not truth:
        lines.append(f"noise ceiling Final {ceiling['final']:.4f}: this submission reaches "
                     f"{result['final'] / ceiling['final']:.1%} of it ({ceiling['final'] - result['final']:+.4f} to go)")
    # The experiment's own evaluation is kept beside it; an ad-hoc one only where asked.
    out = Path(json_out) if json_out else (None if truth or submission else cfg.exp_dir / "evaluation.json")
    if out is not None:
        write_json(out, {"submission": str(sub), "truth": str(truth_path), **result})
    return "\n".join(lines)
