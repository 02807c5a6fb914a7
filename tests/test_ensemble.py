"""Ensemble stage on synthetic dumps: coverage checks, nested CV, blending, the leaderboard, the submission."""
import json

import numpy as np
import pandas as pd
import pytest

from tokenfocus.baseline import fit_prior, prior_dumps
from tokenfocus.data import parse_records, question_frame
from tokenfocus.dumps import DumpError, dump_path, write_dump
from tokenfocus.ensemble import (EnsembleSettings, apply_threshold, ceiling_metrics, fit_blend,
                                 fit_meta, fit_threshold, load_dumps,
                                 nested_blend_predict, nested_cv_predict, build_leaderboard,
                                 score_questions)
from tokenfocus.folds import make_folds
from tokenfocus.submission import load_submission, validate_submission

GENERATORS = ["GenA", "GenB", "GenC", "GenD"]
CATEGORIES = ["object", "attribute-color", "counting", "Spatial", "location"]
WORDS = {"object": ["circle", "square", "tree", "car"], "attribute-color": ["red", "blue", "green"],
         "counting": ["two", "three", "four"], "Spatial": ["left of", "above", "below"],
         "location": ["beach", "city", "forest"]}
FAST = dict(n_estimators=60, learning_rate=0.1, min_child_samples=10, early_stopping_rounds=10,
            n_jobs=1, progress=False)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def make_synthetic(seed=0, n_train=60, n_test=15):
    """Raw train records, final-phase test records, eval.json-style truth, and the true scene.

    Each element is truly present or not (a Bernoulli draw whose rate depends on the generator and
    the category); three annotators vote with 15% flips; the total votes follow the share of
    present elements. Returns the scene as {(img_path, key): present} and {img_path: expected total}.
    """
    rng = np.random.default_rng(seed)
    skill = dict(zip(GENERATORS, [1.5, 0.7, 0.0, -0.7]))
    hard = dict(zip(CATEGORIES, [1.0, 0.3, -0.8, -0.5, 0.6]))
    train, test, truth, scene, expected = [], [], [], {}, {}
    for p in range(n_train + n_test):
        cats = list(rng.choice(CATEGORIES, size=rng.integers(3, 6), replace=False))
        texts = [str(rng.choice(WORDS[c])) for c in cats]
        prompt = f"prompt {p}: " + " ".join(texts)
        keys = [f"{t} ({c.capitalize() if p % 7 == 0 else c})" + (" " if p % 11 == 0 and j == 0 else "")
                for j, (t, c) in enumerate(zip(texts, cats))]
        is_test = p >= n_train
        for g in GENERATORS:
            present = {k: int(rng.random() < _sigmoid(skill[g] + hard[c])) for k, c in zip(keys, cats)}
            votes = {k: [int(v) if rng.random() > 0.15 else 1 - int(v) for _ in range(3)] for k, v in present.items()}
            share = np.mean(list(present.values()))
            totals = [int(np.clip(round(1 + 4 * share + rng.normal(0, 0.6)), 1, 5)) for _ in range(3)]
            img = f"img_{p:04d}_{g}.png" if is_test else f"{g}/{p:05d}.png"
            for k, v in present.items():
                scene[(img, k)] = v
            expected[img] = 1 + 4 * share
            meta = {"promt_meaningless": [0, 0, 0], "split_confidence": [int(x) for x in rng.integers(3, 6, 3)],
                    "attribute_confidence": [int(x) for x in rng.integers(3, 6, 3)]}
            if is_test:
                test.append({"prompt_id": f"val_{len(test):04d}", "prompt": prompt, "img_path": img,
                             "total_score": None, "element_score": {k: None for k in keys},
                             **{f: float(np.mean(v)) for f, v in meta.items()}})
                truth.append({"prompt": prompt, "img_path": img, "total_score": float(np.mean(totals)),
                              "element_score": {k: float(np.mean(v)) for k, v in votes.items()}})
            else:
                train.append({"prompt_id": f"{p:05d}", "prompt": prompt, "type": "real" if p % 2 else "synthetic",
                              "img_path": img, "total_score": totals, "element_score": votes, **meta})
    return train, test, truth, scene, expected


def _model_preds(q, scene, expected, rng, noise, bias_cat=None):
    """A noisy 'LVLM': element logit around the true presence, total around the expected total."""
    out = np.empty(len(q))
    tot = (q["task"] == "total").to_numpy()
    out[tot] = np.clip(q.loc[tot, "img_path"].map(expected).to_numpy() + rng.normal(0, noise[0], tot.sum()), 1, 5)
    z = np.array([scene[(i, k)] for i, k in zip(q.loc[~tot, "img_path"], q.loc[~tot, "element_key"])])
    logit = 2.0 * (2 * z - 1) + rng.normal(0, noise[1], (~tot).sum())
    if bias_cat is not None:
        logit += 1.5 * (q.loc[~tot, "category"].to_numpy() == bias_cat)
    out[~tot] = _sigmoid(logit)
    return out


def _dump_frame(q, pred, model, fold):
    df = q.copy()
    df["fold"], df["model"], df["kind"], df["pred"] = fold, model, "base", pred
    tot = (df["task"] == "total").to_numpy()
    lo = np.clip(np.floor(pred), 1, 4)
    for lab in range(1, 6):
        df[f"p_{lab}"] = np.where(tot, np.where(lo == lab, 1 - (pred - lo), 0) + np.where(lo + 1 == lab, pred - lo, 0), np.nan)
    df["p_1"] = np.where(tot, df["p_1"], pred)
    df["p_0"] = np.where(tot, np.nan, 1 - pred)
    return df


def write_synthetic_experiment(exp_dir, seed=0, n_train=60, n_test=15):
    """Records, folds and dumps of two noisy base models and the prior baseline under ``exp_dir``."""
    train_raw, test_raw, truth, scene, expected = make_synthetic(seed, n_train, n_test)
    train, test = parse_records(train_raw)[0], parse_records(test_raw)[0]
    folds = make_folds(train, 5, seed)
    folds.to_csv(exp_dir / "folds.csv", index=False)
    train_f = train.merge(folds[["img_path", "fold"]], on="img_path")
    rng = np.random.default_rng(seed + 1)
    preds_dir = exp_dir / "preds"
    q_test = question_frame(test)
    specs = {"lvlm_a": ((0.7, 1.8), "counting"), "lvlm_b": ((0.8, 1.6), None)}
    for k in range(5):
        held = train_f[train_f["fold"] == k]
        q_oof = question_frame(held)
        for name, (noise, bias) in specs.items():
            for split, q in (("oof", q_oof), ("test", q_test)):
                df = _dump_frame(q, _model_preds(q, scene, expected, rng, noise, bias), name, k)
                for task in ("total", "element"):
                    part = df[df["task"] == task]
                    write_dump(part, dump_path(preds_dir, name, task, split, k), part, task)
        prior = fit_prior(train_f[train_f["fold"] != k])
        for split, recs in (("oof", held), ("test", test)):
            for task, df in prior_dumps(prior, recs, "prior", k).items():
                write_dump(df, dump_path(preds_dir, "prior", task, split, k), df, task)
    return train, test, truth, folds


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    exp_dir = tmp_path_factory.mktemp("exp")
    train, test, truth, folds = write_synthetic_experiment(exp_dir)
    return exp_dir, train, test, truth, folds


@pytest.fixture(scope="module")
def result(experiment):
    exp_dir, train, test, truth, folds = experiment
    lb = build_leaderboard(exp_dir, train, test, folds, dict(FAST), truth_records=truth,
                      noise_ceiling={"srcc": 0.9, "plcc": 0.9, "acc": 0.9, "final": 0.9})
    return lb


# --------------------------------------------------------------------------- dumps

def test_load_dumps_reads_all(experiment):
    exp_dir, train, test, truth, folds = experiment
    oof, tst = load_dumps(exp_dir / "preds", folds=folds)
    assert set(oof["model"]) == {"lvlm_a", "lvlm_b", "prior"}
    n_questions = len(question_frame(train))
    assert len(oof) == 3 * n_questions
    assert len(tst) == 3 * 5 * len(question_frame(test))
    oof2, _ = load_dumps(exp_dir / "preds", models=["lvlm_a"])
    assert set(oof2["model"]) == {"lvlm_a"}


def _copy_preds(src, dst):
    import shutil
    shutil.copytree(src / "preds", dst / "preds")
    return dst / "preds"


def test_load_dumps_refuses_a_hole(experiment, tmp_path):
    exp_dir, *_ , folds = experiment
    preds = _copy_preds(exp_dir, tmp_path)
    path = dump_path(preds, "lvlm_b", "element", "oof", 2)
    pd.read_parquet(path).iloc[1:].to_parquet(path)
    with pytest.raises(DumpError, match="lvlm_b/element"):
        load_dumps(preds, folds=folds)


def _relabel(preds, src, dst, kind):
    """A copy of model ``src``'s dumps as model ``dst`` of the given kind."""
    for f in sorted((preds / src).glob("*/*.parquet")):
        df = pd.read_parquet(f).assign(model=dst, kind=kind)
        out = preds / dst / f.parent.name / f.name
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(out)


def test_model_kinds_pick_base_models_and_baselines(experiment, tmp_path):
    """Which dumps are stacked is read from their kind column, not from the model's name."""
    from tokenfocus.dumps import model_kinds
    from tokenfocus.ensemble.stage import _select_models

    exp_dir, *_ = experiment
    preds = _copy_preds(exp_dir, tmp_path)
    _relabel(preds, "lvlm_b", "variant_soft_ce", "ablation")
    _relabel(preds, "lvlm_a", "zeroshot_lookalike", "base")   # a baseline's name, a base model's kind
    _relabel(preds, "lvlm_a", "untuned", "baseline")
    kinds = model_kinds(preds)
    assert kinds == {"lvlm_a": "base", "lvlm_b": "base", "prior": "baseline", "untuned": "baseline",
                     "variant_soft_ce": "ablation", "zeroshot_lookalike": "base"}
    base, baselines = _select_models(kinds, EnsembleSettings())
    assert base == ["lvlm_a", "lvlm_b", "zeroshot_lookalike"]
    assert baselines == ["prior", "untuned"]
    base, baselines = _select_models(kinds, EnsembleSettings(base_models=["variant_soft_ce"], baselines=["prior"]))
    assert (base, baselines) == (["variant_soft_ce"], ["prior"])


def test_model_kinds_refuse_a_bad_or_missing_kind(experiment, tmp_path):
    from tokenfocus.dumps import model_kinds

    exp_dir, *_ = experiment
    preds = _copy_preds(exp_dir, tmp_path)
    path = dump_path(preds, "lvlm_b", "total", "oof", 1)
    pd.read_parquet(path).assign(kind="teacher").to_parquet(path)
    with pytest.raises(DumpError, match=r"lvlm_b/total/oof_fold1.parquet: column 'kind' holds \['teacher'\]"):
        model_kinds(preds)
    pd.read_parquet(path).drop(columns="kind").to_parquet(path)
    with pytest.raises(DumpError, match=r"oof_fold1.parquet: missing column\(s\) \['kind'\].*--force"):
        model_kinds(preds)
    with pytest.raises(DumpError, match="column 'kind'"):
        write_dump(pd.read_parquet(dump_path(preds, "lvlm_a", "total", "oof", 1)).assign(kind="x"),
                   tmp_path / "x.parquet", pd.read_parquet(dump_path(preds, "lvlm_a", "total", "oof", 1)), "total")


def test_load_dumps_refuses_wrong_fold_and_missing_file(experiment, tmp_path):
    exp_dir, *_, folds = experiment
    preds = _copy_preds(exp_dir, tmp_path)
    moved = folds.copy()
    img = moved["img_path"].iloc[0]
    moved.loc[moved["img_path"] == img, "fold"] = (moved.loc[moved["img_path"] == img, "fold"] + 1) % 5
    with pytest.raises(DumpError, match="fold"):
        load_dumps(preds, folds=moved)
    dump_path(preds, "lvlm_a", "total", "test", 3).unlink()
    with pytest.raises(DumpError, match=r"test folds"):
        load_dumps(preds)
    with pytest.raises(DumpError, match="no dumps for model"):
        load_dumps(preds, models=["nope"])


# --------------------------------------------------------------------------- nested CV

class Memoriser:
    """A leak detector: predicts a row's own label when it trained on that row, else -1."""

    def __init__(self, n_rounds=None):
        self.best_rounds_ = None

    def fit(self, X, y, X_val=None, y_val=None):
        self.seen = dict(zip(X["row_id"], y))
        if X_val is not None:
            assert not set(X_val["row_id"]) & set(self.seen), "inner validation rows were trained on"
            self.best_rounds_ = 5
        return self

    def predict(self, X):
        return np.array([self.seen.get(r, -1.0) for r in X["row_id"]])


def test_nested_cv_never_trains_on_the_scored_fold():
    rng = np.random.default_rng(0)
    n = 200
    X = pd.DataFrame({"row_id": np.arange(n)})
    y = rng.uniform(0, 1, n)
    folds = rng.integers(0, 5, n)
    pred = nested_cv_predict(Memoriser, X, y, folds, inner_cv=True)
    assert np.all(pred == -1.0)
    # The detector does detect: a model fitted on every row returns the labels.
    leaky = fit_meta(Memoriser, X, y, folds, inner_cv=True)
    np.testing.assert_array_equal(leaky.predict(X), y)


def test_nested_blend_uses_other_folds_only():
    rng = np.random.default_rng(0)
    n = 300
    folds = np.repeat(np.arange(5), n // 5)
    y = rng.normal(size=n)
    # Candidate 0 is the label itself in fold 0 only: a blend fitted with fold 0 would weigh it.
    P = np.column_stack([np.where(folds == 0, y, rng.normal(size=n)), y + rng.normal(0, 1, n)])
    pred = nested_blend_predict(P, y, folds, ["a", "b"], "total")
    held = folds == 0
    assert np.corrcoef(pred[held], y[held])[0, 1] < 0.9


# --------------------------------------------------------------------------- blending, threshold

def test_fit_blend_weights_non_negative():
    rng = np.random.default_rng(0)
    y = rng.normal(3, 1, 500)
    P = np.column_stack([y + rng.normal(0, 0.5, 500), -y + rng.normal(0, 0.1, 500), y + rng.normal(0, 1.0, 500)])
    w, b = fit_blend(P, y)
    assert np.all(w >= 0)
    assert w[1] == pytest.approx(0, abs=1e-9) and w[0] > w[2] > 0
    assert np.linalg.lstsq(np.column_stack([P, np.ones(500)]), y, rcond=None)[0][1] < 0  # unconstrained would use it
    assert abs(b) < 1.5


def test_fit_threshold_finds_the_shift():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, 2000)
    pred = np.clip(target + 0.2 + rng.normal(0, 0.05, 2000), 0, 1)
    t = fit_threshold(pred, target)
    assert t == pytest.approx(0.7, abs=0.03)
    acc = lambda p: np.mean((p >= 0.5) == (target >= 0.5))  # noqa: E731
    assert acc(apply_threshold(pred, t)) > acc(pred) + 0.1
    assert fit_threshold(np.array([0.2, 0.8]), np.array([0.0, 1.0])) == 0.5  # ties go to 0.5


def test_ceiling_metrics_forms():
    assert ceiling_metrics(0.8) == {"final": 0.8}
    assert ceiling_metrics({"test": {"Final": 0.8, "SRCC": 0.7}})["srcc"] == 0.7
    with pytest.raises(ValueError):
        ceiling_metrics({"nothing": 1})


def test_settings_refuse_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        EnsembleSettings.coerce({"n_trees": 3})
    with pytest.raises(ValueError, match="structural"):
        EnsembleSettings.coerce({"structural": "sometimes"})


# --------------------------------------------------------------------------- the run

def test_leaderboard_rows_and_columns(result, experiment):
    lb = result
    exp_dir = experiment[0]
    assert list(lb.columns) == ["method", "kind", "oof_SRCC", "oof_PLCC", "oof_ACC", "oof_Final",
                                "test_SRCC", "test_PLCC", "test_ACC", "test_Final", "note"]
    methods = set(lb["method"])
    for m in ["lvlm_a", "lvlm_b", "prior", "metadata-only", "bagging: lvlm_a", "bagging: lvlm_b",
              "bagging: mean of base models", "stacking: xgboost", "stacking: lightgbm",
              "stacking: xgboost+lightgbm", "stacking+features: xgboost", "stacking+features: lightgbm",
              "stacking+features: xgboost+lightgbm", "blending", "noise ceiling"]:
        assert m in methods, m
    assert dict(zip(lb["method"], lb["kind"]))["prior"] == "baseline"
    scored = lb[lb["kind"] != "ceiling"]
    assert scored[["oof_Final", "test_Final"]].notna().all().all()
    on_disk = pd.read_csv(exp_dir / "leaderboard.csv")
    assert list(on_disk["method"]) == list(lb["method"])
    assert not list(exp_dir.rglob("*.tmp"))


def test_stacking_beats_each_base_model(result):
    lb = result.set_index("method")
    best_single = lb.loc[["lvlm_a", "lvlm_b"], "oof_Final"].max()
    for m in ["stacking: xgboost+lightgbm", "stacking+features: xgboost+lightgbm", "blending"]:
        assert lb.loc[m, "oof_Final"] > best_single + 0.01, m
    assert best_single > lb.loc["metadata-only", "oof_Final"]
    assert lb.loc["prior", "oof_Final"] < best_single


def test_oof_scores_match_saved_predictions(result, experiment):
    exp_dir = experiment[0]
    oof = pd.read_parquet(exp_dir / "ensemble" / "oof_predictions.parquet")
    sc = score_questions(oof, oof["blending"].to_numpy())
    row = result.set_index("method").loc["blending"]
    assert sc["final"] == pytest.approx(row["oof_Final"])
    assert row["oof_Final"] < 0.9  # nested scores are not the in-sample fit


def test_submission_validates(result, experiment):
    exp_dir, train, test, truth, folds = experiment
    sub = exp_dir / "submission" / "submission.zip"
    assert result.attrs["submission"] == str(sub)
    records = load_submission(sub)
    validate_submission(records, truth)
    import zipfile
    with zipfile.ZipFile(sub) as zf:
        readme = zf.read("readme.txt").decode()
    assert "LLM[1] / Non-LLM[0] : 1" in readme
    assert result.attrs["best_method"] in readme
    from tokenfocus.metrics import score
    best = result.set_index("method").loc[result.attrs["best_method"]]
    if best["kind"] not in ("base", "baseline"):
        assert score(truth, records)["final"] == pytest.approx(best["test_Final"], abs=1e-9)
    for name in ("leaderboard.png", "pred_vs_true.png", "category_accuracy.png"):
        assert (exp_dir / "ensemble" / name).stat().st_size > 1000
    info = json.loads((exp_dir / "ensemble" / "ensemble.json").read_text())
    assert info["structural_features"] == []  # the test hides type and T2I model
    assert all(w >= 0 for task in ("total", "element") for w in info["blend"][task]["weights"])


@pytest.mark.parametrize("mode,test_inputs,with_truth", [("mask", "per_fold", True), ("use", "bagged", False)])
def test_structural_modes_work_when_test_hides_them(experiment, tmp_path, mode, test_inputs, with_truth):
    exp_dir, train, test, truth, folds = experiment
    _copy_preds(exp_dir, tmp_path)
    settings = dict(FAST, structural=mode, test_inputs=test_inputs, meta_models=["lightgbm"],
                    inner_cv=False, plots=with_truth)
    lb = build_leaderboard(tmp_path, train, test, folds, settings, truth_records=truth if with_truth else None)
    info = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    assert set(info["structural_features"]) == {"type", "t2i_model"}
    assert "noise ceiling" not in set(lb["method"])
    if with_truth:
        assert lb["test_Final"].notna().all()
    else:
        assert not [c for c in lb.columns if c.startswith("test_")]
    validate_submission(load_submission(tmp_path / "submission" / "submission.zip"), truth)
    test_pred = pd.read_parquet(tmp_path / "ensemble" / "test_predictions.parquet")
    assert np.isfinite(test_pred["stacking+features: lightgbm"]).all()


def _to_levels(df: pd.DataFrame, levels: int) -> pd.DataFrame:
    """A total dump's prediction spread over ``levels`` evenly spaced levels of 1..5 (the two
    around ``pred``), named as stage 04 names them (``questions.level_name``)."""
    from tokenfocus.questions import label_set_of

    values = np.array(label_set_of(levels).values["total"])
    names = label_set_of(levels).names("total")
    out = df.drop(columns=[c for c in df if c.startswith("p_")])
    pred = out["pred"].to_numpy(float)
    hi = np.clip(np.searchsorted(values, pred), 1, levels - 1)
    w = (pred - values[hi - 1]) / (values[hi] - values[hi - 1])
    for j, name in enumerate(names):
        out[f"p_{name}"] = np.where(hi - 1 == j, 1 - w, 0.0) + np.where(hi == j, w, 0.0)
    return out


def test_ensemble_reads_models_with_any_number_of_total_levels(experiment, tmp_path):
    """A model read from fifteen total levels (p_1, p_1.2857, ..., p_5) stacks beside one read
    from five: dumps load, the spread feature is the distribution's, the leaderboard is built."""
    import shutil

    from tokenfocus.dumps import read_dump
    from tokenfocus.ensemble.matrices import _spread

    exp_dir, train, test, truth, folds = experiment
    copy = tmp_path / "exp"
    shutil.copytree(exp_dir, copy, ignore=shutil.ignore_patterns("ensemble", "submission", "*.csv"))
    shutil.copy(exp_dir / "folds.csv", copy / "folds.csv")
    for path in (copy / "preds" / "lvlm_b" / "total").glob("*.parquet"):
        df = _to_levels(read_dump(path), 15)
        write_dump(df, path, df, "total")
    oof, _ = load_dumps(copy / "preds", folds=folds)
    b = oof[(oof["model"] == "lvlm_b") & (oof["task"] == "total")]
    assert "p_1.2857" in oof and b["p_1.2857"].notna().all() and b["p_2"].isna().all()
    assert oof.loc[(oof["model"] == "lvlm_a") & (oof["task"] == "total"), "p_2"].notna().all()
    spread = _spread(b)
    assert np.isfinite(spread).all() and (spread < 0.5).all()   # two neighbouring levels 0.29 apart
    lb = build_leaderboard(copy, train, test, folds, dict(FAST), truth_records=truth)
    assert "stacking+features" in set(lb["kind"]) and np.isfinite(lb["oof_Final"]).all()
    assert "lvlm_b" in set(lb["method"])


def test_total_dump_needs_two_levels(experiment):
    exp_dir, *_ = experiment
    from tokenfocus.dumps import read_dump

    path = next((exp_dir / "preds" / "lvlm_a" / "total").glob("oof_*.parquet"))
    df = read_dump(path).drop(columns=["p_2", "p_3", "p_4", "p_5"])
    with pytest.raises(DumpError, match="at least two total levels"):
        write_dump(df, exp_dir / "unused.parquet", df, "total")
