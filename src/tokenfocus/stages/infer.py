"""Stage 04: every dump (prior, zero-shot bases, fine-tuned models, ablation variants) and the
tables beside them."""
from __future__ import annotations

import pandas as pd

from ..config import Config
from ..experiment import model_folds
from ..infer import bag_test, infer_model, model_dumps_done, oof_scores, zeroshot_model
from ..io import write_csv, write_parquet
from ..parallel import process_state, run_units
from .ablation import ablation_table
from .baseline import run_prior_baseline
from .common import score_rows


def run_inference(cfg: Config, force: bool = False, jobs: int | str | None = None) -> pd.DataFrame:
    """Stage 04: OOF and test dumps of the prior, every untuned base (zero-shot), every
    fine-tuned model and every ablation variant; oof_scores.csv, bagged test predictions and
    ablation.csv beside them. On a CPU, up to ``jobs`` (default: the config's) folds are scored
    side by side (see ``tokenfocus.parallel``); under ``accelerate launch`` the (model, fold)
    units are shared out over the processes (one GPU each) and the main process writes the
    tables once all are done (the others return None)."""
    state = process_state()  # several processes under accelerate launch: the units are shared out
    with state.main_process_first():
        prior = run_prior_baseline(cfg, force=force and state.is_main_process)
    preds_dir = cfg.exp_dir / "preds"
    calls, names = [], []
    # The zero-shot units (every record of one base) are the longest: they go first.
    for m in cfg.models if cfg.zeroshot else []:
        if force or not model_dumps_done(cfg, f"zeroshot_{m.name}", range(cfg.folds.n_folds)):
            calls.append((zeroshot_model, (cfg, m, force)))
            names.append(f"zeroshot_{m.name}")
    for m in cfg.models + cfg.ablation_models():
        for k in model_folds(cfg, m):
            if force or not model_dumps_done(cfg, m.name, [k]):
                calls.append((infer_model, (cfg, m, force, k)))
                names.append(f"{m.name}/fold{k}")
    state.wait_for_everyone()  # every process has listed the same units before any is written
    run_units(calls, cfg.jobs if jobs is None else jobs, desc="score", names=names, distribute=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    full = ["prior"] + [m.name for m in cfg.models] + ([f"zeroshot_{m.name}" for m in cfg.models] if cfg.zeroshot else [])
    scores = oof_scores(preds_dir, full)
    write_csv(cfg.exp_dir / "oof_scores.csv", scores)
    for m in full:
        write_parquet(cfg.exp_dir / "bagged" / f"{m}.parquet", bag_test(preds_dir, m))
    if cfg.ablation is not None:
        write_csv(cfg.exp_dir / "ablation.csv", ablation_table(cfg))
    pooled = scores[scores["fold"] == "pooled"].set_index("model")
    results = {f"{m} oof": pooled.loc[m] for m in pooled.index}
    if "test" in prior:
        results["prior test"] = prior["test"]
    if "noise_ceiling" in prior:
        results["noise ceiling test"] = prior["noise_ceiling"]
    return score_rows(results)
