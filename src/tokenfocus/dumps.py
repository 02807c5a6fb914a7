"""Prediction dumps: the contract between inference (04) and the ensemble (05).

One parquet per (model, task, split, fold), one row per question::

    img_path, prompt_id, prompt, fold, model, kind, task, element_key, category, target, pred, p_<level>...

``element_key`` is byte-exact ('' for the total question), ``target`` is NaN on test and ``pred``
is the expected label value (1..5 for totals, 0..1 for elements). A ``p_<level>`` column per answer
level, named by the level's value: ``p_0``, ``p_1`` for elements; for totals ``p_1`` .. ``p_5``
with the paper's five levels, or any other number of levels in [1, 5] (``p_1.5``, ``p_1.2857``:
a model trained with ``training.total_levels``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .errors import InputError
from .io import write_parquet

ELEMENT_PROBS = ["p_0", "p_1"]
BASE_COLUMNS = ["img_path", "prompt_id", "prompt", "fold", "model", "kind", "task", "element_key",
                "category", "target", "pred"]
# What a dump's model is: a fine-tuned model the ensemble stacks, a baseline it only reports
# (the prior, an untuned base), or an ablation variant it leaves to the ablation table.
MODEL_KINDS = ("base", "baseline", "ablation")


class DumpError(InputError):
    pass


def dump_path(preds_dir: str | Path, model: str, task: str, split: str, fold: int) -> Path:
    return Path(preds_dir) / model / task / f"{split}_fold{fold}.parquet"


def level_value(column: str) -> float | None:
    """The level a ``p_<level>`` column holds the probability of (None for other columns)."""
    if not column.startswith("p_"):
        return None
    try:
        return float(column[2:])
    except ValueError:
        return None


def prob_columns(df: pd.DataFrame, task: str) -> list[str]:
    """The ``p_<level>`` columns of ``task`` in ``df``, lowest level first: ``p_0``, ``p_1`` for
    elements; for totals every level in [1, 5] with a value in some row (a table of both tasks
    leaves the other task's levels NaN)."""
    if task == "element":
        return [c for c in ELEMENT_PROBS if c in df.columns]
    cols = [c for c in df.columns if (v := level_value(c)) is not None and 1.0 <= v <= 5.0]
    cols = [c for c in cols if df[c].notna().any()] if len(df) else cols
    return sorted(cols, key=level_value)


def dump_columns(task: str, df: pd.DataFrame) -> list[str]:
    return BASE_COLUMNS + prob_columns(df, task)


def _check_prob_columns(df: pd.DataFrame, task: str, where: str) -> list[str]:
    """``prob_columns`` of a dump, which must be p_0, p_1 (elements) or two or more levels (totals)."""
    cols = prob_columns(df, task)
    if task == "element" and cols != ELEMENT_PROBS:
        raise DumpError(f"{where}: missing column(s) {[c for c in ELEMENT_PROBS if c not in cols]}")
    if task == "total" and len(cols) < 2:
        raise DumpError(f"{where}: needs p_<level> columns of at least two total levels in [1, 5], "
                        f"has {cols}")
    return cols


def check_dump(df: pd.DataFrame, expected: pd.DataFrame, task: str, where: str) -> None:
    """The dump must hold exactly the questions of ``expected`` (img_path, element_key), once each."""
    missing_cols = [c for c in BASE_COLUMNS if c not in df.columns]
    if missing_cols:
        raise DumpError(f"{where}: missing column(s) {missing_cols}")
    probs = _check_prob_columns(df, task, where)
    key = ["img_path", "element_key"]
    if df.duplicated(key).any():
        dup = df[df.duplicated(key)].iloc[0]
        raise DumpError(f"{where}: duplicate question {dup['img_path']!r} / {dup['element_key']!r}")
    want = set(map(tuple, expected[key].to_numpy()))
    have = set(map(tuple, df[key].to_numpy()))
    if want != have:
        lack, extra = want - have, have - want
        raise DumpError(f"{where}: covers the wrong questions: {len(lack)} missing "
                        f"(e.g. {next(iter(lack), None)}), {len(extra)} extra (e.g. {next(iter(extra), None)})")
    if not np.isfinite(df["pred"].to_numpy(dtype=float)).all():
        raise DumpError(f"{where}: non-finite predictions")
    bad = [c for c in probs if not np.isfinite(df[c].to_numpy(dtype=float)).all()]
    if bad:
        raise DumpError(f"{where}: non-finite values in column(s) {bad}")
    _check_kind(df, where)


def _check_kind(df: pd.DataFrame, where: str) -> str:
    kinds = df["kind"].astype(str).unique().tolist()
    if len(kinds) != 1 or kinds[0] not in MODEL_KINDS:
        raise DumpError(f"{where}: column 'kind' holds {kinds}, expected one of {list(MODEL_KINDS)}")
    return kinds[0]


def model_kinds(preds_dir: str | Path) -> dict[str, str]:
    """{model: kind} of every model folder under ``preds_dir``, read from its dumps' ``kind``
    column (every dump of a model must agree)."""
    out = {}
    for folder in sorted(p for p in Path(preds_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(folder.glob("*/*.parquet"))
        if not files:
            continue
        kinds = set()
        for f in files:
            if "kind" not in pq.read_schema(f).names:   # the file's footer only, no data read
                raise DumpError(f"{f}: missing column(s) ['kind'] (a dump from before model kinds; "
                                "re-run the inference stage with --force)")
            kinds.add(_check_kind(pd.read_parquet(f, columns=["kind"]), str(f)))
        if len(kinds) > 1:
            raise DumpError(f"{folder}: dumps disagree on the model's kind: {sorted(kinds)}")
        out[folder.name] = kinds.pop()
    return out


def write_dump(df: pd.DataFrame, path: str | Path, expected: pd.DataFrame, task: str) -> Path:
    """Check coverage against the expected question set, then write atomically."""
    check_dump(df, expected, task, str(path))
    return write_parquet(path, df[dump_columns(task, df)].reset_index(drop=True))


def read_dump(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DumpError(f"{path}: dump not found")
    return pd.read_parquet(path)


# --------------------------------------------------------------------------- reading

_DUMP_RE = re.compile(r"^(oof|test)_fold(\d+)\.parquet$")
TASKS = ("total", "element")


def load_dumps(preds_dir: str | Path, models: Sequence[str] | None = None,
               folds: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every ``<model>/<task>/{oof,test}_fold<k>.parquet`` under ``preds_dir`` and check coverage.

    Returns (oof, test), the rows of all dumps concatenated. Raises DumpError naming the file when a
    dump lacks columns or folds, holds a question twice, disagrees with its path (model, task,
    fold), or when the dumps of one task do not cover the same questions: every OOF set the same
    images in the same folds (those of ``folds`` when given), every test dump the same questions.
    """
    preds_dir = Path(preds_dir)
    if not preds_dir.is_dir():
        raise DumpError(f"{preds_dir}: no prediction dumps (run the inference stage first)")
    found = sorted(d.name for d in preds_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if models is None:
        models = found
    missing = [m for m in models if m not in found]
    if missing:
        raise DumpError(f"{preds_dir}: no dumps for model(s) {missing}; found {found}")
    if not models:
        raise DumpError(f"{preds_dir}: no model folders")
    oof_parts, test_parts = [], []
    for model in models:
        tasks = [t for t in TASKS if (preds_dir / model / t).is_dir()]
        if not tasks:
            raise DumpError(f"{preds_dir / model}: neither a 'total' nor an 'element' folder")
        for task in tasks:
            oof, test = _load_model_task(preds_dir / model / task, model, task)
            oof_parts.append(oof)
            test_parts.append(test)
    oof, test = pd.concat(oof_parts, ignore_index=True), pd.concat(test_parts, ignore_index=True)
    _check_across_models(oof, test, preds_dir, folds)
    return oof, test


def _load_model_task(folder: Path, model: str, task: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    files: dict[str, dict[int, Path]] = {"oof": {}, "test": {}}
    for p in sorted(folder.iterdir()):
        m = _DUMP_RE.match(p.name)
        if m:
            files[m.group(1)][int(m.group(2))] = p
    if not files["oof"]:
        raise DumpError(f"{folder}: no oof_fold<k>.parquet dumps")
    if set(files["oof"]) != set(files["test"]):
        raise DumpError(f"{folder}: OOF folds {sorted(files['oof'])} but test folds {sorted(files['test'])}")
    out = {}
    for split, by_fold in files.items():
        parts = [_read_dump(path, model, task, k) for k, path in sorted(by_fold.items())]
        out[split] = parts
    oof = pd.concat(out["oof"], ignore_index=True)
    dup = oof.duplicated(["img_path", "element_key"], keep=False)
    if dup.any():
        row = oof[dup].iloc[0]
        raise DumpError(f"{folder}: question {row['img_path']!r} / {row['element_key']!r} appears in the "
                        f"OOF dumps of folds {sorted(oof.loc[dup & (oof['img_path'] == row['img_path']), 'fold'].unique())}")
    first = _questions(out["test"][0])
    for k, part in zip(sorted(files["test"]), out["test"]):
        _same_questions(first, _questions(part), f"{folder / f'test_fold{k}.parquet'}",
                        f"test_fold{min(files['test'])}")
    return oof, pd.concat(out["test"], ignore_index=True)


def _read_dump(path: Path, model: str, task: str, fold: int) -> pd.DataFrame:
    df = pd.read_parquet(path)
    lack = [c for c in BASE_COLUMNS if c not in df.columns]
    if lack:
        raise DumpError(f"{path}: missing column(s) {lack}")
    probs = _check_prob_columns(df, task, str(path))
    df = df[BASE_COLUMNS + probs].copy()
    for col, want in (("model", model), ("task", task)):
        bad = df[col].astype(str) != want
        if bad.any():
            raise DumpError(f"{path}: column {col!r} holds {df.loc[bad, col].iloc[0]!r}, expected {want!r}")
    fold_vals = pd.to_numeric(df["fold"], errors="coerce")
    if (fold_vals != fold).any():
        raise DumpError(f"{path}: column 'fold' holds {sorted(fold_vals.dropna().unique().tolist())}, expected {fold}")
    df["fold"] = fold
    _check_kind(df, str(path))
    for col in ("img_path", "prompt_id", "prompt", "element_key", "category"):
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    empty_key = df["element_key"] == ""
    if (empty_key != (task == "total")).any():
        raise DumpError(f"{path}: element_key must be '' exactly for total questions")
    if df.duplicated(["img_path", "element_key"]).any():
        row = df[df.duplicated(["img_path", "element_key"])].iloc[0]
        raise DumpError(f"{path}: duplicate question {row['img_path']!r} / {row['element_key']!r}")
    for col in ["target", "pred", *probs]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    bad = ~np.isfinite(df["pred"].to_numpy())
    if bad.any():
        raise DumpError(f"{path}: {int(bad.sum())} non-finite 'pred' value(s), e.g. {df.loc[bad, 'img_path'].iloc[0]!r}")
    return df


def _questions(df: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(df[["img_path", "element_key"]])


def _same_questions(want: pd.MultiIndex, have: pd.MultiIndex, where: str, against: str) -> None:
    lack, extra = want.difference(have), have.difference(want)
    if len(lack) or len(extra):
        eg = lambda idx: list(idx[:3]) if len(idx) else []  # noqa: E731
        raise DumpError(f"{where}: covers other questions than {against}: {len(lack)} missing "
                        f"(e.g. {eg(lack)}), {len(extra)} extra (e.g. {eg(extra)})")


def _check_across_models(oof: pd.DataFrame, test: pd.DataFrame, preds_dir: Path,
                         folds: pd.DataFrame | None) -> None:
    """Per task, every model's OOF and test dumps cover the same questions; every model puts each
    image in the same fold (that of ``folds`` when given) and covers every image of it."""
    for task in TASKS:
        for split, frame in (("oof", oof), ("test", test)):
            ref = None
            for model, part in frame[frame["task"] == task].groupby("model", sort=True):
                q = _questions(part).unique()
                where = f"{preds_dir / model / task} ({split})"
                if ref is None:
                    ref = (where, q)
                else:
                    _same_questions(ref[1], q, where, ref[0])
    ref_fold, ref_where = None, None
    if folds is not None:
        ref_fold = folds.drop_duplicates("img_path").set_index("img_path")["fold"].astype(int)
        ref_where = "folds.csv"
    for model, part in oof.groupby("model", sort=True):
        spread = part.groupby("img_path")["fold"].nunique()
        if (spread > 1).any():
            raise DumpError(f"{preds_dir / model}: image {spread[spread > 1].index[0]!r} is OOF in more "
                            "than one fold (total and element dumps disagree)")
        fold_of = part.drop_duplicates("img_path").set_index("img_path")["fold"].astype(int)
        if ref_fold is None:
            ref_fold, ref_where = fold_of, str(preds_dir / model)
            continue
        missing = ref_fold.index.difference(fold_of.index)
        if len(missing):
            raise DumpError(f"{preds_dir / model}: {len(missing)} image(s) of {ref_where} have no OOF "
                            f"prediction, e.g. {list(missing[:3])}")
        extra = fold_of.index.difference(ref_fold.index)
        if len(extra):
            raise DumpError(f"{preds_dir / model}: OOF predictions for {len(extra)} image(s) not in "
                            f"{ref_where}, e.g. {list(extra[:3])}")
        moved = fold_of != ref_fold.reindex(fold_of.index)
        if moved.any():
            img = moved[moved].index[0]
            raise DumpError(f"{preds_dir / model}: image {img!r} is OOF in fold {fold_of[img]} but in "
                            f"fold {ref_fold[img]} of {ref_where}")
