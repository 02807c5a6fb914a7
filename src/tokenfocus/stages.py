"""One function per pipeline stage; the numbered scripts in src/ are thin CLIs over these.

Each stage reads only what earlier stages wrote, writes atomically, and skips work whose outputs
already exist unless ``force`` is set.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pandas as pd

from .config import Config, ConfigError, check_inputs
from .data import DataError, load_records, read_json
from .io import write_csv, write_json

log = logging.getLogger("tokenfocus")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def _skip(outputs: list[Path], force: bool, stage: str) -> bool:
    if not force and all(p.exists() for p in outputs):
        log.info("%s: outputs exist, skipping (use --force to redo): %s", stage, outputs[0])
        return True
    return False


def make_demo(cfg: Config, force: bool = False) -> dict | None:
    """Stage 00: render the demo dataset into ``dataset.root`` (only for configs with ``demo:``)."""
    from .demo.build import DemoSpec, make_demo_dataset

    if cfg.demo is None:
        log.info("make_demo: %s has no 'demo' section; nothing to render", cfg.source)
        return None
    spec = DemoSpec(seed=cfg.demo.seed, n_train_prompts=cfg.demo.n_train_prompts,
                    n_test_prompts=cfg.demo.n_test_prompts, images_per_prompt=cfg.demo.images_per_prompt,
                    image_size=cfg.demo.image_size)
    return make_demo_dataset(cfg.data_root, spec, force=force)


def load_split(cfg: Config, split: str) -> pd.DataFrame:
    check_inputs(cfg)
    df, report = load_records(cfg.train_path if split == "train" else cfg.test_path, with_report=True)
    for line in report.lines():
        log.info(line)
    return df


def run_eda(cfg: Config, force: bool = False) -> dict | None:
    """Stage 01: counts and label distributions as PNG plots and a markdown summary."""
    from .eda import run_eda as eda

    out = cfg.exp_dir / "eda"
    if _skip([out / "summary.md"], force, "eda"):
        return None
    return eda(load_split(cfg, "train"), load_split(cfg, "test"), out)


def make_fold_file(cfg: Config, force: bool = False) -> pd.DataFrame:
    """Stage 02: prompt-grouped, score-stratified folds -> folds.csv; prints per-fold counts."""
    from .folds import check_folds, fold_table, make_folds

    train = load_split(cfg, "train")
    if _skip([cfg.folds_path], force, "folds"):
        folds = pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})
    else:
        folds = make_folds(train, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.n_bins)
        write_csv(cfg.folds_path, folds)
    check_folds(train, folds)
    table = fold_table(train, folds)
    write_csv(cfg.exp_dir / "fold_counts.csv", table)
    return table


def load_folds(cfg: Config) -> pd.DataFrame:
    if not cfg.folds_path.is_file():
        raise FileNotFoundError(f"{cfg.folds_path}: not found (run stage 02 first)")
    return pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})


def load_truth_records(cfg: Config) -> list[dict] | None:
    p = cfg.eval_path
    return read_json(p) if p is not None and p.is_file() else None


def noise_ceiling(cfg: Config) -> dict | None:
    p = cfg.noise_ceiling_path
    return read_json(p) if p is not None and p.is_file() else None


def run_prior_baseline(cfg: Config, force: bool = False) -> dict:
    """The prompt-only prior: OOF and test dumps, a validated submission, and its scores."""
    from .baseline import fit_prior, predict_questions
    from .data import question_frame
    from .dumps import dump_path, write_dump
    from .metrics import score, score_frame
    from .submission import build_records, readme_text, write_submission

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
            dumps = predict_questions(model, recs, "prior", int(k))
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


def validate_dataset(cfg: Config, force: bool = False) -> dict:
    """Parse both record files and decode every image; fail listing every bad path at once."""
    from .data import iter_bad, validate_images

    check_inputs(cfg, need_images=True)
    counts = {}
    bad: list[str] = []
    for split in ("train", "test"):
        df = load_split(cfg, split)
        counts[split] = len(df)
        bad += validate_images(df, cfg.image_dir)
    if bad:
        raise DataError(f"{cfg.image_dir}: {iter_bad(bad)}")
    return {"records": counts, "images_ok": sum(counts.values())}


def run_inference(cfg: Config, force: bool = False) -> dict:
    """Stage 04: prediction dumps of every model in the config (the prompt-only prior always)."""
    return {"prior": run_prior_baseline(cfg, force=force)}
