"""Stage 05: dumps -> base methods, stacking, blending -> leaderboard, predictions, submission, plots."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..data import load_records, question_frame, records_to_json
from ..dumps import DumpError, load_dumps
from ..features import KEY, encode_categoricals, feature_columns, question_features, structural_available
from ..io import write_csv, write_json, write_parquet
from ..config import EnsembleSettings
from ..errors import InputError
from .common import Method, PRED, TASKS, is_baseline
from .matrices import add_image_features, design_matrix, prediction_table
from .meta import fit_meta, meta_factory, nested_cv_predict, structural_masker
from .blend import fit_task_blend, nested_blend_predict
from .leaderboard import (_best_base, _best_method, _leaderboard, category_accuracy_table, finalise,
                          truth_frame)

log = logging.getLogger("tokenfocus")


def _as_records(records: Any, what: str) -> pd.DataFrame:
    if isinstance(records, (str, Path)):
        return load_records(records)
    if not isinstance(records, pd.DataFrame):
        raise TypeError(f"{what}: expected a load_records frame or a path, got {type(records).__name__}")
    return records


def _as_folds(folds: Any, exp_dir: Path) -> pd.DataFrame:
    if folds is None:
        folds = exp_dir / "folds.csv"
    if isinstance(folds, (str, Path)):
        if not Path(folds).is_file():
            raise FileNotFoundError(f"{folds}: not found (run the folds stage first)")
        folds = pd.read_csv(folds, dtype={"img_path": str, "prompt_id": str})
    lack = [c for c in ("img_path", "fold") if c not in folds.columns]
    if lack:
        raise InputError(f"folds: missing column(s) {lack}")
    return folds


def _master(records: pd.DataFrame, wide: pd.DataFrame, models: Mapping[str, Sequence[str]],
            where: str, categories: Sequence[str]) -> pd.DataFrame:
    """Question features of ``records`` joined with the prediction table; every question of a
    model's task must have a prediction."""
    q = question_features(records, categories)
    q["target"] = question_frame(records)["target"].to_numpy(float)
    master = q.merge(wide, on=KEY, how="left", validate="one_to_one")
    for task in TASKS:
        rows = master["task"] == task
        for m in models[task]:
            miss = rows & master[PRED + m].isna()
            if miss.any():
                r = master[miss].iloc[0]
                raise DumpError(f"{where}: model {m!r} has no {task} prediction for {int(miss.sum())} "
                                f"question(s), e.g. {r['img_path']!r} {r['element_key']!r}")
    return add_image_features(master, models)


def _check_no_extra(long: pd.DataFrame, records: pd.DataFrame, where: str) -> None:
    have = pd.MultiIndex.from_frame(long[["img_path", "element_key"]]).unique()
    want = pd.MultiIndex.from_frame(question_frame(records)[["img_path", "element_key"]])
    extra = have.difference(want)
    if len(extra):
        raise DumpError(f"{where}: predictions for {len(extra)} question(s) not in the records, "
                        f"e.g. {list(extra[:3])}")


def _select_models(found: Sequence[str], s: EnsembleSettings) -> tuple[list[str], list[str]]:
    baselines = [m for m in found if (m in s.baselines if s.baselines is not None else is_baseline(m))]
    if s.base_models is not None:
        missing = [m for m in s.base_models if m not in found]
        if missing:
            raise DumpError(f"ensemble settings: base model(s) {missing} have no dumps; found {list(found)}")
        base = list(s.base_models)
    else:
        base = [m for m in found if m not in baselines]
    if not base:
        base = list(baselines)
        log.warning("ensemble: no base model besides baselines %s; stacking those", baselines)
    baselines = [m for m in baselines if m not in base]
    return base, baselines


def run_ensemble(exp_dir: str | Path, train_records: Any, test_records: Any, folds: Any = None,
                 settings: Any = None, truth_records: Any = None, noise_ceiling: Any = None
                 ) -> pd.DataFrame:
    """Every method's OOF (and, with truth, test) scores -> ``<exp_dir>/leaderboard.csv``; the best
    method by OOF Final -> ``<exp_dir>/submission/submission.zip``; plots and per-method predictions
    -> ``<exp_dir>/ensemble/``. Returns the leaderboard (its ``attrs`` hold the submission path and
    the chosen method)."""
    t_start = time.perf_counter()
    s = EnsembleSettings.coerce(settings)
    exp_dir = Path(exp_dir)
    train = _as_records(train_records, "train_records")
    test = _as_records(test_records, "test_records")
    folds = _as_folds(folds, exp_dir)
    preds_dir = exp_dir / "preds"

    if not preds_dir.is_dir():
        raise DumpError(f"{preds_dir}: no prediction dumps (run the inference stage first)")
    found = sorted(d.name for d in preds_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    base, baselines = _select_models(found, s)
    used = [*base, *baselines]
    ignored = [m for m in found if m not in used]
    if ignored:
        log.info("ensemble: ignoring dumps of %s (neither base model nor baseline)", ignored)
    oof_long, test_long = load_dumps(preds_dir, models=used, folds=folds)
    tasks_of = oof_long.groupby("model")["task"].unique().map(set).to_dict()
    models = {t: [m for m in base if t in tasks_of[m]] for t in TASKS}
    all_models = {t: [m for m in used if t in tasks_of[m]] for t in TASKS}
    for t in TASKS:
        if not models[t]:
            raise DumpError(f"{preds_dir}: no base model has {t} dumps")
    log.info("ensemble: base models %s, baselines %s", base, baselines)

    train = train[train["img_path"].isin(set(folds["img_path"]))].reset_index(drop=True)
    _check_no_extra(oof_long, train, f"{preds_dir} (OOF)")
    _check_no_extra(test_long, test, f"{preds_dir} (test)")
    fold_of = folds.drop_duplicates("img_path").set_index("img_path")["fold"].astype(int)

    cats = sorted({c for c in question_frame(train)["category"] if c})
    oof_m = _master(train, prediction_table(oof_long), all_models, f"{preds_dir} (OOF)", cats)
    oof_m["fold"] = oof_m["img_path"].map(fold_of).to_numpy(int)
    test_bag = _master(test, prediction_table(test_long), all_models, f"{preds_dir} (test)", cats)
    fold_ids = sorted(test_long["fold"].unique())
    test_fold = {k: _master(test, prediction_table(test_long[test_long["fold"] == k]), all_models,
                            f"{preds_dir} (test, fold {k})", cats) for k in fold_ids}

    # Structural fields: keep only what the test set can provide, unless told otherwise.
    test_struct = structural_available(test_bag)
    if s.structural == "auto":
        struct_cols = [c for c in structural_available(oof_m) if c in test_struct]
    elif s.structural == "drop":
        struct_cols = []
    else:
        struct_cols = structural_available(oof_m)
    record_cols = feature_columns(oof_m, include_structural=False) + struct_cols
    log.info("ensemble: structural features %s (mode %s; test provides %s)", struct_cols or "none",
             s.structural, test_struct or "none")
    augment = structural_masker(struct_cols) if s.structural == "mask" else None
    oof_m, others = encode_categoricals(oof_m, [test_bag, *test_fold.values()])
    test_bag, test_fold = others[0], dict(zip(fold_ids, others[1:]))

    truth = None
    if truth_records is not None:
        truth = truth_frame(truth_records)
        test_bag = test_bag.drop(columns="target").merge(truth, on=KEY, how="left")
        if test_bag["target"].isna().any():
            r = test_bag[test_bag["target"].isna()].iloc[0]
            raise InputError(f"truth: no value for test question {r['img_path']!r} {r['element_key']!r}")

    methods: list[Method] = []
    for m in used:
        kind = "base" if m in base else "baseline"
        oof_pred = oof_m[PRED + m].to_numpy(float)
        methods.append(Method(m, kind, oof_pred, test_bag[PRED + m].to_numpy(float),
                               [test_fold[k][PRED + m].to_numpy(float) for k in fold_ids],
                               "test: mean score of the single-fold models", (m,)))
    for m in base:
        methods.append(Method(f"bagging: {m}", "bagging", oof_m[PRED + m].to_numpy(float),
                               test_bag[PRED + m].to_numpy(float), note="test: fold-averaged", models=(m,)))
    if len(base) > 1:
        cols = [PRED + m for m in base]
        methods.append(Method("bagging: mean of base models", "bagging",
                               oof_m[cols].mean(axis=1).to_numpy(float),
                               test_bag[cols].mean(axis=1).to_numpy(float),
                               note="unweighted mean of the fold-averaged base models", models=tuple(base)))

    jobs = [("metadata-only", "metadata", "stats", [s.meta_models[-1]])]
    jobs += [("stacking", "stacking", "preds", s.meta_models),
             ("stacking+features", "stacking+features", "preds+stats", s.meta_models)]
    meta_outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bar = tqdm(total=sum(len(j[3]) for j in jobs) * len(TASKS), desc="meta-models",
               disable=not s.progress, leave=False)
    for label, kind, feature_set, kinds in jobs:
        per_kind = {}
        for meta in kinds:
            oof_pred = np.full(len(oof_m), np.nan)
            test_pred = np.full(len(test_bag), np.nan)
            for task in TASKS:
                rows = (oof_m["task"] == task).to_numpy()
                X = design_matrix(oof_m, task, models, feature_set, record_cols)
                y = oof_m.loc[rows, "target"].to_numpy(float)
                f = oof_m.loc[rows, "fold"].to_numpy(int)
                factory = meta_factory(meta, task, s)
                oof_pred[rows] = nested_cv_predict(factory, X, y, f, s.inner_cv, augment)
                model = fit_meta(factory, X, y, f, s.inner_cv, augment)
                trows = (test_bag["task"] == task).to_numpy()
                if s.test_inputs == "bagged":
                    test_pred[trows] = model.predict(design_matrix(test_bag, task, models, feature_set, record_cols))
                else:
                    test_pred[trows] = np.mean([model.predict(design_matrix(test_fold[k], task, models,
                                                                            feature_set, record_cols))
                                                for k in fold_ids], axis=0)
                bar.update()
            per_kind[meta] = (oof_pred, test_pred)
        if kind == "metadata":
            (oof_pred, test_pred), = per_kind.values()
            methods.append(Method(label, kind, oof_pred, test_pred,
                                   note=f"{kinds[0]} on record features only"))
            continue
        for meta, (oof_pred, test_pred) in per_kind.items():
            meta_outputs[f"{label}: {meta}"] = (oof_pred, test_pred)
            methods.append(Method(f"{label}: {meta}", kind, oof_pred, test_pred,
                                   note="nested CV on OOF", models=tuple(base)))
        if len(per_kind) > 1:
            oof_avg = np.mean([v[0] for v in per_kind.values()], axis=0)
            test_avg = np.mean([v[1] for v in per_kind.values()], axis=0)
            methods.append(Method(f"{label}: {'+'.join(per_kind)}", kind, oof_avg, test_avg,
                                   note="mean of the meta-models", models=tuple(base)))
    bar.close()

    # Blending over base models and meta-models, scored with nested CV like the stacking.
    blend_info = {}
    oof_blend = np.full(len(oof_m), np.nan)
    test_blend = np.full(len(test_bag), np.nan)
    for task in TASKS:
        rows = (oof_m["task"] == task).to_numpy()
        trows = (test_bag["task"] == task).to_numpy()
        names = [PRED + m for m in models[task]] + list(meta_outputs)
        P = np.column_stack([oof_m.loc[rows, PRED + m] for m in models[task]]
                            + [v[0][rows] for v in meta_outputs.values()])
        Pt = np.column_stack([test_bag.loc[trows, PRED + m] for m in models[task]]
                             + [v[1][trows] for v in meta_outputs.values()])
        y = oof_m.loc[rows, "target"].to_numpy(float)
        f = oof_m.loc[rows, "fold"].to_numpy(int)
        oof_blend[rows] = nested_blend_predict(P, y, f, names, task)
        blend = fit_task_blend(P, y, names, task)
        test_blend[trows] = blend.apply(Pt)
        blend_info[task] = dataclasses.asdict(blend)
    methods.append(Method("blending", "blending", oof_blend, test_blend,
                           note="non-negative weights + intercept, element threshold; nested CV on OOF",
                           models=tuple(base)))

    for m in methods:
        m.oof, m.test = finalise(oof_m, m.oof), finalise(test_bag, m.test)
        m.test_single = [finalise(test_bag, p) for p in m.test_single]

    lb = _leaderboard(methods, oof_m, test_bag if truth is not None else None, noise_ceiling)
    best = _best_method(lb)
    chosen = next(m for m in methods if m.name == best)
    log.info("ensemble: best method by OOF Final: %s", best)

    out_dir = exp_dir / "ensemble"
    _write_predictions(out_dir, oof_m, test_bag, methods, truth is not None)
    elapsed = time.perf_counter() - t_start
    sub = _write_submission(exp_dir / "submission", test, test_bag, chosen, s, elapsed)
    write_json(out_dir / "ensemble.json", {
        "best_method": best, "base_models": base, "baselines": baselines,
        "structural_features": struct_cols, "structural_mode": s.structural,
        "record_features": record_cols, "blend": blend_info, "settings": dataclasses.asdict(s),
        "submission": str(sub)})
    write_csv(exp_dir / "category_accuracy.csv",
              category_accuracy_table(methods, oof_m, test_bag if truth is not None else None), float_format="%.4f")
    if s.plots:
        from .. import plots
        plots.write_plots(out_dir, lb, oof_m, test_bag if truth is not None else None,
                          {best: (chosen.oof, chosen.test)} | _best_base(lb, methods))
        # Every base model and baseline beside the chosen method, on test where there is truth.
        split, frame = ("test", test_bag) if truth is not None else ("oof", oof_m)
        shown = {m.name: plots.element_frame(frame, m.test if split == "test" else m.oof)
                 for m in methods if m.kind in ("base", "baseline") or m.name == best}
        plots.save_figure(plots.category_accuracy(shown, title=f"Element accuracy per category ({split})"),
                          out_dir / "category_accuracy_methods.png")
    write_csv(exp_dir / "leaderboard.csv", lb, float_format="%.4f")
    lb.attrs.update({"submission": str(sub), "best_method": best})
    return lb


def _write_predictions(out_dir: Path, oof_m: pd.DataFrame, test_m: pd.DataFrame,
                       methods: list[Method], with_truth: bool) -> None:
    oof = oof_m[[*KEY, "category", "fold", "target"]].copy()
    test = test_m[[*KEY, "category"]].copy()
    oof["category"] = oof["category"].astype(object)
    test["category"] = test["category"].astype(object)
    if with_truth:
        test["target"] = test_m["target"].to_numpy(float)
    for m in methods:
        oof[m.name] = m.oof
        test[m.name] = m.test
    write_parquet(out_dir / "oof_predictions.parquet", oof)
    write_parquet(out_dir / "test_predictions.parquet", test)


def _write_submission(sub_dir: Path, test: pd.DataFrame, test_m: pd.DataFrame, chosen: Method,
                      s: EnsembleSettings, elapsed: float) -> Path:
    from ..submission import build_records, readme_text, write_submission

    is_total = (test_m["task"] == "total").to_numpy()
    total = dict(zip(test_m.loc[is_total, "img_path"], chosen.test[is_total]))
    element = dict(zip(zip(test_m.loc[~is_total, "img_path"], test_m.loc[~is_total, "element_key"]),
                       chosen.test[~is_total]))
    reference = records_to_json(test)
    records = build_records(reference, total, element)
    uses_llm = chosen.kind != "metadata" and any(m not in s.non_llm_models for m in chosen.models)
    runtime = s.runtime_per_image if s.runtime_per_image is not None else elapsed / max(1, len(test))
    used = ", ".join(chosen.models) or "record features"
    if uses_llm:
        how = ("base models: LVLMs fine-tuned on the label-token probabilities at the first answer "
               "position; 5-fold out-of-fold predictions aggregated with prompt-grouped nested CV.")
    else:
        how = "no LVLM predictions (prompt-only prior or record features)."
    description = f"TokenFocus-VQA, method '{chosen.name}' ({chosen.kind}) over {used}; {how}"
    readme = readme_text(runtime, cpu=int(not _cuda_available()), extra_data=0, llm=int(uses_llm),
                         description=description)
    return write_submission(sub_dir, records, reference, readme)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def ensemble_stage(cfg, force: bool = False, settings: Any = None) -> pd.DataFrame | None:
    """Stage 05 from an experiment config: skipped when the leaderboard is newer than every dump."""
    from ..data import read_json

    exp_dir = Path(cfg.exp_dir)
    lb_path = exp_dir / "leaderboard.csv"
    sub_path = exp_dir / "submission" / "submission.zip"
    dumps = list((exp_dir / "preds").glob("*/*/*.parquet"))
    inputs = [*dumps, Path(cfg.folds_path), Path(cfg.train_path), Path(cfg.test_path)]
    if getattr(cfg, "source", ""):
        inputs.append(Path(cfg.source))  # changed ensemble settings redo the stage
    if not force and lb_path.is_file() and sub_path.is_file() and dumps and \
            lb_path.stat().st_mtime >= max(p.stat().st_mtime for p in inputs if p.exists()):
        log.info("ensemble: outputs newer than every input, skipping (use --force to redo): %s", lb_path)
        lb = pd.read_csv(lb_path)
        info_path = exp_dir / "ensemble" / "ensemble.json"
        best = read_json(info_path).get("best_method") if info_path.is_file() else None
        lb.attrs.update({"submission": str(sub_path), "best_method": best})
        return lb
    if settings is None:
        settings = getattr(cfg, "ensemble", None)
    eval_path = getattr(cfg, "eval_path", None)
    ceiling_path = getattr(cfg, "noise_ceiling_path", None)
    truth = read_json(eval_path) if eval_path is not None and Path(eval_path).is_file() else None
    ceiling = read_json(ceiling_path) if ceiling_path is not None and Path(ceiling_path).is_file() else None
    return run_ensemble(exp_dir, load_records(cfg.train_path), load_records(cfg.test_path),
                        cfg.folds_path, settings, truth, ceiling)


def format_leaderboard(lb: pd.DataFrame) -> str:
    """The leaderboard as an aligned text table (no notes)."""
    show = lb.drop(columns=["note"], errors="ignore")
    return show.to_string(index=False, float_format=lambda x: f"{x:.4f}", na_rep="-")
