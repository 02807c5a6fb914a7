"""One function per pipeline stage; the numbered scripts in src/ are thin CLIs over these.

Each stage reads only what earlier stages wrote, writes atomically, and skips work whose outputs
already exist unless ``force`` is set. Skipping is safe only while the labels are the ones those
outputs were made from: the first stage to read the training file records its sha256 in
``<exp_dir>/data.json``, and every later read compares (``check_training_data``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .config import Config, ConfigError, check_inputs, settings_diff
from .data import DataError, read_json
from .experiment import (DATA_RECORD, check_training_data, load_folds, load_split,  # noqa: F401
                         record_settings, recorded_settings)
from .io import write_csv, write_json
from .log import setup_logging  # noqa: F401  (the stage scripts' log format)

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


def make_demo(cfg: Config, force: bool = False, out: str | None = None, seed: int | None = None) -> str | None:
    """Stage 00: render the demo dataset into ``dataset.root`` (only for configs with ``demo:``)."""
    from dataclasses import replace

    from .demo.build import format_summary, make_demo_dataset

    if cfg.demo is None:
        log.info("make_demo: %s has no 'demo' section; nothing to render", cfg.source)
        return None
    spec = cfg.demo if seed is None else replace(cfg.demo, seed=seed)
    return format_summary(make_demo_dataset(Path(out) if out else cfg.data_root, spec, force=force))


def run_eda(cfg: Config, force: bool = False) -> str | None:
    """Stage 01: counts and label distributions as PNG plots and a markdown summary."""
    from .eda import run_eda as eda

    out = cfg.exp_dir / "eda"
    if _skip([out / "summary.md"], force, "eda"):
        return None
    summary = eda(load_split(cfg, "train"), load_split(cfg, "test"), out)
    n_plots = sum(f.endswith(".png") for f in summary["files"])
    return f"EDA: {n_plots} plots and summary.md in {out}"


def make_fold_file(cfg: Config, force: bool = False) -> pd.DataFrame:
    """Stage 02: prompt-grouped, score-stratified folds -> folds.csv; prints per-fold counts."""
    from .folds import check_folds, fold_table, make_folds

    train = load_split(cfg, "train")
    settings = {f"folds.{k}": v for k, v in asdict(cfg.folds).items()}
    if _skip([cfg.folds_path], force, "folds", cfg, settings):
        folds = load_folds(cfg)
    else:
        folds = make_folds(train, cfg.folds.n_folds, cfg.folds.seed, cfg.folds.n_bins)
        write_csv(cfg.folds_path, folds)
        record_settings(cfg, "folds", settings)
    check_folds(train, folds)
    table = fold_table(train, folds)
    write_csv(cfg.exp_dir / "fold_counts.csv", table)
    return table


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
        df = load_split(cfg, split, record=False)
        counts[split] = len(df)
        bad += validate_images(df, cfg.image_dir)
    if bad:
        raise DataError(f"{cfg.image_dir}: {iter_bad(bad)}")
    return {"records": counts, "images_ok": sum(counts.values())}


def run_inference(cfg: Config, force: bool = False, jobs: int | str | None = None) -> pd.DataFrame:
    """Stage 04: OOF and test dumps of the prior, every untuned base (zero-shot), every
    fine-tuned model and every ablation variant; oof_scores.csv, bagged test predictions and
    ablation.csv beside them. On a CPU, up to ``jobs`` (default: the config's) folds are scored
    side by side (see ``tokenfocus.parallel``); under ``accelerate launch`` the (model, fold)
    units are shared out over the processes (one GPU each) and the main process writes the
    tables once all are done (the others return None)."""
    from .infer import bag_test, infer_model, model_dumps_done, oof_scores, zeroshot_model
    from .io import write_parquet
    from .parallel import process_state, run_units
    from .train import model_folds

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


ABLATION_BOOTSTRAP = 200


def ablation_table(cfg: Config, n_boot: int = ABLATION_BOOTSTRAP) -> pd.DataFrame:
    """The ablation variants side by side on the OOF predictions of the ablation folds, with a
    noise estimate: a bootstrap over prompts (the same resampled prompts for every variant)
    gives each Final's standard deviation and, paired, that of its difference to the first
    fine-tuned variant (``delta`` / ``delta_sd``), so a difference can be read against noise."""
    import numpy as np

    from .infer import read_model_dumps, score_predictions

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
    rows = []
    for variant, model in sources.items():
        r = score_predictions(frames[variant])
        delta = boot[variant] - boot[reference]
        rows.append({"variant": variant, "model": model, "folds": " ".join(map(str, sorted(folds))),
                     **{k: r[k] for k in ("srcc", "plcc", "acc", "final")},
                     "final_sd": float(boot[variant].std(ddof=1)),
                     "delta": float(r["final"] - reference_final),
                     "delta_sd": float(delta.std(ddof=1))})
    return pd.DataFrame(rows)


def run_ensemble(cfg: Config, force: bool = False) -> str:
    """Stage 05: bagging, stacking and blending -> leaderboard.csv, submission.zip, plots."""
    from .ensemble import ensemble_stage, format_leaderboard

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


def evaluate_submission(cfg: Config, force: bool = False, truth: str | None = None,
                        submission: str | None = None, json_out: str | None = None) -> str:
    """Stage 06: score a submission against a truth file; the demo's noise ceiling beside it."""
    from .metrics import evaluate_files, format_table

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
