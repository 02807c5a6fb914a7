"""Meta-models (XGBoost / LightGBM) and their nested cross-validation over the prompt-grouped folds."""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..config import EnsembleSettings

log = logging.getLogger("tokenfocus")


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
