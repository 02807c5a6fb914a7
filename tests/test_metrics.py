import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import curve_fit
from scipy.special import expit, logit
from scipy.stats import pearsonr, spearmanr

from tokenfocus.metrics import (MetricWarning, acc, final_score, logistic4, plcc, score, score_frame,
                                srcc)
from tokenfocus.submission import SubmissionError, readme_text, write_submission

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"


def _truth(n=6):
    """Truth records in output.json shape, with a trailing-space key and a capitalised category."""
    rng = np.random.default_rng(7)
    recs = []
    for i in range(n):
        recs.append({
            "prompt": f"prompt {i}",
            "img_path": f"img_{i:04d}.png",
            "total_score": float(1 + 4 * i / (n - 1)),
            "element_score": {"circle (object)": float(rng.integers(0, 2)),
                              "red (attribute-color)": round(float(rng.uniform()), 3),
                              "Lavender (Color) ": 0.667},
        })
    return recs


# --------------------------------------------------------------------------- single metrics

def test_srcc_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    t = rng.integers(1, 6, 200).astype(float)  # many ties, as in mean opinion scores
    p = t + rng.normal(0, 1.5, 200)
    assert srcc(t, p) == pytest.approx(spearmanr(t, p)[0], abs=1e-12)


def test_srcc_hand_case():
    # one swapped neighbour pair among 5: 1 - 6 * 2 / (5 * 24) = 0.9
    assert srcc([1, 2, 3, 4, 5], [10, 20, 40, 30, 50]) == pytest.approx(0.9)


def test_plcc_is_pearson_of_fitted_values():
    rng = np.random.default_rng(1)
    t = rng.uniform(1, 5, 300)
    p = t + rng.normal(0, 0.8, 300)
    # official: logistic fitted from truth to prediction, then Pearson of fitted truth vs prediction
    popt, _ = curve_fit(logistic4, t, p, p0=[5.0, 1.0, 3.0, 1.0], maxfev=20000)
    assert plcc(t, p) == pytest.approx(pearsonr(logistic4(t, *popt), p)[0], abs=1e-6)
    popt, _ = curve_fit(logistic4, p, t, p0=[5.0, 1.0, 3.0, 1.0], maxfev=20000)
    assert plcc(t, p, "conventional") == pytest.approx(pearsonr(logistic4(p, *popt), t)[0], abs=1e-6)
    # a logistic nests the near-linear map, so the fit moves the linear value only a little
    assert plcc(t, p) == pytest.approx(pearsonr(t, p)[0], abs=0.02)
    # the fit absorbs any affine rescaling of the predictions
    assert plcc(t, 3 * p - 7) == pytest.approx(plcc(t, p), abs=1e-6)
    assert plcc(t, 2 * t + 1) > 0.99999


def test_plcc_direction_official_penalises_stretched_predictions():
    rng = np.random.default_rng(2)
    t = rng.uniform(1, 5, 300)
    # predictions with stretched tails: the truth is an exact logistic OF the prediction, so the
    # conventional fit (prediction -> truth) is perfect while the official one (truth -> prediction)
    # cannot follow the stretch
    stretched = 3 + logit((t - 0.9) / 4.2)
    off, conv = plcc(t, stretched), plcc(t, stretched, "conventional")
    assert conv > 0.99999
    assert off < conv - 0.01
    # the mirror case proves the two directions are not swapped
    squashed = 1 + 4 * expit((t - 3) / 0.4)
    assert plcc(t, squashed) > 0.99999
    assert plcc(t, squashed, "conventional") < 0.99


def test_plcc_rejects_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        plcc([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], direction="reverse")


def test_constant_predictions_score_zero_with_warning():
    t = [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.warns(MetricWarning, match="constant predictions"):
        assert srcc(t, [3.0] * 5) == 0.0
    with pytest.warns(MetricWarning, match="constant predictions"):
        assert plcc(t, [3.0] * 5) == 0.0


def test_plcc_falls_back_to_linear_on_too_few_pairs():
    t, p = [1.0, 2.0, 4.0], [1.5, 1.7, 3.9]
    with pytest.warns(MetricWarning, match="linear Pearson"):
        assert plcc(t, p) == pytest.approx(pearsonr(t, p)[0])


def test_nan_input_is_refused():
    with pytest.raises(ValueError, match="non-finite predictions"):
        srcc([1, 2, 3], [1, np.nan, 3])


def test_acc_hand_case():
    true = [1.0, 0.667, 0.333, 0.0, 0.5]
    pred = [0.9, 0.4, 0.6, 0.1, 0.5]
    # binarised at >= 0.5: true 1 1 0 0 1, pred 1 0 1 0 1 -> 3 of 5 agree
    assert acc(true, pred) == pytest.approx(0.6)


def test_final_weights():
    assert final_score(0.8, 0.6, 0.5) == pytest.approx(0.25 * 0.8 + 0.25 * 0.6 + 0.5 * 0.5)


# --------------------------------------------------------------------------- full score

def _perfect_total_preds(truth):
    """Predictions that are an exact logistic of the truth: SRCC 1 and official PLCC 1."""
    return {r["img_path"]: float(1 + 4 * expit((r["total_score"] - 3) / 0.7)) for r in truth}


def test_score_hand_case():
    truth = _truth(5)
    totals = _perfect_total_preds(truth)
    preds = []
    for i, r in enumerate(truth):
        # element predictions: the first element right everywhere; the other two wrong on images 0-1
        el = {}
        for j, (k, v) in enumerate(r["element_score"].items()):
            right = 0.9 if v >= 0.5 else 0.1
            wrong = 1.0 - right
            el[k] = wrong if (j > 0 and i < 2) else right
        preds.append({**r, "total_score": totals[r["img_path"]], "element_score": el})
    res = score(truth, preds)
    # 15 elements, 4 wrong -> ACC 11/15; Final = 0.25 * 1 + 0.25 * 1 + 0.5 * 11/15
    assert res["acc"] == pytest.approx(11 / 15)
    assert res["srcc"] == pytest.approx(1.0)
    assert res["plcc"] == pytest.approx(1.0, abs=1e-6)
    assert res["final"] == pytest.approx(0.5 + 0.5 * 11 / 15, abs=1e-6)
    assert (res["n_images"], res["n_elements"]) == (5, 15)


def test_score_matches_by_img_path_not_order():
    truth = _truth(8)
    rng = np.random.default_rng(3)
    preds = [{**r, "total_score": r["total_score"] + float(rng.normal(0, 0.7)),
              "element_score": {k: float(rng.uniform()) for k in r["element_score"]}} for r in truth]
    shuffled = [preds[i] for i in [5, 2, 7, 0, 1, 6, 3, 4]]
    assert score(truth, shuffled) == score(truth, preds)
    assert score(list(reversed(truth)), shuffled) == score(truth, preds)
    # pairing by position would have given something else
    naive = srcc([r["total_score"] for r in truth], [r["total_score"] for r in shuffled])
    assert naive != pytest.approx(score(truth, preds)["srcc"])


def test_score_refuses_missing_image():
    truth = _truth(6)
    with pytest.raises(SubmissionError, match="missing img_path"):
        score(truth, truth[1:])


def test_score_refuses_truth_without_labels():
    truth = _truth(6)
    test_like = [{**r, "total_score": None} for r in truth]
    with pytest.raises(ValueError, match="test.json rather than a truth file"):
        score(test_like, truth)


def test_score_frame_is_the_core_of_score():
    truth = _truth(6)
    rng = np.random.default_rng(4)
    preds = [{**r, "total_score": float(rng.uniform(1, 5)),
              "element_score": {k: float(rng.uniform()) for k in r["element_score"]}} for r in truth]
    total = pd.DataFrame({"img_path": [r["img_path"] for r in truth],
                          "target": [r["total_score"] for r in truth],
                          "oof": [p["total_score"] for p in preds]})
    element = pd.DataFrame([(r["img_path"], k, v, p["element_score"][k])
                            for r, p in zip(truth, preds) for k, v in r["element_score"].items()],
                           columns=["img_path", "element_key", "target", "oof"])
    assert score_frame(total, element, pred_col="oof") == score(truth, preds)
    # One question kind alone (a model trained with task_mode: separate): its own metrics, no Final.
    both = score_frame(total, element, pred_col="oof")
    only_total = score_frame(total, None, pred_col="oof")
    assert only_total == {k: both[k] for k in ("srcc", "plcc", "plcc_conventional", "n_images")}
    assert score_frame(None, element, pred_col="oof") == {k: both[k] for k in ("acc", "n_elements")}
    with pytest.raises(ValueError, match="neither"):
        score_frame(None, None)


def test_score_frame_refuses_duplicates_and_nan():
    total = pd.DataFrame({"img_path": ["a", "b", "b"], "target": [1.0, 2.0, 3.0], "pred": [1.0, 2.0, 3.0]})
    element = pd.DataFrame({"img_path": ["a"], "element_key": ["x (object)"], "target": [1.0], "pred": [1.0]})
    with pytest.raises(ValueError, match="duplicated img_path"):
        score_frame(total, element)
    total = pd.DataFrame({"img_path": ["a", "b", "c"], "target": [1.0, 2.0, 3.0], "pred": [1.0, np.nan, 3.0]})
    with pytest.raises(ValueError, match="non-finite 'pred'.*'b'"):
        score_frame(total, element)


# --------------------------------------------------------------------------- 06_evaluate CLI

def _run_cli(*args):
    python = PYTHON if PYTHON.exists() else Path(sys.executable)
    return subprocess.run([str(python), str(ROOT / "src" / "06_evaluate.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    truth = _truth(8)
    (d / "eval.json").write_text(json.dumps(truth))
    preds = [{**r, "total_score": r["total_score"] * 0.9 + 0.2} for r in truth]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = write_submission(d / "good", preds, truth, readme_text(0.1, 1, 0, 1, "test"))
    (d / "missing.json").write_text(json.dumps(preds[:-1]))
    return d, good


def test_cli_scores_a_valid_submission(cli_files):
    d, good = cli_files
    proc = _run_cli("--truth", d / "eval.json", "--submission", good, "--json", d / "metrics.json")
    assert proc.returncode == 0, proc.stderr
    for name in ("SRCC", "PLCC", "ACC", "Final"):
        assert name in proc.stdout
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["final"] == pytest.approx(0.25 * saved["srcc"] + 0.25 * saved["plcc"] + 0.5 * saved["acc"])
    assert saved["acc"] == 1.0


def test_cli_refuses_invalid_submission(cli_files):
    d, _ = cli_files
    proc = _run_cli("--truth", d / "eval.json", "--submission", d / "missing.json")
    assert proc.returncode == 2
    assert "missing img_path" in proc.stderr and "img_0007.png" in proc.stderr
    proc = _run_cli("--truth", d / "eval.json", "--submission", d / "nowhere.zip")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = _run_cli("--config", d / "nowhere.yaml", "--truth", d / "eval.json")
    assert proc.returncode == 2 and "config file not found" in proc.stderr
