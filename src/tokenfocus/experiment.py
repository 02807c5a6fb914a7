"""An experiment's files: where every output lives, the records that tie kept outputs to what
they were made from (the training file's sha256, the settings of a stage), and the readers of
the splits and folds that every stage shares.

Skipping is safe only while the labels are the ones the outputs were made from: the first stage
to read the training file records its sha256 in ``<exp_dir>/data.json`` (once the file has been
read and validated), and every later read compares (``check_training_data``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .config import Config, ModelConfig, check_inputs
from .data import DataError, load_records, read_json
from .io import file_sha256, recover_dir, write_json

log = logging.getLogger("tokenfocus")
SETTINGS_RECORD = "settings.json"


def model_folds(cfg: Config, mcfg: ModelConfig) -> list[int]:
    return mcfg.fold_list(cfg.folds.n_folds)


def model_dir(cfg: Config, model: str, group: str, fold: int) -> Path:
    """Where one trained model lives: ``group`` is the question group it answers (``mixed``, or
    ``total`` / ``element`` when trained separately; see ``questions.task_groups``)."""
    return cfg.exp_dir / "models" / model / group / f"fold{fold}"


def is_trained(path: Path) -> bool:
    recover_dir(path)  # an adapter a killed publish had moved aside counts as the finished one
    return (path / "train_done.json").is_file()


DATA_RECORD = "data.json"


def check_training_data(cfg: Config) -> None:
    """Refuse to go on when the experiment's outputs were made from another training file.

    Folds, adapters and predictions are kept between runs; made from other labels, they would be
    joined to the new ones without any error. The first call records the training file's sha256
    in ``<exp_dir>/data.json``; later calls compare.
    """
    record_path = cfg.exp_dir / DATA_RECORD
    digest = file_sha256(cfg.train_path)
    if record_path.is_file():
        stored = read_json(record_path)
        if stored.get("sha256") != digest:
            raise DataError(
                f"{cfg.exp_dir}: its outputs were made from another {cfg.train_path.name} (sha256 "
                f"{str(stored.get('sha256'))[:12]} then, {digest[:12]} now: {cfg.train_path}); folds, "
                f"adapters and predictions would not match the labels. Remove {cfg.exp_dir} (or rename "
                f"the experiment) and run again; to keep them anyway, delete {record_path}")
        return
    write_json(record_path, {"train_file": str(cfg.train_path), "sha256": digest,
                             "bytes": cfg.train_path.stat().st_size})


def load_split(cfg: Config, split: str, record: bool = True) -> pd.DataFrame:
    """The training ("train", every score required) or test records. The training file's sha256
    is compared with (first time: recorded in) ``data.json`` only once the file has been read and
    validated, so a rejected file leaves nothing behind; ``record=False`` (the validator) neither
    compares nor writes."""
    check_inputs(cfg)
    train = split == "train"
    df, report = load_records(cfg.train_path if train else cfg.test_path, with_report=True, labelled=train)
    for line in report.lines():
        log.info(line)
    if train and record:
        check_training_data(cfg)
    return df


def load_folds(cfg: Config) -> pd.DataFrame:
    if not cfg.folds_path.is_file():
        raise FileNotFoundError(f"{cfg.folds_path}: not found (run stage 02 first)")
    return pd.read_csv(cfg.folds_path, dtype={"prompt_id": str})


def recorded_settings(cfg: Config) -> dict:
    """{stage: the settings its kept outputs were made with} (``settings.json``; empty if none)."""
    path = cfg.exp_dir / SETTINGS_RECORD
    return read_json(path) if path.is_file() else {}


def record_settings(cfg: Config, stage: str, settings: dict) -> None:
    write_json(cfg.exp_dir / SETTINGS_RECORD, {**recorded_settings(cfg), stage: settings})


DONE_MARKER = "done.json"


def made_from(inputs: list[Path], settings: dict | None = None, root: Path | None = None) -> dict:
    """What a stage's outputs are made from: the sha256 of every input file (keyed by its path,
    relative to ``root`` when given) and the settings they depend on."""
    def key(p: Path) -> str:
        return str(p.relative_to(root)) if root is not None and p.is_relative_to(root) else str(p)
    made = {"inputs": {key(p): file_sha256(p) for p in sorted(map(Path, inputs)) if p.is_file()},
            "settings": settings or {}}
    return json.loads(json.dumps(made, default=str))  # as the marker reads back (tuples as lists)


def is_done(marker: Path, made: dict) -> bool:
    """The done rule: the marker, written last, records exactly these inputs and settings."""
    return marker.is_file() and read_json(marker).get("made_from") == made


def mark_done(marker: Path, made: dict, **extra) -> None:
    """Write the marker (last, once every output is in place)."""
    write_json(marker, {"made_from": made, **extra})
