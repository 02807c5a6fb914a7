# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Bagging, stacking, blending and the submission
#
# **Stage:** `src/05_ensemble.py` → `tokenfocus.stages.run_ensemble` →
# `tokenfocus.ensemble.build_leaderboard`. **Reads:** every dump
# under `output/demo/preds/`. **Writes:** `leaderboard.csv`, `ensemble/` (plots, per-method
# predictions, `ensemble.json`) and `submission/submission.zip` (the best method by OOF Final).
#
# * **Bagging:** a base model's test prediction is the mean of its five fold models.
# * **Stacking:** XGBoost and LightGBM meta-models on the base models' OOF predictions, one for
#   the total score and one for the elements, with and without the **statistic features**
#   (element category, number of elements, prompt length, the element's position in the prompt,
#   the prompt-evaluation fields, and group statistics of each base model's prediction among the
#   images of the same prompt). Scored by **nested cross-validation** over the same prompt-grouped
#   folds: the meta-model is never scored on a fold it saw.
# * **Blending:** non-negative weights over base and meta predictions with an intercept, fitted
#   on OOF; for the total this is also its linear calibration, which keeps the predicted total
#   linear in 1-5 (the official PLCC fits a logistic from ground truth to predictions, so a
#   warped prediction loses points). The element threshold is fitted on OOF too.
# * **Metadata-only:** the statistic features alone, the floor that says how much the LVLMs add.
#
# On the demo, `eval.json` holds the hidden test truth, so every row also has test scores, and
# the **noise ceiling** (a predictor that knows the true scene, limited only by annotator noise)
# says how far any method could go.

# %%
# %matplotlib inline
import json

import pandas as pd
from IPython.display import Image, display

from tokenfocus.notebook import present, start

cfg, EXP = start()  # the demo; TOKENFOCUS_CONFIG=configs/X.yaml walks through another experiment

# %%
lb_path = EXP / "leaderboard.csv"
lb = pd.read_csv(lb_path) if present(lb_path, "src/05_ensemble.py") else None
info_path = EXP / "ensemble" / "ensemble.json"
info = json.loads(info_path.read_text()) if present(info_path, "src/05_ensemble.py") else {}
if lb is not None:
    display(lb.drop(columns="note").set_index("method"))
    print("best method by OOF Final:", info.get("best_method"))
    if set(info.get("base_models", [])) <= {"prior"}:
        print("only the prior baseline has dumps so far: the LVLM rows appear once stages 03 and 04 have run")

# %% [markdown]
# ## Where the methods stand
#
# The best method, the best single base model and the metadata-only model on OOF and test, and
# the gap to the noise ceiling.

# %%
if lb is not None:
    scored = lb[lb["kind"] != "ceiling"].set_index("method")
    base = scored[scored["kind"] == "base"].sort_values("oof_Final", ascending=False)
    picks = {"best method": info.get("best_method"),
             "best single model": base.index[0] if len(base) else None,
             "metadata-only": "metadata-only" if "metadata-only" in scored.index else None}
    cols = [c for c in ("oof_Final", "test_Final") if c in lb]
    view = pd.DataFrame({label: scored.loc[name, cols] for label, name in picks.items() if name}).T
    view.insert(0, "method", [picks[k] for k in view.index])
    ceiling = lb.loc[lb["kind"] == "ceiling", "test_Final"]
    if len(ceiling) and "test_Final" in view:
        view["gap to noise ceiling (test)"] = float(ceiling.iloc[0]) - view["test_Final"].astype(float)
    display(view)
    if picks["best single model"] and picks["metadata-only"]:
        for split in ("oof", "test"):
            col = f"{split}_Final"
            if col in scored:
                s = scored[col]
                stack = s[scored["kind"] == "stacking+features"].max()
                print(f"{split}: stacking+features {stack:.4f} | best single {s[picks['best single model']]:.4f} "
                      f"| metadata-only {s['metadata-only']:.4f}")

# %% [markdown]
# ## Plots written by the stage
#
# The leaderboard (OOF and test Final, the noise ceiling as a dashed line), predicted versus true
# total score of the best method, and element accuracy per category.

# %%
for name in ("leaderboard", "pred_vs_true", "category_accuracy"):
    path = EXP / "ensemble" / f"{name}.png"
    if present(path, "src/05_ensemble.py"):
        display(Image(filename=str(path), width=820))

# %% [markdown]
# ## Blend weights
#
# From `ensemble.json`: the non-negative weight of every candidate (base model predictions
# `pred__<model>` and the stacking meta-models), the intercept, and the element threshold.

# %%
if info:
    print("base models:", info["base_models"], "| baselines:", info["baselines"])
    print("structural features used:", info["structural_features"] or "none",
          f"(mode {info['structural_mode']!r}; the test hides the T2I model and the prompt type)")
    print("record features:", ", ".join(info["record_features"]))
    weights = pd.DataFrame({task: pd.Series(b["weights"], index=b["candidates"])
                            for task, b in info["blend"].items()})
    extra = pd.DataFrame({task: {"intercept": b["intercept"], "threshold": b["threshold"]}
                          for task, b in info["blend"].items()})
    display(pd.concat([weights, extra]).round(4))

# %% [markdown]
# ## The statistic features
#
# What the meta-models see besides the base predictions, for the first test questions
# (`tokenfocus.features.question_features`; no feature reads a label).

# %%
from tokenfocus.data import load_records
from tokenfocus.features import question_features

test = load_records(cfg.test_path)
question_features(test).drop(columns=["prompt"]).head(6)

# %% [markdown]
# ## The submission
#
# `submission.zip` holds `output.json` (one record per test image, element keys copied
# byte-exact from `test.json`) and the challenge's `readme.txt`. It is validated before it is
# written; here it is read back, validated again against `test.json`, and scored against the
# demo's hidden truth by the same function as `src/06_evaluate.py`.

# %%
import zipfile

from tokenfocus.metrics import evaluate_files, format_table
from tokenfocus.submission import load_json_records, load_submission, validate_submission

sub_path = EXP / "submission" / "submission.zip"
if present(sub_path, "src/05_ensemble.py"):
    with zipfile.ZipFile(sub_path) as z:
        print("submission.zip:", z.namelist())
        print(z.read("readme.txt").decode())
    records = load_submission(sub_path)
    validate_submission(records, load_json_records(cfg.test_path))
    print(f"valid: {len(records)} records, {sum(len(r['element_score']) for r in records):,} element scores")
    print(json.dumps(records[0], indent=1, ensure_ascii=False)[:600])

# %%
if sub_path.is_file() and cfg.eval_path is not None and cfg.eval_path.is_file():
    result = evaluate_files(cfg.eval_path, sub_path)
    print(format_table(result))
    if lb is not None and info.get("best_method") in set(lb["method"]) and "test_Final" in lb:
        row = lb.set_index("method").loc[info["best_method"]]
        print(f"leaderboard test Final of {info['best_method']!r}: {row['test_Final']:.4f}")
elif sub_path.is_file():
    print("no truth file for this dataset: the submission is scored by the challenge server")
