import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tokenfocus.data import (DataError, element_frame, load_records, normalise_category, parse_records,
                             question_frame, split_element_key, validate_images)


def test_raw_train_records(raw_train, write_json):
    df, report = load_records(write_json("train_list.json", raw_train), with_report=True)
    a, b = df.iloc[0], df.iloc[1]
    assert a.t2i_model == "SDXL-Turbo" and b.t2i_model == "SDXL"
    assert a.total_score == pytest.approx(11 / 3)
    assert b.total_score == pytest.approx(13 / 6) and b.n_annotators == 6
    # string element_score parsed, keys byte-exact including the trailing space
    assert b.element_keys == ["star (object)", "two (counting)"]
    assert b.element_scores["two (counting)"] == pytest.approx(1 / 6)
    assert "Lavender (Color) " in a.element_keys
    assert a.split_confidence == pytest.approx(14 / 3)
    assert report.n_string_element_score == 1
    assert report.annotator_counts == {3: 1, 6: 1}


def test_final_phase_test_records(raw_test, write_json):
    df = load_records(write_json("test.json", raw_test))
    r = df.iloc[0]
    assert r.t2i_model is None and r.type is None and math.isnan(r.total_score)
    assert r.split_confidence == pytest.approx(4.67)
    el = element_frame(df)
    assert list(el["category"]) == ["object", "attribute"]
    assert list(el["category_raw"]) == ["object-cloth&accessories", "attribute-style-artist/works"]
    # One question table: the element table is its element rows, column for column.
    q = question_frame(df)
    assert list(el.columns) == list(q.columns)
    pd.testing.assert_frame_equal(el, q[q["task"] == "element"].reset_index(drop=True))
    assert el["target"].isna().all()
    assert el["element_key"].iloc[1] == "Monet (attribute-style-artist/works) "


def test_key_parsing_uses_last_parentheses():
    assert split_element_key("a dress (worn) (object)") == ("a dress (worn)", "object")
    assert split_element_key("Lavender (Color) ") == ("Lavender", "Color")
    assert normalise_category("Color") == "color"
    assert normalise_category("object-cloth&accessories") == "object"
    assert normalise_category("attribute-style-artist/works") == "attribute"


def test_question_frame_order(raw_train):
    df, _ = parse_records(raw_train)
    q = question_frame(df)
    assert list(q["task"][:4]) == ["total", "element", "element", "element"]
    assert len(q) == 2 + 5
    assert q.loc[q["task"] == "total", "element_key"].eq("").all()
    assert q.loc[q["task"] == "total", ["category", "category_raw", "element_text"]].eq("").all().all()


def test_structural_columns_are_the_fields_the_questions_name():
    from tokenfocus.data import STRUCTURAL_COLUMNS
    from tokenfocus.prompts import STRUCTURAL_FIELDS
    assert tuple(STRUCTURAL_FIELDS) == STRUCTURAL_COLUMNS


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("img_path"), "img_path"),
    (lambda r: r.__setitem__("total_score", [4, 7, 3]), "total_score"),
    (lambda r: r.__setitem__("element_score", "{'a (object)': [1, 0"), "element_score"),
    (lambda r: r.__setitem__("element_score", {"a (object)": [1, 2]}), "element_score['a (object)']"),
    (lambda r: r.__setitem__("total_score", ["x"]), "total_score"),
])
def test_bad_records_name_file_record_field(raw_train, mutate, field):
    mutate(raw_train[1])
    with pytest.raises(DataError) as e:
        parse_records(raw_train, "train_list.json")
    assert "train_list.json: record 1" in str(e.value) and f"field '{field}'" in str(e.value)


def test_duplicate_img_path(raw_train):
    raw_train[1]["img_path"] = raw_train[0]["img_path"]
    with pytest.raises(DataError, match="record 1, field 'img_path': duplicate of record 0"):
        parse_records(raw_train, "t.json")


def test_string_literal_is_never_evaluated(raw_train):
    raw_train[0]["element_score"] = "__import__('os').system('echo hacked')"
    with pytest.raises(DataError, match="unparsable"):
        parse_records(raw_train, "t.json")


def test_invalid_json_and_missing_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        load_records(bad)
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.json")


def test_validate_images_lists_every_bad_path(raw_train, tmp_path):
    df, _ = parse_records(raw_train)
    (tmp_path / "SDXL-Turbo").mkdir()
    (tmp_path / "SDXL").mkdir()
    for p in ("SDXL-Turbo/00110.png", "SDXL/01191_1.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / p)
    assert validate_images(df, tmp_path, progress=False) == []
    (tmp_path / "SDXL-Turbo/00110.png").write_bytes(b"not a png")
    (tmp_path / "SDXL/01191_1.png").unlink()
    bad = validate_images(df, tmp_path, progress=False)
    assert len(bad) == 2
    assert "does not decode" in bad[0] and "missing" in bad[1]
