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

from ..data import load_records, question_frame, read_json
from ..dumps import DumpError, load_dumps, model_kinds
from ..features import KEY, encode_categoricals, feature_columns, question_features, structural_available
from ..config import EnsembleSettings
from ..errors import InputError
from ..experiment import DONE_MARKER, is_done, made_from, mark_done
from .common import Frames, Method, PRED, TASKS
from .matrices import add_image_features, design_matrix, prediction_table
from .meta import fit_meta, meta_factory, nested_cv_predict, structural_masker
from .blend import fit_task_blend, nested_blend_predict
from .leaderboard import _best_method, _leaderboard, finalise, truth_frame
from .outputs import write_outputs

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


def _select_models(kinds: dict[str, str], s: EnsembleSettings) -> tuple[list[str], list[str]]:
    """(base models, baselines) among the dumps found, {model: kind}: by the settings where they
    name them, else by each dump's ``kind`` (ablation variants are neither)."""
    found = list(kinds)
    baselines = [m for m in found if (m in s.baselines if s.baselines is not None else kinds[m] == "baseline")]
    if s.base_models is not None:
        missing = [m for m in s.base_models if m not in found]
        if missing:
            raise DumpError(f"ensemble settings: base model(s) {missing} have no dumps; found {list(found)}")
        base = list(s.base_models)
    else:
        base = [m for m in found if kinds[m] == "base" and m not in baselines]
    if not base:
        base = list(baselines)
        log.warning("ensemble: no base model besides baselines %s; stacking those", baselines)
    baselines = [m for m in baselines if m not in base]
    return base, baselines


def load_frames(exp_dir: Path, train: pd.DataFrame, test: pd.DataFrame, folds: pd.DataFrame,
                s: EnsembleSettings, truth_records: Any = None) -> Frames:
    """Read and check the dumps under ``<exp_dir>/preds``, and build the frames the methods use."""
    preds_dir = exp_dir / "preds"
    if not preds_dir.is_dir():
        raise DumpError(f"{preds_dir}: no prediction dumps (run the inference stage first)")
    kinds = model_kinds(preds_dir)
    base, baselines = _select_models(kinds, s)
    used = [*base, *baselines]
    ignored = [m for m in kinds if m not in used]
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

    if truth_records is not None:
        test_bag = test_bag.drop(columns="target").merge(truth_frame(truth_records), on=KEY, how="left")
        if test_bag["target"].isna().any():
            r = test_bag[test_bag["target"].isna()].iloc[0]
            raise InputError(f"truth: no value for test question {r['img_path']!r} {r['element_key']!r}")
    return Frames(oof_m, test_bag, test_fold, base, baselines, models, record_cols, struct_cols, augment,
                  truth_records is not None)


def base_methods(fr: Frames) -> list[Method]:
    """Every base model and baseline as it is (test: the mean score of its single-fold models),
    each base model bagged over the folds, and the mean of the bagged base models."""
    oof, test = fr.oof, fr.test
    methods = [Method(m, "base" if m in fr.base else "baseline", oof[PRED + m].to_numpy(float),
                      test[PRED + m].to_numpy(float), [fr.test_fold[k][PRED + m].to_numpy(float) for k in fr.fold_ids],
                      "test: mean score of the single-fold models", (m,)) for m in [*fr.base, *fr.baselines]]
    methods += [Method(f"bagging: {m}", "bagging", oof[PRED + m].to_numpy(float), test[PRED + m].to_numpy(float),
                       note="test: fold-averaged", models=(m,)) for m in fr.base]
    if len(fr.base) > 1:
        cols = [PRED + m for m in fr.base]
        methods.append(Method("bagging: mean of base models", "bagging", oof[cols].mean(axis=1).to_numpy(float),
                              test[cols].mean(axis=1).to_numpy(float),
                              note="unweighted mean of the fold-averaged base models", models=tuple(fr.base)))
    return methods


def _meta_predictions(fr: Frames, s: EnsembleSettings, meta: str, feature_set: str, bar) -> tuple:
    """(OOF, test) predictions of one meta-model on one feature set, both tasks: OOF by nested
    CV, test by the model fitted on all OOF rows (on the bagged or per-fold test inputs)."""
    oof_pred, test_pred = np.full(len(fr.oof), np.nan), np.full(len(fr.test), np.nan)
    for task in TASKS:
        rows = (fr.oof["task"] == task).to_numpy()
        X = design_matrix(fr.oof, task, fr.models, feature_set, fr.record_cols)
        y = fr.oof.loc[rows, "target"].to_numpy(float)
        f = fr.oof.loc[rows, "fold"].to_numpy(int)
        factory = meta_factory(meta, task, s)
        oof_pred[rows] = nested_cv_predict(factory, X, y, f, s.inner_cv, fr.augment)
        model = fit_meta(factory, X, y, f, s.inner_cv, fr.augment)
        trows = (fr.test["task"] == task).to_numpy()
        inputs = [fr.test] if s.test_inputs == "bagged" else [fr.test_fold[k] for k in fr.fold_ids]
        test_pred[trows] = np.mean([model.predict(design_matrix(t, task, fr.models, feature_set, fr.record_cols))
                                    for t in inputs], axis=0)
        bar.update()
    return oof_pred, test_pred


def stacking_methods(fr: Frames, s: EnsembleSettings) -> tuple[list[Method], list[Method]]:
    """The metadata-only model, stacking on the base predictions, and stacking with the
    statistic features, each meta-model alone and (several) averaged; returns every method and
    those of one meta-model each (what the blend weighs)."""
    jobs = [("metadata-only", "metadata", "stats", [s.meta_models[-1]]),
            ("stacking", "stacking", "preds", s.meta_models),
            ("stacking+features", "stacking+features", "preds+stats", s.meta_models)]
    methods, singles = [], []
    with tqdm(total=sum(len(j[3]) for j in jobs) * len(TASKS), desc="meta-models", disable=not s.progress,
              leave=False) as bar:
        for label, kind, feature_set, metas in jobs:
            per_meta = {meta: _meta_predictions(fr, s, meta, feature_set, bar) for meta in metas}
            if kind == "metadata":
                (oof_pred, test_pred), = per_meta.values()
                methods.append(Method(label, kind, oof_pred, test_pred, note=f"{metas[0]} on record features only"))
                continue
            singles += [Method(f"{label}: {meta}", kind, o, t, note="nested CV on OOF", models=tuple(fr.base))
                        for meta, (o, t) in per_meta.items()]
            methods += singles[-len(per_meta):]
            if len(per_meta) > 1:
                methods.append(Method(f"{label}: {'+'.join(per_meta)}", kind,
                                      np.mean([v[0] for v in per_meta.values()], axis=0),
                                      np.mean([v[1] for v in per_meta.values()], axis=0),
                                      note="mean of the meta-models", models=tuple(fr.base)))
    return methods, singles


def blending_method(fr: Frames, meta: Sequence[Method]) -> tuple[Method, dict]:
    """Non-negative blend of the base models and the stacking meta-models ``meta`` (one each, not
    their averages), scored with nested CV like the stacking; returns the method and each task's
    fitted blend."""
    blend_info = {}
    oof_blend, test_blend = np.full(len(fr.oof), np.nan), np.full(len(fr.test), np.nan)
    for task in TASKS:
        rows = (fr.oof["task"] == task).to_numpy()
        trows = (fr.test["task"] == task).to_numpy()
        names = [PRED + m for m in fr.models[task]] + [m.name for m in meta]
        P = np.column_stack([fr.oof.loc[rows, PRED + m] for m in fr.models[task]] + [m.oof[rows] for m in meta])
        Pt = np.column_stack([fr.test.loc[trows, PRED + m] for m in fr.models[task]] + [m.test[trows] for m in meta])
        y = fr.oof.loc[rows, "target"].to_numpy(float)
        f = fr.oof.loc[rows, "fold"].to_numpy(int)
        oof_blend[rows] = nested_blend_predict(P, y, f, names, task)
        blend = fit_task_blend(P, y, names, task)
        test_blend[trows] = blend.apply(Pt)
        blend_info[task] = dataclasses.asdict(blend)
    return Method("blending", "blending", oof_blend, test_blend,
                  note="non-negative weights + intercept, element threshold; nested CV on OOF",
                  models=tuple(fr.base)), blend_info


def build_leaderboard(exp_dir: str | Path, train_records: Any, test_records: Any, folds: Any = None,
                      settings: Any = None, truth_records: Any = None, noise_ceiling: Any = None
                      ) -> pd.DataFrame:
    """Every method's OOF (and, with truth, test) scores -> ``<exp_dir>/leaderboard.csv``; the best
    method by OOF Final -> ``<exp_dir>/submission/submission.zip``; plots and per-method predictions
    -> ``<exp_dir>/ensemble/``. Returns the leaderboard (its ``attrs`` hold the submission path and
    the chosen method)."""
    t_start = time.perf_counter()
    s = EnsembleSettings.coerce(settings)
    exp_dir = Path(exp_dir)
    test = _as_records(test_records, "test_records")
    fr = load_frames(exp_dir, _as_records(train_records, "train_records"), test, _as_folds(folds, exp_dir), s,
                     truth_records)

    stacked, single_meta = stacking_methods(fr, s)
    blended, blend_info = blending_method(fr, single_meta)
    methods = [*base_methods(fr), *stacked, blended]
    for m in methods:
        m.oof, m.test = finalise(fr.oof, m.oof), finalise(fr.test, m.test)
        m.test_single = [finalise(fr.test, p) for p in m.test_single]

    lb = _leaderboard(methods, fr.oof, fr.test if fr.truth else None, noise_ceiling)
    best = _best_method(lb)
    chosen = next(m for m in methods if m.name == best)
    log.info("ensemble: best method by OOF Final: %s", best)
    sub = write_outputs(exp_dir, fr, s, test, methods, lb, chosen, blend_info, time.perf_counter() - t_start)
    lb.attrs.update({"submission": str(sub), "best_method": best})
    return lb


def ensemble_stage(cfg, force: bool = False, settings: Any = None) -> pd.DataFrame | None:
    """Stage 05 from an experiment config: skipped while every dump, the folds, the records and
    the ensemble settings are the ones its done marker records."""
    exp_dir = Path(cfg.exp_dir)
    lb_path = exp_dir / "leaderboard.csv"
    sub_path = exp_dir / "submission" / "submission.zip"
    info_path = exp_dir / "ensemble" / "ensemble.json"
    marker = exp_dir / "ensemble" / DONE_MARKER
    if settings is None:
        settings = getattr(cfg, "ensemble", None)
    s = EnsembleSettings.coerce(settings)
    dumps = list((exp_dir / "preds").glob("*/*/*.parquet"))
    made = made_from([*dumps, Path(cfg.folds_path), Path(cfg.train_path), Path(cfg.test_path)],
                     dataclasses.asdict(s), root=exp_dir)
    if not force and dumps and lb_path.is_file() and sub_path.is_file() and is_done(marker, made):
        log.info("ensemble: made from these dumps and settings already, skipping (use --force to redo): %s", lb_path)
        lb = pd.read_csv(lb_path)
        best = read_json(info_path).get("best_method") if info_path.is_file() else None
        lb.attrs.update({"submission": str(sub_path), "best_method": best})
        return lb
    marker.unlink(missing_ok=True)
    eval_path = getattr(cfg, "eval_path", None)
    ceiling_path = getattr(cfg, "noise_ceiling_path", None)
    truth = read_json(eval_path) if eval_path is not None and Path(eval_path).is_file() else None
    ceiling = read_json(ceiling_path) if ceiling_path is not None and Path(ceiling_path).is_file() else None
    lb = build_leaderboard(exp_dir, load_records(cfg.train_path), load_records(cfg.test_path),
                           cfg.folds_path, s, truth, ceiling)
    mark_done(marker, made)
    return lb
