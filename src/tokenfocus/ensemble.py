"""Aggregation of the base models' predictions: bagging, stacking, blending, and the leaderboard.

- Bagging: a base model's test prediction is the mean over its fold models; its OOF is kept as is.
- Stacking: XGBoost / LightGBM meta-models on the base models' OOF predictions (optionally with
  the statistic features of ``tokenfocus.features``), one per task. They are scored by nested
  cross-validation over the same prompt-grouped folds: for each outer fold the meta-model (and the
  inner CV that picks its number of trees) sees only the other folds. The meta-model refitted on
  all OOF rows then predicts the test set.
- Blending: non-negative weights over the base and meta predictions with a free intercept, fitted
  by least squares on OOF (for the total this is also its linear calibration, so the blended total
  stays linear in the 1..5 scale), then an element decision threshold fitted on OOF. Scored on OOF
  the same nested way.

Element meta-models regress the mean vote with a cross-entropy objective: the target is a
fraction in [0, 1], the loss keeps the information in 2-of-3 versus 3-of-3 votes that a binarised
label would throw away, and the output is a probability for which 0.5 is the natural threshold.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import lsq_linear
from tqdm.auto import tqdm

from .data import load_records, question_frame, records_to_json
from .dumps import BASE_COLUMNS, TASK_LABELS, DumpError
from .features import (KEY, encode_categoricals, feature_columns, group_features,
                       question_features, structural_available)
from .io import write_csv, write_json, write_parquet
from .metrics import MetricWarning, score_frame

log = logging.getLogger("tokenfocus")

TASKS = ("total", "element")
PRED = "pred__"
METRICS = (("SRCC", "srcc"), ("PLCC", "plcc"), ("ACC", "acc"), ("Final", "final"))
FEATURE_SETS = ("preds", "preds+stats", "stats")
_DUMP_RE = re.compile(r"^(oof|test)_fold(\d+)\.parquet$")
# Tie-break between methods with the same OOF Final: the one whose test predictions are bagged.
_KIND_ORDER = ("blending", "stacking+features", "stacking", "bagging", "metadata", "base", "baseline")


# --------------------------------------------------------------------------- settings

@dataclass
class EnsembleSettings:
    """What to stack and how; the defaults run the demo in about a minute on 2 CPU cores."""

    base_models: list[str] | None = None   # stacked; None: every model found that is no baseline
    baselines: list[str] | None = None     # leaderboard rows only; None: 'prior' and 'zeroshot_*'
    meta_models: list[str] = field(default_factory=lambda: ["xgboost", "lightgbm"])
    n_estimators: int = 300                # cap; the inner CV picks the number actually used
    learning_rate: float = 0.05
    max_depth: int = 3                     # xgboost
    num_leaves: int = 15                   # lightgbm
    min_child_samples: int = 20
    subsample: float = 0.8
    colsample: float = 0.8
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 30
    inner_cv: bool = True
    # T2I model and prompt type: 'auto' drops them when the test hides them, 'use' keeps them,
    # 'drop' never uses them, 'mask' trains on every row twice, with and without them.
    structural: str = "auto"
    # Meta-model test inputs: 'per_fold' scores each fold model's test predictions and averages
    # (the same input distribution as OOF); 'bagged' scores the fold-averaged predictions.
    test_inputs: str = "per_fold"
    seed: int = 1234
    n_jobs: int = 1                        # demo-sized data: threads cost more than they save
    runtime_per_image: float | None = None  # readme value; None: this stage's time per test image
    non_llm_models: list[str] = field(default_factory=lambda: ["prior"])
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        choices = {"structural": ("auto", "use", "drop", "mask"), "test_inputs": ("per_fold", "bagged")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ensemble settings: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        bad = [m for m in self.meta_models if m not in ("xgboost", "lightgbm")]
        if bad or not self.meta_models:
            raise ValueError(f"ensemble settings: meta_models must be a non-empty subset of "
                             f"['xgboost', 'lightgbm'], got {self.meta_models!r}")

    @classmethod
    def coerce(cls, value: Any = None) -> "EnsembleSettings":
        """Settings from None (defaults), an instance, another dataclass or a mapping (unknown keys refused)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if not isinstance(value, Mapping):
            raise TypeError(f"ensemble settings: expected a mapping, got {type(value).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"ensemble settings: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(value))


def is_baseline(model: str) -> bool:
    return model == "prior" or model.startswith("zeroshot")


# --------------------------------------------------------------------------- dumps

def load_dumps(preds_dir: str | Path, models: Sequence[str] | None = None,
               folds: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every ``<model>/<task>/{oof,test}_fold<k>.parquet`` under ``preds_dir`` and check coverage.

    Returns (oof, test), the rows of all dumps concatenated. Raises DumpError naming the file when a
    dump lacks columns or folds, holds a question twice, disagrees with its path (model, task,
    fold), or when the dumps of one task do not cover the same questions: every OOF set the same
    images in the same folds (those of ``folds`` when given), every test dump the same questions.
    """
    preds_dir = Path(preds_dir)
    if not preds_dir.is_dir():
        raise DumpError(f"{preds_dir}: no prediction dumps (run the inference stage first)")
    found = sorted(d.name for d in preds_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if models is None:
        models = found
    missing = [m for m in models if m not in found]
    if missing:
        raise DumpError(f"{preds_dir}: no dumps for model(s) {missing}; found {found}")
    if not models:
        raise DumpError(f"{preds_dir}: no model folders")
    oof_parts, test_parts = [], []
    for model in models:
        tasks = [t for t in TASKS if (preds_dir / model / t).is_dir()]
        if not tasks:
            raise DumpError(f"{preds_dir / model}: neither a 'total' nor an 'element' folder")
        for task in tasks:
            oof, test = _load_model_task(preds_dir / model / task, model, task)
            oof_parts.append(oof)
            test_parts.append(test)
    oof, test = pd.concat(oof_parts, ignore_index=True), pd.concat(test_parts, ignore_index=True)
    _check_across_models(oof, test, preds_dir, folds)
    return oof, test


def _load_model_task(folder: Path, model: str, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    files: dict[str, dict[int, Path]] = {"oof": {}, "test": {}}
    for p in sorted(folder.iterdir()):
        m = _DUMP_RE.match(p.name)
        if m:
            files[m.group(1)][int(m.group(2))] = p
    if not files["oof"]:
        raise DumpError(f"{folder}: no oof_fold<k>.parquet dumps")
    if set(files["oof"]) != set(files["test"]):
        raise DumpError(f"{folder}: OOF folds {sorted(files['oof'])} but test folds {sorted(files['test'])}")
    out = {}
    for split, by_fold in files.items():
        parts = [_read_dump(path, model, task, k) for k, path in sorted(by_fold.items())]
        out[split] = parts
    oof = pd.concat(out["oof"], ignore_index=True)
    dup = oof.duplicated(["img_path", "element_key"], keep=False)
    if dup.any():
        row = oof[dup].iloc[0]
        raise DumpError(f"{folder}: question {row['img_path']!r} / {row['element_key']!r} appears in the "
                        f"OOF dumps of folds {sorted(oof.loc[dup & (oof['img_path'] == row['img_path']), 'fold'].unique())}")
    first = _questions(out["test"][0])
    for k, part in zip(sorted(files["test"]), out["test"]):
        _same_questions(first, _questions(part), f"{folder / f'test_fold{k}.parquet'}",
                        f"test_fold{min(files['test'])}")
    return oof, pd.concat(out["test"], ignore_index=True)


def _read_dump(path: Path, model: str, task: str, fold: int) -> pd.DataFrame:
    df = pd.read_parquet(path)
    need = BASE_COLUMNS + [f"p_{lab}" for lab in TASK_LABELS[task]]
    lack = [c for c in need if c not in df.columns]
    if lack:
        raise DumpError(f"{path}: missing column(s) {lack}")
    df = df[need].copy()
    for col, want in (("model", model), ("task", task)):
        bad = df[col].astype(str) != want
        if bad.any():
            raise DumpError(f"{path}: column {col!r} holds {df.loc[bad, col].iloc[0]!r}, expected {want!r}")
    fold_vals = pd.to_numeric(df["fold"], errors="coerce")
    if (fold_vals != fold).any():
        raise DumpError(f"{path}: column 'fold' holds {sorted(fold_vals.dropna().unique().tolist())}, expected {fold}")
    df["fold"] = fold
    for col in ("img_path", "prompt_id", "prompt", "element_key", "category"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    empty_key = df["element_key"] == ""
    if (empty_key != (task == "total")).any():
        raise DumpError(f"{path}: element_key must be '' exactly for total questions")
    if df.duplicated(["img_path", "element_key"]).any():
        row = df[df.duplicated(["img_path", "element_key"])].iloc[0]
        raise DumpError(f"{path}: duplicate question {row['img_path']!r} / {row['element_key']!r}")
    for col in ["target", "pred", *(f"p_{lab}" for lab in TASK_LABELS[task])]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    bad = ~np.isfinite(df["pred"].to_numpy())
    if bad.any():
        raise DumpError(f"{path}: {int(bad.sum())} non-finite 'pred' value(s), e.g. {df.loc[bad, 'img_path'].iloc[0]!r}")
    return df


def _questions(df: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(df[["img_path", "element_key"]])


def _same_questions(want: pd.MultiIndex, have: pd.MultiIndex, where: str, against: str) -> None:
    lack, extra = want.difference(have), have.difference(want)
    if len(lack) or len(extra):
        eg = lambda idx: list(idx[:3]) if len(idx) else []  # noqa: E731
        raise DumpError(f"{where}: covers other questions than {against}: {len(lack)} missing "
                        f"(e.g. {eg(lack)}), {len(extra)} extra (e.g. {eg(extra)})")


def _check_across_models(oof: pd.DataFrame, test: pd.DataFrame, preds_dir: Path,
                         folds: pd.DataFrame | None) -> None:
    """Per task, every model's OOF and test dumps cover the same questions; every model puts each
    image in the same fold (that of ``folds`` when given) and covers every image of it."""
    for task in TASKS:
        for split, frame in (("oof", oof), ("test", test)):
            ref = None
            for model, part in frame[frame["task"] == task].groupby("model", sort=True):
                q = _questions(part).unique()
                where = f"{preds_dir / model / task} ({split})"
                if ref is None:
                    ref = (where, q)
                else:
                    _same_questions(ref[1], q, where, ref[0])
    ref_fold, ref_where = None, None
    if folds is not None:
        ref_fold = folds.drop_duplicates("img_path").set_index("img_path")["fold"].astype(int)
        ref_where = "folds.csv"
    for model, part in oof.groupby("model", sort=True):
        spread = part.groupby("img_path")["fold"].nunique()
        if (spread > 1).any():
            raise DumpError(f"{preds_dir / model}: image {spread[spread > 1].index[0]!r} is OOF in more "
                            "than one fold (total and element dumps disagree)")
        fold_of = part.drop_duplicates("img_path").set_index("img_path")["fold"].astype(int)
        if ref_fold is None:
            ref_fold, ref_where = fold_of, str(preds_dir / model)
            continue
        missing = ref_fold.index.difference(fold_of.index)
        if len(missing):
            raise DumpError(f"{preds_dir / model}: {len(missing)} image(s) of {ref_where} have no OOF "
                            f"prediction, e.g. {list(missing[:3])}")
        extra = fold_of.index.difference(ref_fold.index)
        if len(extra):
            raise DumpError(f"{preds_dir / model}: OOF predictions for {len(extra)} image(s) not in "
                            f"{ref_where}, e.g. {list(extra[:3])}")
        moved = fold_of != ref_fold.reindex(fold_of.index)
        if moved.any():
            img = moved[moved].index[0]
            raise DumpError(f"{preds_dir / model}: image {img!r} is OOF in fold {fold_of[img]} but in "
                            f"fold {ref_fold[img]} of {ref_where}")


# --------------------------------------------------------------------------- prediction tables

def _spread(long: pd.DataFrame) -> np.ndarray:
    """Standard deviation of each total question's label distribution (NaN for elements)."""
    labels = np.array([float(x) for x in TASK_LABELS["total"]])
    cols = [f"p_{x}" for x in TASK_LABELS["total"]]
    out = np.full(len(long), np.nan)
    is_total = (long["task"] == "total").to_numpy()
    if is_total.any() and all(c in long for c in cols):
        p = long.loc[is_total, cols].to_numpy(float)
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        mean = p @ labels
        out[is_total] = np.sqrt(np.clip(p @ labels ** 2 - mean ** 2, 0, None))
    return out


def prediction_table(long: pd.DataFrame) -> pd.DataFrame:
    """One row per question: ``pred__<model>`` and ``sd__<model>`` (the spread of a total question's
    label distribution), averaged over the rows of a question (the folds, for test dumps)."""
    long = long.assign(sd=_spread(long))
    g = long.groupby([*KEY, "model"], sort=False)[["pred", "sd"]].mean()
    pred = g["pred"].unstack("model")
    sd = g["sd"].unstack("model")
    pred.columns = [f"{PRED}{m}" for m in pred.columns]
    sd.columns = [f"sd__{m}" for m in sd.columns]
    sd = sd.loc[:, sd.notna().any()]
    return pd.concat([pred, sd], axis=1).reset_index()


def add_image_features(master: pd.DataFrame, models: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Each model's view of the whole image, on every question of it: its total prediction, and the
    mean, minimum and share-present of its element predictions. Predictions only, no labels."""
    master = master.copy()
    el = master[master["task"] == "element"]
    tot = master[master["task"] == "total"]
    for m in models["element"]:
        g = el.groupby("img_path")[PRED + m]
        master[f"img_elmean__{m}"] = master["img_path"].map(g.mean())
        master[f"img_elmin__{m}"] = master["img_path"].map(g.min())
        master[f"img_elfrac__{m}"] = master["img_path"].map((el[PRED + m] >= 0.5).groupby(el["img_path"]).mean())
    for m in models["total"]:
        master[f"img_total__{m}"] = master["img_path"].map(tot.set_index("img_path")[PRED + m])
    return master


def prediction_columns(task: str, models: Mapping[str, Sequence[str]], frame: pd.DataFrame) -> list[str]:
    """The base-model prediction features of one task's meta-model."""
    if task == "total":
        cols = [f"{PRED}{m}" for m in models["total"]] + [f"sd__{m}" for m in models["total"]]
        cols += [f"img_{s}__{m}" for m in models["element"] for s in ("elmean", "elmin", "elfrac")]
    else:
        cols = [f"{PRED}{m}" for m in models["element"]] + [f"img_total__{m}" for m in models["total"]]
        cols += [f"img_elmean__{m}" for m in models["element"]]
    return [c for c in cols if c in frame.columns]


def design_matrix(master: pd.DataFrame, task: str, models: Mapping[str, Sequence[str]],
                  feature_set: str, record_cols: Sequence[str]) -> pd.DataFrame:
    """The meta-model inputs of one task: 'preds' (base predictions), 'preds+stats' (plus record
    features and prompt-group statistics of the predictions) or 'stats' (record features only)."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
    rows = master[master["task"] == task]
    pred_cols = prediction_columns(task, models, rows)
    parts = []
    if feature_set != "stats":
        parts.append(rows[pred_cols])
    if feature_set != "preds":
        parts.append(rows[list(record_cols)])
        grouped = [c for c in pred_cols if c.startswith((PRED, "img_elmean__"))] if feature_set != "stats" else []
        parts.append(group_features(rows, grouped))
    return pd.concat(parts, axis=1)


# --------------------------------------------------------------------------- meta-models

class BoostedMeta:
    """An XGBoost or LightGBM regressor: squared error for totals, cross-entropy on the mean vote
    for elements. ``n_rounds=None`` means the settings' cap, with early stopping when ``fit`` gets
    a validation set (``best_rounds_`` then holds the number of trees it kept)."""

    def __init__(self, kind: str, task: str, settings: EnsembleSettings, n_rounds: int | None = None):
        self.kind, self.task, self.s = kind, task, settings
        self.n_rounds = n_rounds
        self.best_rounds_: int | None = None
        self.model = None

    def _make(self, early_stop: bool):
        s, n = self.s, self.n_rounds or self.s.n_estimators
        if self.kind == "xgboost":
            import xgboost as xgb
            return xgb.XGBRegressor(
                objective="reg:squarederror" if self.task == "total" else "reg:logistic",
                n_estimators=n, learning_rate=s.learning_rate, max_depth=s.max_depth,
                subsample=s.subsample, colsample_bytree=s.colsample, reg_lambda=s.reg_lambda,
                tree_method="hist", enable_categorical=True, n_jobs=s.n_jobs, random_state=s.seed,
                early_stopping_rounds=s.early_stopping_rounds if early_stop else None)
        import lightgbm as lgb
        return lgb.LGBMRegressor(
            objective="regression" if self.task == "total" else "cross_entropy",
            n_estimators=n, learning_rate=s.learning_rate, num_leaves=s.num_leaves,
            min_child_samples=s.min_child_samples, subsample=s.subsample, subsample_freq=1,
            colsample_bytree=s.colsample, reg_lambda=s.reg_lambda, n_jobs=s.n_jobs,
            random_state=s.seed, verbose=-1)

    def fit(self, X: pd.DataFrame, y: np.ndarray, X_val: pd.DataFrame | None = None,
            y_val: np.ndarray | None = None) -> "BoostedMeta":
        early = X_val is not None and self.n_rounds is None
        self.model = self._make(early)
        if self.kind == "xgboost":
            kw = {"eval_set": [(X_val, y_val)], "verbose": False} if early else {}
            self.model.fit(X, y, **kw)
            if early:
                self.best_rounds_ = int(self.model.best_iteration) + 1
        else:
            import lightgbm as lgb
            kw = ({"eval_X": X_val, "eval_y": y_val,
                   "callbacks": [lgb.early_stopping(self.s.early_stopping_rounds, verbose=False)]}
                  if early else {})
            self.model.fit(X, y, **kw)
            if early:
                self.best_rounds_ = int(self.model.best_iteration_ or self.s.n_estimators)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(X), dtype=float)


Factory = Callable[[int | None], Any]


def meta_factory(kind: str, task: str, settings: EnsembleSettings) -> Factory:
    return lambda n_rounds=None: BoostedMeta(kind, task, settings, n_rounds)


def fit_meta(factory: Factory, X: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
             inner_cv: bool = True, augment: Callable | None = None):
    """Fit on every row given; with ``inner_cv`` the number of trees is the median early-stopping
    point over an inner CV on the same (prompt-grouped) folds of these rows."""
    y, folds = np.asarray(y, float), np.asarray(folds)
    aug = augment or (lambda a, b: (a, b))
    n_rounds = None
    inner = np.unique(folds)
    if inner_cv and len(inner) >= 2:
        rounds = []
        for j in inner:
            tr = folds != j
            model = factory(None).fit(*aug(X[tr], y[tr]), X[~tr], y[~tr])
            if getattr(model, "best_rounds_", None):
                rounds.append(model.best_rounds_)
        if rounds:
            n_rounds = max(1, int(round(float(np.median(rounds)))))
    return factory(n_rounds).fit(*aug(X, y))


def nested_cv_predict(factory: Factory, X: pd.DataFrame, y: np.ndarray, folds: np.ndarray,
                      inner_cv: bool = True, augment: Callable | None = None) -> np.ndarray:
    """Out-of-fold meta predictions: the rows of fold k are predicted by a model (and an inner CV)
    that saw only the rows of the other folds."""
    y, folds = np.asarray(y, float), np.asarray(folds)
    pred = np.full(len(y), np.nan)
    for k in np.unique(folds):
        held = folds == k
        model = fit_meta(factory, X[~held], y[~held], folds[~held], inner_cv, augment)
        pred[held] = model.predict(X[held])
    return pred


def structural_masker(cols: Sequence[str]) -> Callable:
    """Training augmentation: every row once as is and once with the structural columns missing."""
    def augment(X: pd.DataFrame, y: np.ndarray):
        present = [c for c in cols if c in X.columns]
        if not present:
            return X, y
        hidden = X.copy()
        for c in present:
            hidden[c] = pd.Series(pd.NA, index=X.index, dtype=X[c].dtype) if isinstance(
                X[c].dtype, pd.CategoricalDtype) else np.nan
        return pd.concat([X, hidden]), np.concatenate([y, y])
    return augment


# --------------------------------------------------------------------------- blending and calibration

def fit_blend(P: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares y ~ P @ w + b with w >= 0 and a free intercept b."""
    P, y = np.asarray(P, float), np.asarray(y, float)
    if P.ndim != 2 or len(P) != len(y):
        raise ValueError(f"fit_blend: P must be (n, c) with n = len(y); got {P.shape} and {y.shape}")
    A = np.column_stack([P, np.ones(len(P))])
    lower = np.r_[np.zeros(P.shape[1]), -np.inf]
    res = lsq_linear(A, y, bounds=(lower, np.full(P.shape[1] + 1, np.inf)))
    w = np.clip(res.x[:-1], 0.0, None)
    return w, float(res.x[-1])


def apply_blend(P: np.ndarray, weights: np.ndarray, intercept: float) -> np.ndarray:
    return np.asarray(P, float) @ weights + intercept


def fit_threshold(pred: np.ndarray, target: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The decision threshold on ``pred`` that maximises element ACC against ``target >= 0.5``;
    among equally good thresholds the one closest to 0.5."""
    pred, truth = np.asarray(pred, float), np.asarray(target, float) >= 0.5
    grid = np.round(np.linspace(0.05, 0.95, 181), 6) if grid is None else np.asarray(grid, float)
    accs = np.array([np.mean((pred >= t) == truth) for t in grid])
    best = np.flatnonzero(accs >= accs.max() - 1e-12)
    return float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])


def apply_threshold(pred: np.ndarray, threshold: float) -> np.ndarray:
    """Shift element scores so that the scorer's fixed 0.5 cut falls at ``threshold``."""
    return np.clip(np.asarray(pred, float) - threshold + 0.5, 0.0, 1.0)


def fit_calibration(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Linear total-score calibration (slope, intercept) by least squares: rank and the official
    PLCC are unchanged, the scale becomes that of the labels."""
    slope, intercept = np.polyfit(np.asarray(pred, float), np.asarray(target, float), 1)
    return float(slope), float(intercept)


@dataclass
class Blend:
    """A fitted blend of one task: candidate names, weights, intercept, element threshold."""

    candidates: list[str]
    weights: list[float]
    intercept: float
    threshold: float | None = None

    def apply(self, P: np.ndarray) -> np.ndarray:
        out = apply_blend(P, np.asarray(self.weights), self.intercept)
        return apply_threshold(out, self.threshold) if self.threshold is not None else out


def fit_task_blend(P: np.ndarray, y: np.ndarray, candidates: Sequence[str], task: str) -> Blend:
    w, b = fit_blend(P, y)
    blend = Blend(list(candidates), [float(x) for x in w], b)
    if task == "element":
        blend.threshold = fit_threshold(apply_blend(P, w, b), y)
    return blend


def nested_blend_predict(P: np.ndarray, y: np.ndarray, folds: np.ndarray, candidates: Sequence[str],
                         task: str) -> np.ndarray:
    """OOF blend predictions: fold k's weights and threshold are fitted on the other folds."""
    pred = np.full(len(y), np.nan)
    for k in np.unique(folds):
        held = folds == k
        pred[held] = fit_task_blend(P[~held], y[~held], candidates, task).apply(P[held])
    return pred


# --------------------------------------------------------------------------- scoring

def score_questions(frame: pd.DataFrame, pred: np.ndarray) -> dict:
    """Challenge metrics of one prediction per question (rows of ``frame``: task, img_path,
    element_key, target); NaN metrics when a prediction is missing."""
    pred = np.asarray(pred, float)
    if len(pred) != len(frame):
        raise ValueError(f"score_questions: {len(pred)} predictions for {len(frame)} questions")
    if not np.isfinite(pred).all():
        return {k: float("nan") for _, k in METRICS}
    df = frame[["img_path", "element_key", "task", "target"]].assign(pred=pred)
    is_total = df["task"] == "total"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return score_frame(df.loc[is_total, ["img_path", "target", "pred"]],
                           df.loc[~is_total, ["img_path", "element_key", "target", "pred"]])


def finalise(frame: pd.DataFrame, pred: np.ndarray) -> np.ndarray:
    """Clip to the label ranges (1..5 total, 0..1 element): what a submission may hold."""
    is_total = (frame["task"] == "total").to_numpy()
    pred = np.asarray(pred, float).copy()
    pred[is_total] = np.clip(pred[is_total], 1.0, 5.0)
    pred[~is_total] = np.clip(pred[~is_total], 0.0, 1.0)
    return pred


def truth_frame(truth: Any) -> pd.DataFrame:
    """Test ground truth as (img_path, task, element_key, target) from a path, a list of
    eval.json-style records or a ``load_records``-shaped frame."""
    from .submission import element_dict, load_json_records

    if isinstance(truth, (str, Path)):
        truth = load_json_records(truth)
    rows = []
    if isinstance(truth, pd.DataFrame):
        for rec in truth.itertuples(index=False):
            rows.append((rec.img_path, "total", "", rec.total_score))
            rows += [(rec.img_path, "element", k, rec.element_scores[k]) for k in rec.element_keys]
    else:
        for i, rec in enumerate(truth):
            where = f"truth record {i} ({rec.get('img_path')})"
            if "img_path" not in rec or "total_score" not in rec:
                raise ValueError(f"{where}: needs img_path and total_score")
            rows.append((rec["img_path"], "total", "", rec["total_score"]))
            rows += [(rec["img_path"], "element", k, v) for k, v in element_dict(rec, where).items()]
    df = pd.DataFrame(rows, columns=[*KEY, "target"])
    df["target"] = pd.to_numeric(df["target"], errors="coerce").astype(float)
    if df["target"].isna().any():
        bad = df[df["target"].isna()].iloc[0]
        raise ValueError(f"truth: missing value for {bad['img_path']!r} {bad['element_key']!r}")
    return df


def ceiling_metrics(noise_ceiling: Any) -> dict:
    """The noise ceiling as metric dict: a number is its Final; a mapping may hold srcc/plcc/acc/final
    (any case) directly or under a key such as 'test'."""
    if isinstance(noise_ceiling, (int, float)) and not isinstance(noise_ceiling, bool):
        return {"final": float(noise_ceiling)}
    if isinstance(noise_ceiling, Mapping):
        low = {str(k).lower(): v for k, v in noise_ceiling.items()}
        if "final" in low:
            return {k: float(low[k]) for _, k in METRICS if isinstance(low.get(k), (int, float))}
        for key in ("noise_ceiling", "ceiling", "test", *low):
            if isinstance(low.get(key), Mapping):
                try:
                    return ceiling_metrics(low[key])
                except ValueError:
                    continue
    raise ValueError(f"noise ceiling: expected a number or a mapping holding 'final', got {noise_ceiling!r}")


# --------------------------------------------------------------------------- the run

@dataclass
class _Method:
    name: str
    kind: str
    oof: np.ndarray                    # aligned with the OOF question frame
    test: np.ndarray                   # aligned with the test question frame
    test_single: list[np.ndarray] = field(default_factory=list)  # per-fold models, base rows only
    note: str = ""
    models: tuple[str, ...] = ()


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
        raise ValueError(f"folds: missing column(s) {lack}")
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
            raise ValueError(f"truth: no value for test question {r['img_path']!r} {r['element_key']!r}")

    methods: list[_Method] = []
    for m in used:
        kind = "base" if m in base else "baseline"
        oof_pred = oof_m[PRED + m].to_numpy(float)
        methods.append(_Method(m, kind, oof_pred, test_bag[PRED + m].to_numpy(float),
                               [test_fold[k][PRED + m].to_numpy(float) for k in fold_ids],
                               "test: mean score of the single-fold models", (m,)))
    for m in base:
        methods.append(_Method(f"bagging: {m}", "bagging", oof_m[PRED + m].to_numpy(float),
                               test_bag[PRED + m].to_numpy(float), note="test: fold-averaged", models=(m,)))
    if len(base) > 1:
        cols = [PRED + m for m in base]
        methods.append(_Method("bagging: mean of base models", "bagging",
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
            methods.append(_Method(label, kind, oof_pred, test_pred,
                                   note=f"{kinds[0]} on record features only"))
            continue
        for meta, (oof_pred, test_pred) in per_kind.items():
            meta_outputs[f"{label}: {meta}"] = (oof_pred, test_pred)
            methods.append(_Method(f"{label}: {meta}", kind, oof_pred, test_pred,
                                   note="nested CV on OOF", models=tuple(base)))
        if len(per_kind) > 1:
            oof_avg = np.mean([v[0] for v in per_kind.values()], axis=0)
            test_avg = np.mean([v[1] for v in per_kind.values()], axis=0)
            methods.append(_Method(f"{label}: {'+'.join(per_kind)}", kind, oof_avg, test_avg,
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
    methods.append(_Method("blending", "blending", oof_blend, test_blend,
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
        from . import plots
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


def category_accuracy_table(methods: list[_Method], oof_m: pd.DataFrame, test_m: pd.DataFrame | None) -> pd.DataFrame:
    """Element ACC per normalised category of every method, on OOF and (with truth) on test; the
    test predictions of a fold-trained model are its fold-bagged ones. Column 'all' is the
    pooled ACC, 'n' rows below give the element counts."""
    rows = []
    for split, frame in (("oof", oof_m), ("test", test_m)):
        if frame is None:
            continue
        el = (frame["task"] == "element").to_numpy()
        cat = frame.loc[el, "category"].astype(str).to_numpy()
        y = frame.loc[el, "target"].to_numpy(float) >= 0.5
        rows.append({"method": "n", "kind": "count", "split": split,
                     **pd.Series(cat).value_counts().sort_index().to_dict(), "all": int(el.sum())})
        for m in methods:
            hit = ((m.oof if split == "oof" else m.test)[el] >= 0.5) == y
            rows.append({"method": m.name, "kind": m.kind, "split": split,
                         **pd.Series(hit, index=cat).groupby(level=0).mean().to_dict(), "all": float(hit.mean())})
    return pd.DataFrame(rows)


def _leaderboard(methods: list[_Method], oof_m: pd.DataFrame, test_m: pd.DataFrame | None,
                 noise_ceiling: Any) -> pd.DataFrame:
    rows = []
    for m in methods:
        row = {"method": m.name, "kind": m.kind}
        sc = score_questions(oof_m, m.oof)
        row.update({f"oof_{name}": sc[key] for name, key in METRICS})
        if test_m is not None:
            if m.test_single:
                singles = [score_questions(test_m, p) for p in m.test_single]
                sc = {key: float(np.mean([x[key] for x in singles])) for _, key in METRICS}
            else:
                sc = score_questions(test_m, m.test)
            row.update({f"test_{name}": sc[key] for name, key in METRICS})
        row["note"] = m.note
        rows.append(row)
    if noise_ceiling is not None:
        c = ceiling_metrics(noise_ceiling)
        row = {"method": "noise ceiling", "kind": "ceiling"}
        row.update({f"test_{name}": c.get(key, np.nan) for name, key in METRICS})
        row["note"] = "perfect-vision predictor on the test split"
        rows.append(row)
    lb = pd.DataFrame(rows)
    cols = ["method", "kind", *(f"oof_{n}" for n, _ in METRICS)]
    if test_m is not None or noise_ceiling is not None:
        cols += [f"test_{n}" for n, _ in METRICS]
    return lb.reindex(columns=[*cols, "note"])


def _best_method(lb: pd.DataFrame) -> str:
    cand = lb[(lb["kind"] != "ceiling") & lb["oof_Final"].notna()].copy()
    if cand.empty:
        raise ValueError("ensemble: no method could be scored on OOF")
    cand["order"] = cand["kind"].map({k: i for i, k in enumerate(_KIND_ORDER)})
    cand["final"] = cand["oof_Final"].round(10)
    return str(cand.sort_values(["final", "order"], ascending=[False, True]).iloc[0]["method"])


def _best_base(lb: pd.DataFrame, methods: list[_Method]) -> dict:
    base = lb[lb["kind"] == "base"].dropna(subset=["oof_Final"])
    if base.empty:
        return {}
    name = str(base.sort_values("oof_Final", ascending=False).iloc[0]["method"])
    m = next(x for x in methods if x.name == name)
    return {f"{name} (best single model)": (m.oof, m.test)}


def _write_predictions(out_dir: Path, oof_m: pd.DataFrame, test_m: pd.DataFrame,
                       methods: list[_Method], with_truth: bool) -> None:
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


def _write_submission(sub_dir: Path, test: pd.DataFrame, test_m: pd.DataFrame, chosen: _Method,
                      s: EnsembleSettings, elapsed: float) -> Path:
    from .submission import build_records, readme_text, write_submission

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


# --------------------------------------------------------------------------- stage entry

def ensemble_stage(cfg, force: bool = False, settings: Any = None) -> pd.DataFrame | None:
    """Stage 05 from an experiment config: skipped when the leaderboard is newer than every dump."""
    from .data import read_json

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
