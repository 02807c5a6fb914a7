"""Challenge submission: build, validate, write and read `output.json` / `readme.txt` / `submission.zip`.

The official scorer sorts both lists and pairs rows blindly, so one missing image silently shifts
every later row. Nothing is written here before `validate_submission` has accepted the records.
"""
from __future__ import annotations

import ast
import io
import json
import math
import numbers
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path

OUTPUT_JSON = "output.json"
README_TXT = "readme.txt"
SUBMISSION_ZIP = "submission.zip"

# Labels of the challenge's readme form, in order; the scorer's organisers read them verbatim.
README_FIELDS = (
    "runtime per image [s]",
    "CPU[1] / GPU[0]",
    "Extra Data [1] / No Extra Data [0]",
    "LLM[1] / Non-LLM[0]",
    "Other description",
)

TOTAL_RANGE = (1.0, 5.0)
ELEMENT_RANGE = (0.0, 1.0)
_SHOW = 10  # offenders listed per problem before "... and N more"


class SubmissionError(InputError):
    """A submission the scorer would mis-read or reject."""


class SubmissionWarning(UserWarning):
    """Legal but suspicious submission content (e.g. a total outside 1-5)."""


# --------------------------------------------------------------------------- reading

def load_json_records(path: str | os.PathLike) -> list[dict]:
    """Read a JSON list of record dicts (test.json, eval.json, output.json); strings kept byte-exact."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    return _parse_records(text, str(path))


def load_submission(path: str | os.PathLike) -> list[dict]:
    """Read a submission: a .zip with output.json at its root, a folder holding output.json, or the json itself."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.is_dir():
        return load_json_records(path / OUTPUT_JSON)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            check_zip_layout(zf, path)
            text = zf.read(OUTPUT_JSON).decode("utf-8")
        return _parse_records(text, f"{path}:{OUTPUT_JSON}")
    return load_json_records(path)


def check_zip_layout(zf: zipfile.ZipFile, path: str | os.PathLike) -> None:
    """A challenge zip holds exactly output.json and readme.txt at its root, the readme in the
    challenge's form (every field present, with a value): anything else is refused, as the
    challenge's upload refuses it."""
    names = sorted(zf.namelist())
    expected = sorted((OUTPUT_JSON, README_TXT))
    if names != expected:
        missing = [n for n in expected if n not in names]
        extra = [n for n in names if n not in expected]
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
        raise SubmissionError(f"{path}: a submission zip holds exactly {OUTPUT_JSON} and {README_TXT} at its "
                              f"root; {'; '.join(parts)}")
    try:
        readme = zf.read(README_TXT).decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError(f"{path}:{README_TXT}: not UTF-8 text") from None
    try:
        check_readme(readme)
    except SubmissionError as e:
        raise SubmissionError(f"{path}:{e}") from None


def _parse_records(text: str, where: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise SubmissionError(f"{where}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise SubmissionError(f"{where}: record {i} is {type(rec).__name__}, expected an object")
    return data


def element_dict(record: Mapping, where: str = "record") -> dict:
    """The record's element_score as a dict; a string holding a Python dict literal is parsed safely."""
    if "element_score" not in record:
        raise SubmissionError(f"{where}: missing field 'element_score'")
    value = record["element_score"]
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as exc:
            raise SubmissionError(f"{where}: element_score string is not a dict literal ({exc})") from None
    if not isinstance(value, dict):
        raise SubmissionError(f"{where}: element_score is {type(value).__name__}, expected a dict")
    return value


def element_keys(record: Mapping, where: str = "record") -> list[str]:
    """Element keys in file order, from raw records (element_score) or loaded rows (element_keys)."""
    if "element_score" not in record and "element_keys" in record:
        return list(record["element_keys"])
    return list(element_dict(record, where))


# --------------------------------------------------------------------------- building

def build_records(test_records: pd.DataFrame | Iterable[Mapping],
                  total_pred: Mapping[str, float],
                  element_pred: Mapping[tuple[str, str], float]) -> list[dict]:
    """output.json entries in test order; element keys copied from the test record, never re-typed.

    `test_records` are test.json records, or a frame of them: raw (element_score column) or as loaded
    by `tokenfocus.data.load_records` (element_keys column).
    `total_pred` maps img_path -> total; `element_pred` maps (img_path, element_key) -> element score.
    Predictions for images not in the test are ignored (with a warning); missing ones raise.
    """
    records = _as_record_list(test_records)
    out, missing = [], []
    for i, rec in enumerate(records):
        where = f"test record {i}"
        img = _require(rec, "img_path", where)
        keys = element_keys(rec, f"{where} ({img})")
        if img not in total_pred:
            missing.append(f"total of {img!r}")
        elements = {}
        for key in keys:
            if (img, key) in element_pred:
                elements[key] = _plain_float(element_pred[(img, key)])
            else:
                missing.append(f"element {key!r} of {img!r}")
        out.append({
            "prompt": rec.get("prompt"),
            "img_path": img,
            "total_score": _plain_float(total_pred.get(img)),
            "element_score": elements,
        })
    if missing:
        raise SubmissionError(_listing("no prediction for", missing))
    known = {r["img_path"] for r in out}
    stray = sum(1 for img in total_pred if img not in known)
    stray += sum(1 for img, _ in element_pred if img not in known)
    if stray:
        warnings.warn(f"{stray} prediction(s) for images not in the test records were ignored",
                      SubmissionWarning, stacklevel=2)
    validate_submission(out, records)
    return out


def _as_record_list(records: pd.DataFrame | Iterable[Mapping]) -> list[dict]:
    if isinstance(records, pd.DataFrame):
        return records.to_dict("records")
    return [dict(r) for r in records]


def _plain_float(value: Any) -> Any:
    # numpy scalars are not JSON-serialisable; anything non-numeric is left for the validator to name.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _require(rec: Mapping, field: str, where: str) -> Any:
    if field not in rec:
        raise SubmissionError(f"{where}: missing field {field!r}")
    return rec[field]


# --------------------------------------------------------------------------- validating

def validate_submission(records: Any, reference: pd.DataFrame | Iterable[Mapping]) -> None:
    """Refuse records the scorer would mis-pair or choke on; raise SubmissionError listing offenders.

    `reference` is the test.json records or truth records, as a list or a frame (only img_path and the
    element keys are used).
    Refused: missing / extra / duplicate img_path, missing / extra element key, missing field, and
    null, NaN, inf or non-numeric values. Totals outside 1-5 or elements outside 0-1 only warn.
    """
    ref_keys = _reference_keys(reference)
    if not isinstance(records, list):
        raise SubmissionError(f"submission must be a list of records, got {type(records).__name__}")

    problems: dict[str, list[str]] = {}

    def note(kind: str, item: str) -> None:
        problems.setdefault(kind, []).append(item)

    seen: set[str] = set()
    out_of_range = 0
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            note("record is not an object", f"#{i}")
            continue
        img = rec.get("img_path")
        if not isinstance(img, str):
            note("missing or non-string img_path", f"#{i}")
            continue
        if img in seen:
            note("duplicate img_path", img)
            continue
        seen.add(img)
        for field in ("prompt", "total_score", "element_score"):
            if field not in rec:
                note(f"missing field {field!r}", img)
        if img not in ref_keys:
            note("extra img_path (not in reference)", img)
            continue
        if "total_score" in rec:
            bad = _bad_value(rec["total_score"])
            if bad:
                note(f"total_score {bad}", img)
            elif not TOTAL_RANGE[0] <= rec["total_score"] <= TOTAL_RANGE[1]:
                out_of_range += 1
        if "element_score" not in rec:
            continue
        elements = rec["element_score"]
        if not isinstance(elements, dict):
            note("element_score is not an object", img)
            continue
        expected = ref_keys[img]
        for key in expected:
            if key not in elements:
                note("missing element key", f"{img} {key!r}")
        for key, value in elements.items():
            if key not in expected:
                note("extra element key", f"{img} {key!r}")
                continue
            bad = _bad_value(value)
            if bad:
                note(f"element value {bad}", f"{img} {key!r}")
            elif not ELEMENT_RANGE[0] <= value <= ELEMENT_RANGE[1]:
                out_of_range += 1
    for img in ref_keys:
        if img not in seen:
            note("missing img_path", img)

    if problems:
        n = sum(len(v) for v in problems.values())
        lines = [f"submission refused: {n} problem(s)"]
        lines += ["  " + _listing(kind, items) for kind, items in problems.items()]
        raise SubmissionError("\n".join(lines))
    if out_of_range:
        warnings.warn(f"{out_of_range} value(s) outside the label range (total {TOTAL_RANGE}, "
                      f"element {ELEMENT_RANGE}); the scorer accepts them", SubmissionWarning, stacklevel=2)


def _reference_keys(reference: pd.DataFrame | Iterable[Mapping]) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for i, rec in enumerate(_as_record_list(reference)):
        where = f"reference record {i}"
        img = _require(rec, "img_path", where)
        if img in keys:
            raise SubmissionError(f"{where}: duplicate img_path {img!r} in the reference")
        keys[img] = element_keys(rec, f"{where} ({img})")
    return keys


def _bad_value(value: Any) -> str | None:
    """Why a score value is unacceptable, or None."""
    if value is None:
        return "is null"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"is not a number ({type(value).__name__})"
    if math.isnan(value):
        return "is NaN"
    if math.isinf(value):
        return "is infinite"
    return None


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{kind} ({len(items)}): {shown}{more}"


# --------------------------------------------------------------------------- readme

def readme_text(runtime_per_image: float, cpu: bool | int, extra_data: bool | int,
                llm: bool | int, description: str) -> str:
    """readme.txt in the challenge's form; flags are 1/0 (True/False), the description one line."""
    runtime = float(runtime_per_image)
    if not math.isfinite(runtime) or runtime < 0:
        raise ValueError(f"runtime_per_image must be a finite number >= 0, got {runtime_per_image!r}")
    flags = [_flag(name, v) for name, v in (("cpu", cpu), ("extra_data", extra_data), ("llm", llm))]
    # The form is line-based: a newline inside the description would start a bogus field.
    desc = " ".join(str(description).split())
    values = [_format_runtime(runtime), *flags, desc]
    return "".join(f"{label} : {value}\n" for label, value in zip(README_FIELDS, values))


def _flag(name: str, value: bool | int) -> str:
    if value not in (0, 1):  # True/False compare equal to 1/0
        raise ValueError(f"{name} must be 1/0 or True/False, got {value!r}")
    return str(int(value))


def _format_runtime(seconds: float) -> str:
    # Positional, so a fast model reads "0.00001" rather than "1e-05".
    return np.format_float_positional(seconds, precision=4, fractional=False, trim="-")


def check_readme(text: str) -> None:
    """Raise SubmissionError unless every field of the form is present, in order, one per line,
    each with a value (the flags 0 or 1, the runtime a number)."""
    lines = text.splitlines()
    if len(lines) != len(README_FIELDS) or not all(
            line.startswith(f"{label} :") for line, label in zip(lines, README_FIELDS)):
        expected = "\n".join(f"{label} : ..." for label in README_FIELDS)
        raise SubmissionError(f"{README_TXT} is not in the challenge's form; expected:\n{expected}")
    values = [line[len(label) + 2:].strip() for line, label in zip(lines, README_FIELDS)]
    try:
        ok_runtime = math.isfinite(float(values[0])) and float(values[0]) >= 0
    except ValueError:
        ok_runtime = False
    if not ok_runtime:
        raise SubmissionError(f"{README_TXT}: '{README_FIELDS[0]}' needs a number of seconds, got {values[0]!r}")
    for label, value in zip(README_FIELDS[1:4], values[1:4]):
        if value not in ("0", "1"):
            raise SubmissionError(f"{README_TXT}: '{label}' needs 1 or 0, got {value!r}")
    if not values[4]:
        raise SubmissionError(f"{README_TXT}: '{README_FIELDS[4]}' is empty")


# --------------------------------------------------------------------------- writing

def write_submission(out_dir: str | os.PathLike, records: list[dict],
                     reference: pd.DataFrame | Iterable[Mapping],
                     readme: str) -> Path:
    """Validate, then write output.json, readme.txt and submission.zip (just those two, at the root).

    Each file is written to a temporary name and renamed, so an interrupted run leaves no partial file.
    Returns the path of submission.zip.
    """
    validate_submission(records, reference)
    check_readme(readme)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output_bytes = json.dumps(records, indent=1).encode("utf-8")
    readme_bytes = readme.encode("utf-8")
    _atomic_write(out_dir / OUTPUT_JSON, output_bytes)
    _atomic_write(out_dir / README_TXT, readme_bytes)
    zip_path = out_dir / SUBMISSION_ZIP
    _atomic_write(zip_path, _zip_bytes({OUTPUT_JSON: output_bytes, README_TXT: readme_bytes}))
    return zip_path


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            # Fixed timestamp: the same predictions give the same zip bytes.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
