"""The prompt-only prior baseline (stage 04 makes it first): its dumps, a validated
submission and its scores."""
from __future__ import annotations

import time

import pandas as pd

from ..baseline import fit_prior, prior_dumps
from ..config import Config
from ..data import question_frame, read_json
from ..dumps import dump_path, write_dump
from ..experiment import load_folds, load_split
from ..io import write_json
from ..metrics import score, score_frame
from ..submission import build_records, readme_text, write_submission
from .common import _skip, load_truth_records, noise_ceiling


def run_prior_baseline(cfg: Config, force: bool = False) -> dict:
    """The prompt-only prior: OOF and test dumps, a validated submission, and its scores."""
    scores_path = cfg.exp_dir / "baselines" / "prior" / "scores.json"
    if _skip([scores_path], force, "prior baseline"):
        return read_json(scores_path)
    train, test, folds = load_split(cfg, "train"), load_split(cfg, "test"), load_folds(cfg)
    preds_dir = cfg.exp_dir / "preds"
    train = train.merge(folds[["img_path", "fold"]], on="img_path")
    t0 = time.perf_counter()
    oof = {"total": [], "element": []}
    test_preds = {"total": [], "element": []}
    for k in sorted(train["fold"].unique()):
        model = fit_prior(train[train["fold"] != k])
        held = train[train["fold"] == k]
        for split, recs, acc in (("oof", held, oof), ("test", test, test_preds)):
            dumps = prior_dumps(model, recs, "prior", int(k))
            q = question_frame(recs)
            for task, df in dumps.items():
                write_dump(df, dump_path(preds_dir, "prior", task, split, int(k)), q[q["task"] == task], task)
                acc[task].append(df)
    oof_tot, oof_el = pd.concat(oof["total"]), pd.concat(oof["element"])
    oof_scores = score_frame(oof_tot[["img_path", "target", "pred"]],
                             oof_el[["img_path", "element_key", "target", "pred"]])
    # Bagging over folds: every fold model predicts every test question.
    tot = pd.concat(test_preds["total"]).groupby("img_path")["pred"].mean().to_dict()
    el = pd.concat(test_preds["element"]).groupby(["img_path", "element_key"])["pred"].mean().to_dict()
    per_image = (time.perf_counter() - t0) / max(1, len(test))
    reference = read_json(cfg.test_path)
    records = build_records(reference, tot, el)
    readme = readme_text(per_image, cpu=1, extra_data=0, llm=0,
                         description="Prompt-only prior: per-category element positive rate, "
                                     "total linear in the mean element prior; 5-fold bagged.")
    sub = write_submission(cfg.exp_dir / "baselines" / "prior", records, reference, readme)
    result = {"method": "prior", "submission": str(sub), "oof": oof_scores}
    truth = load_truth_records(cfg)
    if truth is not None:
        result["test"] = score(truth, records)
    ceiling = noise_ceiling(cfg)
    if ceiling is not None:
        result["noise_ceiling"] = ceiling
    write_json(scores_path, result)
    return result
