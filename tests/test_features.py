"""Statistic features: record features, prompt-group statistics, and that no label is read."""
import numpy as np
import pandas as pd
import pytest

from tokenfocus.data import parse_records
from tokenfocus.ensemble import PRED, add_image_features, design_matrix
from tokenfocus.features import (element_position, encode_categoricals, feature_columns,
                                 group_features, question_features, structural_available)


def _raw(rng, n_prompts=6, images=3):
    cats = ["object", "attribute-color", "counting", "Spatial"]
    raw = []
    for p in range(n_prompts):
        texts = [f"thing{p}", f"red{p}", f"two{p}", f"left{p}"][: 2 + p % 3]
        prompt = "a " + " and ".join(texts)
        for i in range(images):
            raw.append({
                "prompt_id": f"{p:05d}", "prompt": prompt, "type": "real" if p % 2 else "synthetic",
                "img_path": f"Gen{i}/{p:05d}.png",
                "total_score": [int(x) for x in rng.integers(1, 6, 3)],
                "element_score": {f"{t} ({c})" + (" " if j == 1 else ""): [int(x) for x in rng.integers(0, 2, 3)]
                                  for j, (t, c) in enumerate(zip(texts, cats))},
                "promt_meaningless": [0, 0, 1], "split_confidence": [5, 4, 5], "attribute_confidence": [4, 4, 5],
            })
    return raw


def _records(seed=0, **kw):
    return parse_records(_raw(np.random.default_rng(seed), **kw))[0]


def test_question_features_values():
    recs = _records()
    f = question_features(recs)
    assert len(f) == sum(1 + len(k) for k in recs["element_keys"])
    assert "target" not in f.columns
    row = f[(f["img_path"] == "Gen1/00001.png") & (f["task"] == "element")]
    assert list(row["category"]) == ["object", "attribute", "counting"]
    assert (row["n_elements"] == 3).all()
    assert (row["prompt_words"] == 6).all()  # "a thing1 and red1 and two1"
    assert (row["element_found"] == 1).all()
    assert np.all(np.diff(row["element_pos"].to_numpy()) > 0)  # elements in prompt order
    assert set(f["type"].dropna()) == {"real", "synthetic"}
    assert set(f["t2i_model"].dropna()) == {"Gen0", "Gen1", "Gen2"}
    assert f["split_confidence"].iloc[0] == pytest.approx(14 / 3)
    assert (row["n_cat__object"] == 1).all() and (row["n_cat__spatial"] == 0).all()
    fixed = question_features(recs, categories=["object", "brand-new"])
    assert [c for c in fixed if c.startswith("n_cat__")] == ["n_cat__object", "n_cat__brand-new"]
    tot = f[f["task"] == "total"]
    assert tot["category"].isna().all() and tot["element_pos"].isna().all()


def test_final_phase_records_have_no_structure():
    raw = [{"prompt_id": "val_0001", "prompt": "a red circle", "img_path": "img_0001.png",
            "total_score": None, "element_score": {"circle (object)": None},
            "promt_meaningless": 0.0, "split_confidence": 4.5, "attribute_confidence": 5.0}]
    f = question_features(parse_records(raw)[0])
    assert f["type"].isna().all() and f["t2i_model"].isna().all()
    assert structural_available(f) == []
    assert "type" not in feature_columns(f, include_structural=False)


def test_element_position():
    assert element_position("a red circle left of a tree", "red circle") == pytest.approx((2 + 5) / 27)
    assert element_position("a red circle", "Red") == pytest.approx((2 + 1.5) / 12)
    # falls back to the first word found
    assert element_position("two blue squares", "blue cube") == pytest.approx((4 + 2) / 16)
    assert np.isnan(element_position("two blue squares", "2"))


def test_group_features_hand_case():
    frame = pd.DataFrame({
        "prompt": ["p", "p", "p", "q", "p"],
        "task": ["total", "total", "total", "total", "element"],
        "element_key": ["", "", "", "", "x (object)"],
        "pred__a": [1.0, 2.0, 4.0, 3.0, 0.7],
    })
    g = group_features(frame, ["pred__a"])
    np.testing.assert_allclose(g["group_size"], [3, 3, 3, 1, 1])
    np.testing.assert_allclose(g["pred__a__dev"], [1 - 7 / 3, 2 - 7 / 3, 4 - 7 / 3, 0, 0])
    np.testing.assert_allclose(g["pred__a__rank"], [0, 0.5, 1, 0.5, 0.5])
    tie = group_features(frame.assign(pred__a=[2.0, 2.0, 4.0, 3.0, 0.7]), ["pred__a"])
    np.testing.assert_allclose(tie["pred__a__rank"][:3], [0.25, 0.25, 1])


def test_encode_categoricals_unseen_becomes_nan():
    train = pd.DataFrame({"category": ["object", "counting", None], "x": [1, 2, 3]})
    test = pd.DataFrame({"category": ["object", "brand-new"], "x": [1, 2]})
    tr, (te,) = encode_categoricals(train, [test], cols=["category"])
    assert list(tr["category"].cat.categories) == ["counting", "object"]
    assert te["category"].dtype == tr["category"].dtype
    assert te["category"].iloc[0] == "object" and pd.isna(te["category"].iloc[1])


def _design(records, preds):
    """Meta-model inputs built from records and fixed predictions, as the ensemble builds them."""
    f = question_features(records)
    master = f.merge(preds, on=["img_path", "task", "element_key"], how="left")
    models = {"total": ["a"], "element": ["a"]}
    master = add_image_features(master, models)
    cols = feature_columns(master)
    return {t: design_matrix(master, t, models, "preds+stats", cols) for t in ("total", "element")}


def test_features_ignore_labels():
    rng = np.random.default_rng(1)
    raw = _raw(rng, n_prompts=8)
    records = parse_records(raw)[0]
    q = question_features(records)
    preds = q[["img_path", "task", "element_key"]].assign(
        **{PRED + "a": np.where(q["task"] == "total", rng.uniform(1, 5, len(q)), rng.uniform(0, 1, len(q)))})
    before = _design(records, preds)
    # Permute every label of the images of "fold 0" (prompts 0-3): features must not move.
    fold0 = [r for r in raw if int(r["prompt_id"]) < 4]
    for r, src in zip(fold0, rng.permutation(len(fold0))):
        other = fold0[src]
        r["total_score"] = [6 - x for x in other["total_score"]]
        r["element_score"] = {k: [1 - v for v in vals] for k, vals in r["element_score"].items()}
    permuted = parse_records(raw)[0]
    assert not np.allclose(permuted["total_score"], records["total_score"])
    after = _design(permuted, preds)
    for task in before:
        pd.testing.assert_frame_equal(before[task], after[task])
