import json
import math
import zipfile

import pandas as pd
import pytest

from tokenfocus.submission import (SubmissionError, SubmissionWarning, build_records, check_readme,
                                   load_json_records, load_submission, readme_text,
                                   validate_submission, write_submission)

TRAILING = "Lavender (Color) "  # the trailing space is part of the key


def _test_records(n=4):
    """test.json-shaped records: labels null, one element_score given as a string literal."""
    recs = []
    for i in range(n):
        keys = ["circle (object)", "red (attribute-color)", TRAILING]
        recs.append({"prompt_id": f"val_{i:04d}", "prompt": f"prompt {i}", "img_path": f"img_{i:04d}.png",
                     "total_score": None, "element_score": {k: None for k in keys},
                     "promt_meaningless": 0.0, "split_confidence": 4.67, "attribute_confidence": 5.0})
    recs[1]["element_score"] = repr(recs[1]["element_score"])
    return recs


def _preds(test):
    total = {r["img_path"]: 1.0 + i % 5 for i, r in enumerate(test)}
    element = {(r["img_path"], k): 0.25 * j for r in test
               for j, k in enumerate(["circle (object)", "red (attribute-color)", TRAILING])}
    return total, element


def _good(n=4):
    test = _test_records(n)
    return build_records(test, *_preds(test)), test


README = readme_text(0.12, 1, 0, 1, "TokenFocus-VQA")


# --------------------------------------------------------------------------- building

def test_build_records_keeps_keys_byte_exact_and_order():
    records, test = _good()
    assert [r["img_path"] for r in records] == [t["img_path"] for t in test]
    for r in records:
        assert list(r["element_score"]) == ["circle (object)", "red (attribute-color)", TRAILING]
        assert set(r) == {"prompt", "img_path", "total_score", "element_score"}
    assert records[2]["total_score"] == 3.0 and records[2]["element_score"][TRAILING] == 0.5


def test_build_records_accepts_a_frame():
    test = _test_records()
    expected = build_records(test, *_preds(test))
    assert build_records(pd.DataFrame(test), *_preds(test)) == expected
    # rows as the data layer loads them: keys listed in element_keys, no raw element_score
    keys = ["circle (object)", "red (attribute-color)", TRAILING]
    loaded = pd.DataFrame([{"img_path": r["img_path"], "prompt": r["prompt"], "element_keys": keys}
                           for r in test])
    assert build_records(loaded, *_preds(test)) == expected
    validate_submission(expected, loaded)


def test_build_records_names_missing_predictions():
    test = _test_records()
    total, element = _preds(test)
    del element[("img_0003.png", TRAILING)]
    with pytest.raises(SubmissionError, match=r"no prediction for \(1\): element 'Lavender \(Color\) ' of 'img_0003.png'"):
        build_records(test, total, element)


# --------------------------------------------------------------------------- validating

def test_valid_submission_passes():
    records, test = _good()
    validate_submission(records, test)


def _refused(records, test, match):
    with pytest.raises(SubmissionError, match=match):
        validate_submission(records, test)


def test_refuses_missing_img_path():
    records, test = _good()
    _refused(records[:2] + records[3:], test, r"missing img_path \(1\): img_0002.png")


def test_refuses_extra_img_path():
    records, test = _good()
    _refused(records + [{**records[0], "img_path": "img_9999.png"}], test,
             r"extra img_path \(not in reference\) \(1\): img_9999.png")


def test_refuses_duplicate_img_path():
    records, test = _good()
    _refused(records + [dict(records[1])], test, r"duplicate img_path \(1\): img_0001.png")


def test_refuses_missing_and_extra_element_key():
    records, test = _good()
    # the key without its trailing space is a different key: one missing, one extra
    el = records[0]["element_score"]
    el["Lavender (Color)"] = el.pop(TRAILING)
    with pytest.raises(SubmissionError) as info:
        validate_submission(records, test)
    msg = str(info.value)
    assert "missing element key (1): img_0000.png 'Lavender (Color) '" in msg
    assert "extra element key (1): img_0000.png 'Lavender (Color)'" in msg


@pytest.mark.parametrize("value, why", [(None, "is null"), (math.nan, "is NaN"), (math.inf, "is infinite"),
                                        ("0.5", "is not a number"), (True, "is not a number")])
def test_refuses_bad_values(value, why):
    records, test = _good()
    records[1]["element_score"]["circle (object)"] = value
    _refused(records, test, f"element value {why}.*img_0001.png 'circle \\(object\\)'")
    records, test = _good()
    records[2]["total_score"] = value
    _refused(records, test, f"total_score {why}.*img_0002.png")


def test_refuses_missing_field():
    records, test = _good()
    del records[0]["total_score"]
    _refused(records, test, r"missing field 'total_score' \(1\): img_0000.png")


def test_refusal_lists_first_ten_and_counts_the_rest():
    records, test = _good(15)
    with pytest.raises(SubmissionError) as info:
        validate_submission([], test)
    msg = str(info.value)
    assert "missing img_path (15):" in msg and "... and 5 more" in msg
    assert "img_0009.png" in msg and "img_0010.png" not in msg


def test_out_of_range_total_only_warns():
    records, test = _good()
    records[0]["total_score"] = 5.3
    with pytest.warns(SubmissionWarning, match="outside the label range"):
        validate_submission(records, test)


# --------------------------------------------------------------------------- readme

def test_readme_exact_form():
    assert README == ("runtime per image [s] : 0.12\nCPU[1] / GPU[0] : 1\n"
                      "Extra Data [1] / No Extra Data [0] : 0\nLLM[1] / Non-LLM[0] : 1\n"
                      "Other description : TokenFocus-VQA\n")
    check_readme(README)
    assert readme_text(0.00001, False, True, True, "two\nlines").splitlines()[0] == "runtime per image [s] : 0.00001"
    assert readme_text(1, 0, 1, 0, "two\nlines").endswith("Other description : two lines\n")
    with pytest.raises(ValueError, match="cpu"):
        readme_text(0.1, 2, 0, 1, "x")
    with pytest.raises(SubmissionError, match="form"):
        check_readme("runtime: 1\n")


# --------------------------------------------------------------------------- writing and reading

def test_zip_holds_exactly_two_files_at_root(tmp_path):
    records, test = _good()
    path = write_submission(tmp_path, records, test, README)
    assert path == tmp_path / "submission.zip"
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["output.json", "readme.txt"]
        assert zf.read("readme.txt").decode() == README
        assert json.loads(zf.read("output.json")) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["output.json", "readme.txt", "submission.zip"]
    # same predictions, same bytes
    first = path.read_bytes()
    write_submission(tmp_path, records, test, README)
    assert path.read_bytes() == first


def test_trailing_space_key_survives_write_and_load(tmp_path):
    records, test = _good()
    zip_path = write_submission(tmp_path, records, test, README)
    for source in (zip_path, tmp_path / "output.json", tmp_path):
        loaded = load_submission(source)
        assert loaded == records
        assert TRAILING in loaded[0]["element_score"]
        assert TRAILING.encode() in [k.encode() for k in loaded[3]["element_score"]]
        validate_submission(loaded, test)


def test_invalid_submission_writes_nothing(tmp_path):
    records, test = _good()
    with pytest.raises(SubmissionError):
        write_submission(tmp_path / "sub", records[1:], test, README)
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_json_records(bad)
    (tmp_path / "obj.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_json_records(tmp_path / "obj.json")
    with zipfile.ZipFile(tmp_path / "wrong.zip", "w") as zf:
        zf.writestr("sub/output.json", "[]")
    with pytest.raises(SubmissionError, match="missing output.json, readme.txt; unexpected sub/output.json"):
        load_submission(tmp_path / "wrong.zip")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_json_records(tmp_path / "missing.json")
