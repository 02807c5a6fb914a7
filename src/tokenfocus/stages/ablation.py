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
    Where the test truth is known (the demo), ``test_*`` columns score each variant's test
    predictions (the mean over its ablation-fold models) beside them."""


    preds_dir = cfg.exp_dir / "preds"
    folds = set(cfg.ablation.folds)
    sources = {"zero-shot (untuned base)": f"zeroshot_{cfg.ablation.model}", **cfg.ablation_sources()}
    frames = {}
    for variant, model in sources.items():
        oof = read_model_dumps(preds_dir, model, "oof")
        frames[variant] = oof[oof["fold"].isin(folds)].reset_index(drop=True)
    prompts = np.array(sorted(next(iter(frames.values()))["prompt_id"].astype(str).unique()))
    rng = np.random.default_rng(cfg.seed)
    draws = [rng.choice(prompts, len(prompts), replace=True) for _ in range(n_boot)]
    boot = {}
    for variant, df in frames.items():
        groups = df.groupby(df["prompt_id"].astype(str)).indices
        finals = []
        for d in draws:
            part = df.iloc[np.concatenate([groups[p] for p in d])].copy()
            # Repeated prompts become distinct images, as the bootstrap intends.
            part["img_path"] = part["img_path"] + "#" + np.repeat(np.arange(len(d)),
                                                                  [len(groups[p]) for p in d]).astype(str)
            finals.append(score_predictions(part)["final"])
        boot[variant] = np.array(finals)
    reference = list(sources)[1] if len(sources) > 1 else list(sources)[0]
    reference_final = score_predictions(frames[reference])["final"]
    truth = load_truth_records(cfg)
    truth = truth_frame(truth) if truth else None
    rows = []
    for variant, model in sources.items():
        r = score_predictions(frames[variant])
        delta = boot[variant] - boot[reference]
        row = {"variant": variant, "model": model, "folds": " ".join(map(str, sorted(folds))),
               **{k: r[k] for k in ("srcc", "plcc", "acc", "final")},
               "final_sd": float(boot[variant].std(ddof=1)),
               "delta": float(r["final"] - reference_final),
               "delta_sd": float(delta.std(ddof=1))}
        if truth is not None:
            row.update({f"test_{k}": v for k, v in _test_scores(preds_dir, model, folds, truth).items()})
        rows.append(row)
    return pd.DataFrame(rows)


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
