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

Modules: ``matrices`` (prediction tables, design matrices), ``meta`` (meta-models, nested CV),
``blend`` (blending, element threshold), ``leaderboard`` (scores, truth, noise ceiling, the
table), ``outputs`` (what stage 05 writes), ``stage`` (stage 05). The settings are ``config.EnsembleSettings``; dumps are read by
``dumps.load_dumps``, beside the writer.
"""
from ..config import EnsembleSettings
from ..dumps import load_dumps
from .blend import apply_blend, apply_threshold, fit_blend, fit_task_blend, fit_threshold, nested_blend_predict
from .common import PRED, TASKS
from .leaderboard import ceiling_metrics, finalise, score_questions, truth_frame
from .matrices import add_image_features, design_matrix, prediction_table
from .meta import fit_meta, meta_factory, nested_cv_predict
from .leaderboard import format_leaderboard
from .stage import build_leaderboard, ensemble_stage

__all__ = ["EnsembleSettings", "PRED", "TASKS", "add_image_features", "apply_blend", "apply_threshold",
           "ceiling_metrics", "design_matrix", "ensemble_stage", "finalise", "fit_blend", "fit_meta",
           "fit_task_blend", "fit_threshold", "format_leaderboard", "load_dumps",
           "meta_factory", "nested_blend_predict", "nested_cv_predict", "prediction_table",
           "build_leaderboard", "score_questions", "truth_frame"]
