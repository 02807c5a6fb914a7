"""Reading a config: YAML with `base:` inheritance, `--set` overrides, the cross-section checks,
and the input check the stages run before work starts."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..prompts import total_levels
from .coerce import ConfigError, build
from .schema import DEFAULT_CONFIG, Config


def check_jobs(value, where: str = "jobs") -> None:
    """Raise ConfigError unless ``value`` is 'auto' or a positive integer."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise ConfigError(f"{where + ': ' if where else ''}expected 'auto' or a positive integer, got {value!r}")


def parse_overrides(items: list[str] | None, where: str = "--set") -> dict:
    """``["training.lr=2e-4", "folds.n_folds=3"]`` -> a nested mapping (values read as YAML)."""
    out: dict = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or any(not k for k in key.strip().split(".")):
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE, e.g. training.lr=2e-4")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where} {item!r}: value is not valid YAML: {e}") from None
        if isinstance(parsed, str):  # YAML 1.1 reads '2e-4' as text; a number is meant
            for number in (int, float):
                try:
                    parsed = number(parsed)
                    break
                except ValueError:
                    pass
        *parents, leaf = key.strip().split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {item!r}: {k} was given a value above")
        node[leaf] = parsed
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load and validate a YAML experiment config (default: configs/demo.yaml). ``overrides``
    (``KEY=VALUE`` with dotted keys, from ``--set``) are merged over the file and validated like it."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = _merge(_read_yaml(path), parse_overrides(overrides))
    data.pop("source", None)
    cfg = build(Config, data, str(path))
    cfg.source = str(path)
    check_jobs(cfg.jobs, f"{path}: jobs")
    _check_folds(cfg)
    _check_models(cfg)
    return cfg


def settings_diff(made: dict, now: dict, prefix: str = "") -> list[str]:
    """'<setting>: <then> then, <now> now' for every setting that differs between two records."""
    return [f"{prefix}{k}: {made.get(k)!r} then, {now.get(k)!r} now"
            for k in sorted(set(made) | set(now)) if made.get(k) != now.get(k)]


def _check_folds(cfg: Config) -> None:
    if cfg.folds.n_folds < 2:
        raise ConfigError(f"{cfg.source}: folds.n_folds: {cfg.folds.n_folds} (needs at least 2: every image's "
                          "out-of-fold prediction comes from a model trained on the other folds)")
    if cfg.folds.n_bins < 1:
        raise ConfigError(f"{cfg.source}: folds.n_bins: {cfg.folds.n_bins} (needs at least 1)")


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """The mapping in ``path``; a top-level ``base: <file>`` (relative to this file) is read
    first and this file's settings are merged over it, mapping by mapping."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {type(base).__name__}")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: base: {base} includes itself")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} not found")
    return _merge(_read_yaml(base_path, seen + (base_path,)), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out




def _check_models(cfg: Config) -> None:
    if not cfg.models:
        return
    from ..lvlm import families

    known = families()
    names = set()
    if cfg.ablation is not None:
        cfg.model(cfg.ablation.model)  # must name a configured model
        bad = [k for k in cfg.ablation.folds if not 0 <= k < cfg.folds.n_folds]
        if bad:
            raise ConfigError(f"{cfg.source}: ablation.folds {bad} outside 0..{cfg.folds.n_folds - 1}")
        own = cfg.model(cfg.ablation.model).training_config(cfg.training).seed
        seeds = list(cfg.ablation.seeds)
        if len(set(seeds)) != len(seeds) or own in seeds:
            raise ConfigError(f"{cfg.source}: ablation.seeds {seeds}: each run needs its own seed, distinct "
                              f"from the others and from the first run's training.seed ({own})")
    for i, m in enumerate(cfg.models + cfg.ablation_models()):
        where = f"{cfg.source}: models[{i}]"
        if not m.name:
            raise ConfigError(f"{where}.name: required")
        if m.name in names:
            raise ConfigError(f"{where}.name: duplicate model name {m.name!r}")
        names.add(m.name)
        if m.family not in known:
            raise ConfigError(f"{where}.family: {m.family!r} unknown; known: {sorted(known)}")
        if not m.path:
            raise ConfigError(f"{where}.path: required (local directory, or a hub id with hub: true)")
        if not m.hub and not cfg.path(m.path).is_dir():
            raise ConfigError(f"{where}.path: checkpoint directory not found: {cfg.path(m.path)} (if "
                              f"{m.path!r} is a model hub id, mark it with 'hub: true')")
        if m.hub and (Path(m.path).is_absolute() or m.path.startswith((".", "~"))):
            raise ConfigError(f"{where}.path: {m.path!r} is a filesystem path, not a hub id; drop 'hub: true'")
        t = m.training_config(cfg.training, f"{cfg.source}: ")
        for fld, allowed in (("task_mode", ("mixed", "separate")), ("loss", ("mse", "soft_ce", "sft")),
                             ("bf16", ("auto", "true", "false")), ("gradient_checkpointing", ("auto", "true", "false"))):
            if getattr(t, fld) not in allowed:
                raise ConfigError(f"{where}.training.{fld}: {getattr(t, fld)!r} not one of {allowed}")
        try:
            total_levels(t.total_levels)
        except ValueError as e:
            raise ConfigError(f"{where}.training.total_levels: {e}") from None
        for fld in ("augment_brightness", "augment_contrast", "augment_blur", "augment_shift"):
            if not 0.0 <= getattr(t, fld) <= 0.5:
                raise ConfigError(f"{where}.training.{fld}: {getattr(t, fld)!r} outside [0, 0.5]")
        if t.fit_check_images < 0:
            raise ConfigError(f"{where}.training.fit_check_images: {t.fit_check_images!r} must be 0 (off) or more")
        if not t.total_weight > 0 or (t.loss == "sft" and t.total_weight != 1.0):
            raise ConfigError(f"{where}.training.total_weight: {t.total_weight!r} must be positive, and 1 with "
                              "loss 'sft' (its full-vocabulary loss weighs every token alike)")
        _check_pseudo_labels(cfg, m, t, where)


def _check_pseudo_labels(cfg: Config, m, t, where: str) -> None:
    """A pseudo-label model names another configured model that is not itself one, trains no fold
    the source lacks ('unseen'), and uses a token-focus loss (the targets are soft)."""
    if t.pseudo_labels is None:
        return
    key = f"{where}.training."
    sources = {s.name: s for s in cfg.models}
    src = sources.get(t.pseudo_labels)
    if src is None or src.name == m.name:
        raise ConfigError(f"{key}pseudo_labels: {t.pseudo_labels!r} must name another of the models {sorted(sources)}")
    if src.training_config(cfg.training).pseudo_labels is not None:
        raise ConfigError(f"{key}pseudo_labels: {src.name!r} is itself trained on pseudo-labels (one round only)")
    if t.loss == "sft":
        raise ConfigError(f"{key}pseudo_labels: needs a token-focus loss (mse or soft_ce); 'sft' has no soft targets")
    if t.pseudo_folds not in ("unseen", "all"):
        raise ConfigError(f"{key}pseudo_folds: {t.pseudo_folds!r} not one of ('unseen', 'all')")
    if not t.pseudo_weight > 0:
        raise ConfigError(f"{key}pseudo_weight: {t.pseudo_weight!r} must be positive")
    if not 0.0 <= t.pseudo_threshold < 1.0:
        raise ConfigError(f"{key}pseudo_threshold: {t.pseudo_threshold!r} outside [0, 1)")
    mine, theirs = set(m.fold_list(cfg.folds.n_folds)), set(src.fold_list(cfg.folds.n_folds))
    if t.pseudo_folds == "unseen" and not mine <= theirs:
        raise ConfigError(f"{key}pseudo_labels: folds {sorted(mine - theirs)} are not trained by {src.name!r} "
                          "(pseudo_folds 'unseen' labels fold k with the source's fold-k model)")


def check_inputs(cfg: Config, need_images: bool = False) -> None:
    """Fail early, naming the file, when the dataset the config points at is not there."""
    missing = [p for p in (cfg.train_path, cfg.test_path) if not p.is_file()]
    if need_images and not cfg.image_dir.is_dir():
        missing.append(cfg.image_dir)
    if missing:
        hint = " (run stage 00 to render the demo dataset)" if cfg.demo is not None else ""
        raise ConfigError(f"{cfg.source}: dataset input(s) not found: "
                          + ", ".join(map(str, missing)) + hint)
