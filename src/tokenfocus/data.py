"""EvalMuse-40K records: loading, validation and the per-element / per-question tables.

Two file forms exist. ``train_list.json`` holds raw per-annotator lists; the final-phase
``test.json`` hides the T2I model (images renamed ``img_XXXX.png``) and the prompt type, carries
meta fields already averaged and null scores. Element keys are kept byte-exact everywhere because
the submission must reproduce them.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from .errors import InputError

META_FIELDS = ("promt_meaningless", "split_confidence", "attribute_confidence")
REQUIRED_FIELDS = ("prompt_id", "prompt", "img_path", "total_score", "element_score")
TOTAL_RANGE = (1.0, 5.0)
ELEMENT_RANGE = (0.0, 1.0)
# The category is whatever sits inside the LAST parentheses; keys may carry trailing spaces.
_KEY_RE = re.compile(r"^(?P<text>.*)\((?P<cat>[^()]*)\)\s*$", re.S)


class DataError(InputError):
    """Bad input file: the message names the file, the record index and the field."""


@dataclass
class LoadReport:
    """What a load saw; nothing is excluded without being counted here."""

    path: str
    n_records: int = 0
    n_final_phase: int = 0
    n_string_element_score: int = 0
    annotator_counts: dict[int, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.n_records} records"]
        if self.n_final_phase:
            out.append(f"  final-phase (unlabelled) records: {self.n_final_phase}")
        if self.n_string_element_score:
            out.append(f"  element_score given as a string literal: {self.n_string_element_score}")
        if self.annotator_counts:
            counts = ", ".join(f"{k} annotators: {v}" for k, v in sorted(self.annotator_counts.items()))
            out.append(f"  {counts}")
        for reason, n in self.excluded.items():
            out.append(f"  excluded ({reason}): {n}")
        return out


def split_element_key(key: str) -> tuple[str, str]:
    """``"Lavender (Color) "`` -> ``("Lavender", "Color")``; the key itself is never altered."""
    m = _KEY_RE.match(key)
    if not m:
        return key.strip(), ""
    return m.group("text").strip(), m.group("cat").strip()


def normalise_category(category: str) -> str:
    """Lower-case, first segment before '-' or '/': ``attribute-style-artist/works`` -> ``attribute``."""
    return re.split(r"[-/]", category.strip().lower(), maxsplit=1)[0].strip()


def t2i_model_of(img_path: str) -> str | None:
    """``SDXL-Turbo/00110.png`` -> ``SDXL-Turbo``; a bare final-phase name hides the model."""
    parts = img_path.replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else None


def _fail(path: str, idx: int, fld: str, msg: str) -> DataError:
    return DataError(f"{path}: record {idx}, field '{fld}': {msg}")


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _votes(v: Any, path: str, idx: int, fld: str, lo: float, hi: float) -> tuple[float, list | None]:
    """A per-annotator list, an already averaged number, or null -> (mean, votes)."""
    if _is_missing(v):
        return float("nan"), None
    if isinstance(v, bool):
        raise _fail(path, idx, fld, f"expected a number or a list of numbers, got {v!r}")
    if isinstance(v, (int, float)):
        vals = [v]
        votes = None
    elif isinstance(v, list):
        if not v:
            raise _fail(path, idx, fld, "empty list of annotator scores")
        vals = v
        votes = list(v)
    else:
        raise _fail(path, idx, fld, f"expected a number or a list of numbers, got {type(v).__name__}")
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or _is_missing(x):
            raise _fail(path, idx, fld, f"non-numeric score {x!r}")
        if not lo <= x <= hi:
            raise _fail(path, idx, fld, f"score {x!r} out of range [{lo:g}, {hi:g}]")
    return float(np.mean(vals)), votes


def _element_dict(v: Any, path: str, idx: int) -> tuple[dict, bool]:
    if isinstance(v, str):
        try:
            parsed = ast.literal_eval(v)
        except (ValueError, SyntaxError) as e:
            raise _fail(path, idx, "element_score", f"unparsable string literal ({e.__class__.__name__}): {v[:80]!r}")
        if not isinstance(parsed, dict):
            raise _fail(path, idx, "element_score", f"string does not hold a dict: {v[:80]!r}")
        return parsed, True
    if isinstance(v, dict):
        return v, False
    raise _fail(path, idx, "element_score", f"expected a dict or a dict literal string, got {type(v).__name__}")


def _check_img_path(img_path: Any, path: str, idx: int) -> None:
    if not isinstance(img_path, str) or not img_path:
        raise _fail(path, idx, "img_path", f"expected a non-empty string, got {img_path!r}")
    parts = img_path.replace("\\", "/").split("/")
    if img_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", img_path) or ".." in parts:
        raise _fail(path, idx, "img_path", f"{img_path!r} leaves the image folder (absolute or '..'); "
                                           "image paths are relative to dataset.image_dir")


def parse_records(raw: list, path: str = "<records>", *, labelled: bool = False,
                  require_elements: bool = True) -> tuple[pd.DataFrame, LoadReport]:
    """Turn raw EvalMuse records (either form) into one row per image; see ``load_records``.

    ``labelled`` (the training file): every total and every element must carry its votes; a
    null is an error naming the record and field, not an unlabelled record. ``require_elements``:
    an empty ``element_score`` is an error (the dataset files; scoring one's own pairs may ask
    for the total alone)."""
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: the file holds an empty list (no records)")
    report = LoadReport(path=path)
    rows = []
    seen: dict[str, int] = {}
    for idx, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: record {idx}: expected an object, got {type(rec).__name__}")
        for fld in REQUIRED_FIELDS:
            if fld not in rec:
                raise _fail(path, idx, fld, "missing required field")
        img_path = rec["img_path"]
        _check_img_path(img_path, path, idx)
        if img_path in seen:
            raise _fail(path, idx, "img_path", f"duplicate of record {seen[img_path]} ({img_path!r})")
        seen[img_path] = idx
        for fld in ("prompt", "prompt_id"):
            if not isinstance(rec[fld], (str, int)) or isinstance(rec[fld], bool):
                raise _fail(path, idx, fld, f"expected a string, got {rec[fld]!r}")
        total, total_votes = _votes(rec["total_score"], path, idx, "total_score", *TOTAL_RANGE)
        if labelled and total_votes is None and math.isnan(total):
            raise _fail(path, idx, "total_score", "null in a training file: every training record needs its "
                                                  "annotators' total scores")
        elems, was_string = _element_dict(rec["element_score"], path, idx)
        report.n_string_element_score += was_string
        if require_elements and not elems:
            raise _fail(path, idx, "element_score", "empty: a record needs at least one element")
        n_ann = len(total_votes) if total_votes else 0
        keys, scores, elem_votes = [], {}, {}
        for key, val in elems.items():
            if not isinstance(key, str):
                raise _fail(path, idx, "element_score", f"element key {key!r} is not a string")
            fld = f"element_score[{key!r}]"
            mean, votes = _votes(val, path, idx, fld, *ELEMENT_RANGE)
            if labelled and math.isnan(mean):
                raise _fail(path, idx, fld, "null in a training file: every element needs its annotators' votes")
            if votes is not None and n_ann and len(votes) != n_ann:
                raise _fail(path, idx, fld, f"{len(votes)} vote(s) but {n_ann} annotators gave the total")
            keys.append(key)
            scores[key] = mean
            elem_votes[key] = votes
        meta = {}
        for fld in META_FIELDS:
            meta[fld], _ = _votes(rec.get(fld), path, idx, fld, -1e9, 1e9)
        if n_ann:
            report.annotator_counts[n_ann] = report.annotator_counts.get(n_ann, 0) + 1
        if math.isnan(total):
            report.n_final_phase += 1
        rows.append({
            "img_path": img_path,
            "prompt_id": str(rec["prompt_id"]),
            "prompt": str(rec["prompt"]),
            "type": rec.get("type"),
            "t2i_model": t2i_model_of(img_path),
            "total_score": total,
            "total_votes": total_votes,
            **meta,
            "fidelity_label": rec.get("fidelity_label"),
            "element_keys": keys,
            "element_scores": scores,
            "element_votes": elem_votes,
            "n_annotators": n_ann,
        })
    report.n_records = len(rows)
    return pd.DataFrame(rows), report


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def load_records(path: str | Path, with_report: bool = False, labelled: bool = False):
    """Load ``train_list.json`` (raw) or ``test.json`` (final phase): one row per image.
    ``labelled``: every score must be present (the training file; see ``parse_records``).

    Columns: img_path, prompt_id, prompt, type, t2i_model, total_score (mean; NaN when
    unlabelled), total_votes, promt_meaningless, split_confidence, attribute_confidence,
    fidelity_label, element_keys (byte-exact, file order), element_scores (key -> mean),
    element_votes, n_annotators.
    """
    df, report = parse_records(read_json(path), str(path), labelled=labelled)
    return (df, report) if with_report else df


TOTAL, ELEMENT = "total", "element"   # the two kinds of question (the ``task`` column)
STRUCTURAL_COLUMNS = ("t2i_model", "type") + META_FIELDS
QUESTION_COLUMNS = ("img_path", "prompt_id", "prompt", "task", "element_key", "element_text", "category_raw",
                    "category", "target", "target_std") + STRUCTURAL_COLUMNS


def _std(votes) -> float:
    return float(np.std(votes)) if votes else 0.0


def question_frame(records: pd.DataFrame) -> pd.DataFrame:
    """The one question table: a row per question, in record order (an image's total question,
    then each of its elements), with the columns ``QUESTION_COLUMNS``.

    ``task`` is TOTAL or ELEMENT; ``element_key`` is byte-exact; ``category_raw`` is the category
    as the key writes it and ``category`` its normalised form (both empty on a total row);
    ``target`` the averaged label, ``target_std`` the spread of the votes behind it (0 without
    votes); the structural fields are the record's (None where the file has none)."""
    rows = []
    for rec in records.to_dict("records"):
        base = {"img_path": rec["img_path"], "prompt_id": rec["prompt_id"], "prompt": rec["prompt"]}
        info = {c: rec.get(c) for c in STRUCTURAL_COLUMNS}
        rows.append({**base, "task": TOTAL, "element_key": "", "element_text": "", "category_raw": "",
                     "category": "", "target": rec["total_score"], "target_std": _std(rec.get("total_votes")),
                     **info})
        votes = rec.get("element_votes") or {}
        for key in rec["element_keys"]:
            text, cat = split_element_key(key)
            rows.append({**base, "task": ELEMENT, "element_key": key, "element_text": text, "category_raw": cat,
                         "category": normalise_category(cat), "target": rec["element_scores"][key],
                         "target_std": _std(votes.get(key)), **info})
    return pd.DataFrame(rows, columns=list(QUESTION_COLUMNS))


def element_frame(records: pd.DataFrame) -> pd.DataFrame:
    """The element rows of ``question_frame`` (same columns), re-indexed from 0."""
    q = question_frame(records)
    return q[q["task"] == ELEMENT].reset_index(drop=True)


def records_to_json(records: pd.DataFrame) -> list[dict]:
    """Averaged records in the submission / truth shape (element keys byte-exact)."""
    out = []
    for rec in records.itertuples(index=False):
        out.append({
            "prompt": rec.prompt,
            "img_path": rec.img_path,
            "total_score": None if math.isnan(rec.total_score) else float(rec.total_score),
            "element_score": {k: (None if math.isnan(rec.element_scores[k]) else float(rec.element_scores[k]))
                              for k in rec.element_keys},
        })
    return out


def validate_images(records: pd.DataFrame, image_dir: str | Path, progress: bool = True) -> list[str]:
    """Every image must exist and decode; returns every bad path with its reason (empty when all good)."""
    from PIL import Image
    from tqdm import tqdm

    image_dir = Path(image_dir)
    bad = []
    for img_path in tqdm(list(records["img_path"]), desc="validate images", disable=not progress,
                         unit="img", leave=False):
        p = image_dir / img_path
        if not p.is_file():
            bad.append(f"{p}: missing")
            continue
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as e:  # any decoder failure is a bad image, whatever PIL raises
            bad.append(f"{p}: does not decode ({e.__class__.__name__}: {e})")
    return bad


def iter_bad(bad: Iterable[str], limit: int = 20) -> str:
    bad = list(bad)
    head = "\n".join(f"  {b}" for b in bad[:limit])
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} bad image(s):\n{head}{more}"
