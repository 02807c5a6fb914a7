"""The ablation table: variants side by side on the ablation folds, with bootstrap noise."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import Config
from ..ensemble import truth_frame
from ..infer import read_model_dumps, score_predictions
from .common import load_truth_records

ABLATION_BOOTSTRAP = 200


def ablation_table(cfg: Config, n_boot: int = ABLATION_BOOTSTRAP) -> pd.DataFrame:
    """The ablation variants side by side on the OOF predictions of the ablation folds, with a
    noise estimate: a bootstrap over prompts (the same resampled prompts for every variant)
    gives each Final's standard deviation and, paired, that of its difference to the first
    fine-tuned variant (``delta`` / ``delta_sd``), so a difference can be read against noise.
    With ``ablation.seeds`` every fine-tuned variant has several training runs: its row holds
    the mean over them (``runs``; each metric the mean of the runs' scores), ``run_sd`` the sd
    of the runs' Finals (the training run's own noise, which the bootstrap does not see),
    ``final_sd`` the bootstrap sd of the mean, and ``delta_sd`` adds both variants'
    run_sd / sqrt(runs) to the paired bootstrap's. Where the test truth is known (the demo),
    ``test_*`` columns score each run's test predictions (the mean over its ablation-fold
    models), averaged over the runs."""
    preds_dir = cfg.exp_dir / "preds"
    folds = set(cfg.ablation.folds)
    sources = {"zero-shot (untuned base)": [f"zeroshot_{cfg.ablation.model}"], **cfg.ablation_sources()}
    frames = {}
    for model in dict.fromkeys(m for runs in sources.values() for m in runs):
        oof = read_model_dumps(preds_dir, model, "oof")
        frames[model] = oof[oof["fold"].isin(folds)].reset_index(drop=True)
    prompts = np.array(sorted(next(iter(frames.values()))["prompt_id"].astype(str).unique()))
    rng = np.random.default_rng(cfg.seed)
    draws = [rng.choice(prompts, len(prompts), replace=True) for _ in range(n_boot)]
    boot = {model: _bootstrap_finals(df, draws) for model, df in frames.items()}
    truth = load_truth_records(cfg)
    truth = truth_frame(truth) if truth else None
    metrics = ("srcc", "plcc", "acc", "final")
    summary = {}
    for variant, runs in sources.items():
        scores = [score_predictions(frames[m]) for m in runs]
        finals = np.array([r["final"] for r in scores])
        summary[variant] = {
            "scores": {k: float(np.mean([r[k] for r in scores])) for k in metrics},
            "boot": np.mean([boot[m] for m in runs], axis=0),
            "run_var": float(finals.var(ddof=1)) / len(runs) if len(runs) > 1 else 0.0,
            "run_sd": float(finals.std(ddof=1)) if len(runs) > 1 else np.nan,
        }
    reference = summary[list(sources)[1] if len(sources) > 1 else list(sources)[0]]
    rows = []
    for variant, runs in sources.items():
        v = summary[variant]
        delta = v["boot"] - reference["boot"]
        own_noise = 0.0 if v is reference else v["run_var"] + reference["run_var"]
        row = {"variant": variant, "model": " ".join(dict.fromkeys(runs)), "folds": " ".join(map(str, sorted(folds))),
               "runs": len(runs), **v["scores"],
               "final_sd": float(v["boot"].std(ddof=1)),
               "run_sd": v["run_sd"],
               "delta": v["scores"]["final"] - reference["scores"]["final"],
               "delta_sd": float(np.sqrt(delta.var(ddof=1) + own_noise))}
        if truth is not None:
            tests = [_test_scores(preds_dir, m, folds, truth) for m in runs]
            row.update({f"test_{k}": float(np.mean([t[k] for t in tests])) for k in metrics})
        rows.append(row)
    return pd.DataFrame(rows)


def _bootstrap_finals(df: pd.DataFrame, draws: list[np.ndarray]) -> np.ndarray:
    """The Final of ``df`` on each bootstrap draw of prompts."""
    groups = df.groupby(df["prompt_id"].astype(str)).indices
    finals = []
    for d in draws:
        part = df.iloc[np.concatenate([groups[p] for p in d])].copy()
        # Repeated prompts become distinct images, as the bootstrap intends.
        part["img_path"] = part["img_path"] + "#" + np.repeat(np.arange(len(d)),
                                                              [len(groups[p]) for p in d]).astype(str)
        finals.append(score_predictions(part)["final"])
    return np.array(finals)


def _test_scores(preds_dir, model: str, folds: set, truth: pd.DataFrame) -> dict:
    """SRCC / PLCC / ACC / Final on test of the mean prediction of ``model``'s ``folds``."""
    test = read_model_dumps(preds_dir, model, "test")
    test = test[test["fold"].isin(folds)]
    keys = ["img_path", "task", "element_key"]
    mean = test.groupby(keys, sort=False)["pred"].mean().reset_index()
    scored = mean.merge(truth, on=keys, how="inner", validate="one_to_one")
    if len(scored) != len(mean):
        raise ValueError(f"{preds_dir / model}: {len(mean) - len(scored)} test questions have no truth")
    r = score_predictions(scored)
    return {k: r[k] for k in ("srcc", "plcc", "acc", "final")}
