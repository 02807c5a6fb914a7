import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tokenfocus.data import parse_records
from tokenfocus.eda import (element_table, generator_category_rates, generator_weaknesses, md_table, write_report)


def _rec(img, pid, prompt, typ, total, elements, n=3):
    return {"prompt_id": pid, "prompt": prompt, "type": typ, "img_path": img, "total_score": total,
            "element_score": elements, "promt_meaningless": [0] * n, "split_confidence": [5] * n,
            "attribute_confidence": [5] * n, "fidelity_label": ["normal"] * n}


# Two prompts, two generators; one string element_score, one trailing-space key, one 6-annotator record.
P1, P2 = "a red circle", "two stars on grass"
RAW = [
    _rec("GenA/p1.png", "p1", P1, "real", [4, 4, 4],
         {"circle (object)": [1, 1, 1], "red (attribute-color)": [1, 1, 0]}),
    _rec("GenA/p1_1.png", "p1", P1, "real", [3, 4, 2],
         "{'circle (object)': [1, 1, 1], 'red (attribute-color)': [0, 0, 1]}"),
    _rec("GenB/p1.png", "p1", P1, "real", [2, 2, 3, 2, 2, 1],
         {"circle (object)": [1, 1, 1, 1, 1, 0], "red (attribute-color)": [1, 1, 1, 0, 0, 0]}, n=6),
    _rec("GenA/p2.png", "p2", P2, "synthetic", [5, 5, 4],
         {"star (object)": [1, 1, 1], "two (counting)": [1, 1, 1], "grass (Location) ": [1, 0, 1]}),
    _rec("GenB/p2.png", "p2", P2, "synthetic", [1, 2, 1],
         {"star (object)": [0, 1, 0], "two (counting)": [0, 0, 0], "grass (Location) ": [0, 0, 0]}),
]
RAW_TEST = [
    {"prompt_id": "val_0001", "prompt": P1, "img_path": "img_0001.png", "total_score": None,
     "element_score": {"circle (object)": None, "red (attribute-color)": None},
     "promt_meaningless": 0.0, "split_confidence": 5.0, "attribute_confidence": 4.67},
    {"prompt_id": "val_0002", "prompt": "a cubist cat", "img_path": "img_0002.png", "total_score": None,
     "element_score": {"cat (object)": None, "cubist (attribute-style-artist/works) ": None, "x (Style)": None},
     "promt_meaningless": 0.0, "split_confidence": 4.0, "attribute_confidence": 5.0},
]


@pytest.fixture(scope="module")
def frames():
    train, _ = parse_records(RAW, "train_list.json")
    test, _ = parse_records(RAW_TEST, "test.json")
    return train, test


@pytest.fixture(scope="module")
def eda_out(frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda")
    return out, write_report(*frames, out, progress=False)


def test_files_are_valid_pngs_and_embedded(eda_out):
    out, s = eda_out
    pngs = [f for f in s["files"] if f.endswith(".png")]
    assert len(pngs) >= 16 and "generator_subcategory_heatmap.png" in pngs and "test_categories.png" in pngs
    for name in pngs:
        raw = (out / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert min(im.size) > 100, name
    md = (out / "summary.md").read_text(encoding="utf-8")
    for name in pngs:
        assert f"]({name})" in md
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == s
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == sorted(s["files"])


def test_counts(eda_out):
    t = eda_out[1]["train"]
    assert (t["records"], t["prompts"], t["generators"], t["elements"]) == (5, 2, 2, 12)
    assert t["images_per_prompt"] == {"mean": 2.5, "min": 2, "max": 3}
    assert t["elements_per_record"] == {"mean": 2.4, "min": 2, "max": 3}
    assert t["annotators_per_record"] == {"3": 4, "6": 1}
    assert t["prompt_types"] == {"real": 3, "synthetic": 2}
    assert t["records_per_generator"] == {"GenA": 3, "GenB": 2}
    # "attribute-color" and "Location " normalise; the trailing-space key still counts
    assert t["elements_per_category"] == {"object": 5, "attribute": 3, "counting": 2, "location": 2}


def test_label_rates_by_hand(eda_out):
    t = eda_out[1]["train"]
    # positive = mean vote >= 0.5 (a tie counts): circle 1,1,5/6; star 1,1/3; red 2/3,1/3,1/2; two 1,0;
    # grass 2/3,0
    assert t["positive_rate_per_category"] == pytest.approx(
        {"object": 4 / 5, "attribute": 2 / 3, "counting": 0.5, "location": 0.5}, abs=1e-4)
    assert t["element_positive_rate"] == pytest.approx(8 / 12, abs=1e-4)
    assert t["positive_rate_per_generator"] == pytest.approx({"GenA": 6 / 7, "GenB": 2 / 5}, abs=1e-4)
    assert t["mean_total_per_generator"] == pytest.approx({"GenA": (4 + 3 + 14 / 3) / 3, "GenB": (2 + 4 / 3) / 2},
                                                          abs=1e-4)
    assert list(t["mean_total_per_generator"]) == ["GenA", "GenB"]
    assert t["total_mean"] == pytest.approx(3.0)


def test_agreement_by_hand(eda_out):
    t = eda_out[1]["train"]
    # unanimous: circle yes,yes,no (6 votes, one 0); star yes,no; red no,no,no; two yes,yes; grass no,yes
    assert t["unanimous_per_category"] == pytest.approx(
        {"object": 3 / 5, "attribute": 0.0, "counting": 1.0, "location": 0.5}, abs=1e-4)
    stds = [0.0, np.sqrt(2 / 3), np.sqrt(1 / 3), np.sqrt(2 / 9), np.sqrt(2 / 9)]
    assert t["total_annotator_std_mean"] == pytest.approx(np.mean(stds), abs=1e-4)
    assert t["total_unanimous_rate"] == pytest.approx(1 / 5)


def test_test_overview(eda_out):
    te = eda_out[1]["test"]
    assert (te["records"], te["prompts"], te["elements"]) == (2, 2, 5)
    assert (te["hidden_model"], te["hidden_type"], te["labelled"]) == (2, 2, 0)
    assert te["prompts_also_in_train"] == 1
    assert te["categories_unseen_in_train"] == ["style"]
    assert te["elements_per_category"] == {"object": 2, "attribute": 2, "style": 1}


def test_without_test_file(frames, tmp_path):
    s = write_report(frames[0], None, tmp_path, progress=False, min_cell=1)
    assert "test" not in s and not (tmp_path / "test_categories.png").exists()
    # per-generator rates (object, attribute-color, counting, location): GenA 1, .5, 1, 1; GenB .5, 1, 0, 0
    weak = s["train"]["weakest_category_per_generator"]
    assert weak["GenA"] == "attribute-color" and weak["GenB"] in ("counting", "location")
    assert "## Test file" not in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_generator_category_rates_masks_small_cells(frames):
    el = element_table(frames[0])
    rate, count = generator_category_rates(el, min_count=1)
    assert list(rate.index) == ["GenA", "GenB"]          # best overall positive rate first
    assert list(rate.columns[:2]) == ["object", "attribute"]  # most frequent categories first
    assert rate.loc["GenA", "attribute"] == pytest.approx(0.5)
    assert rate.loc["GenB", "object"] == pytest.approx(0.5)
    assert count.loc["GenA", "object"] == 3 and count.loc["GenB", "location"] == 1
    masked, _ = generator_category_rates(el, min_count=3)
    assert masked.notna().sum().sum() == 1 and masked.loc["GenA", "object"] == pytest.approx(1.0)
    fine, _ = generator_category_rates(el, min_count=1, column="category_fine")
    assert set(fine.columns) == {"object", "attribute-color", "counting", "location"}
    assert fine.loc["GenB", "attribute-color"] == 1.0


def test_generator_weaknesses():
    rate = pd.DataFrame({"color": [0.9, 0.3, 0.95], "counting": [0.2, 0.8, 0.8], "spatial": [0.7, 0.7, np.nan]},
                        index=["A", "B", "C"])
    weak = generator_weaknesses(rate)
    # C is at or above the mean wherever it is rated (NaN skipped): no weakness to report
    assert weak["category"].to_dict() == {"A": "counting", "B": "color"}
    assert weak.loc["B", "vs_mean"] == pytest.approx(0.3 - (0.9 + 0.3 + 0.95) / 3)


def test_md_table_escapes_and_formats():
    df = pd.DataFrame({"n": [1234], "rate": [0.5], "name": ["a|b"]}, index=pd.Index(["x"], name="k"))
    assert md_table(df).splitlines() == ["| k | n | rate | name |", "|---|---|---|---|",
                                         "| x | 1,234 | 0.500 | a\\|b |"]
