"""Experiment configuration: one YAML per experiment, validated at load.

Every section is a dataclass; an unknown key, a wrong type or a missing input is reported with
the file and the dotted key before any work starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


class ConfigError(ValueError):
    """A configuration problem: names the file and the offending key."""


@dataclass
class DatasetConfig:
    root: str = "input/demo"
    train_file: str = "train_list.json"
    test_file: str = "test.json"
    image_dir: str = "images"
    # Hidden test truth and the demo's noise ceiling; absent for the real challenge data.
    eval_file: Optional[str] = None
    noise_ceiling_file: Optional[str] = None


@dataclass
class DemoConfig:
    """Only for the demo dataset, which stage 00 renders into ``dataset.root``."""

    seed: int = 1234
    n_train_prompts: int = 500
    n_test_prompts: int = 100
    images_per_prompt: int = 4
    image_size: int = 112


@dataclass
class FoldsConfig:
    n_folds: int = 5
    seed: int = 1234
    n_bins: int = 5


@dataclass
class Config:
    name: str = "demo"
    seed: int = 1234
    output_root: str = "output"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    demo: Optional[DemoConfig] = None
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    source: str = ""

    # Paths, resolved against the repository root so stages run from anywhere.
    def path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def data_root(self) -> Path:
        return self.path(self.dataset.root)

    @property
    def train_path(self) -> Path:
        return self.data_root / self.dataset.train_file

    @property
    def test_path(self) -> Path:
        return self.data_root / self.dataset.test_file

    @property
    def image_dir(self) -> Path:
        return self.data_root / self.dataset.image_dir

    @property
    def eval_path(self) -> Path | None:
        return self.data_root / self.dataset.eval_file if self.dataset.eval_file else None

    @property
    def noise_ceiling_path(self) -> Path | None:
        f = self.dataset.noise_ceiling_file
        return self.data_root / f if f else None

    @property
    def exp_dir(self) -> Path:
        return self.path(self.output_root) / self.name

    @property
    def folds_path(self) -> Path:
        return self.exp_dir / "folds.csv"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} ({value!r})")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        if args:
            return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return value
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} ({value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} ({value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} ({value!r})")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def build(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a YAML experiment config (default: configs/demo.yaml)."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    data.pop("source", None)
    cfg = build(Config, data, str(path))
    cfg.source = str(path)
    return cfg


def check_inputs(cfg: Config, need_images: bool = False) -> None:
    """Fail early, naming the file, when the dataset the config points at is not there."""
    missing = [p for p in (cfg.train_path, cfg.test_path) if not p.is_file()]
    if need_images and not cfg.image_dir.is_dir():
        missing.append(cfg.image_dir)
    if missing:
        hint = " (run stage 00 to render the demo dataset)" if cfg.demo is not None else ""
        raise ConfigError(f"{cfg.source}: dataset input(s) not found: "
                          + ", ".join(map(str, missing)) + hint)
