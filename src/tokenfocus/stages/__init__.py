"""One module per pipeline stage (the only callers of the parallel runner); the numbered scripts in
src/ are thin CLIs over their functions, re-exported here.

Each stage reads only what earlier stages wrote, writes atomically, and skips work whose outputs
already exist unless ``force`` is set. Skipping is safe only while the labels are the ones those
outputs were made from: the first stage to read the training file records its sha256 in
``<exp_dir>/data.json``, and every later read compares (``check_training_data``).
"""
from __future__ import annotations

from ..experiment import DATA_RECORD, check_training_data, load_folds, load_split  # noqa: F401
from ..log import setup_logging  # noqa: F401  (the stage scripts' log format)
from .ablation import ABLATION_BOOTSTRAP, ablation_table
from .baseline import run_prior_baseline
from .common import load_truth_records, noise_ceiling, score_rows
from .demo import make_demo
from .eda import run_eda
from .ensemble import final_submission, run_ensemble
from .evaluate import evaluate_submission
from .folds import make_fold_file
from .infer import run_inference
from .notebooks import run_notebooks
from .train import run_training
from .validate import validate_dataset

__all__ = ["ABLATION_BOOTSTRAP", "ablation_table", "evaluate_submission", "final_submission", "load_truth_records",
           "make_demo", "make_fold_file", "noise_ceiling", "run_eda", "run_ensemble", "run_inference", "run_notebooks",
           "run_prior_baseline", "run_training", "score_rows", "validate_dataset"]
