"""Experiment configuration: one YAML per experiment, validated at load.

Every section is a dataclass; an unknown key, a wrong type or a missing input is reported with
the file and the dotted key before any work starts.
"""
from __future__ import annotations

from .coerce import ConfigError, build
from .loading import check_inputs, check_jobs, load_config, parse_overrides, settings_diff
from .schema import (CONFIG_ENV, DEFAULT_CONFIG, REPO_ROOT, AblationConfig, Config, DatasetConfig, EnsembleSettings, FoldsConfig,
                     ModelConfig, TrainingConfig)

__all__ = ["AblationConfig", "CONFIG_ENV", "Config", "ConfigError", "DEFAULT_CONFIG", "DatasetConfig", "EnsembleSettings",
           "FoldsConfig", "ModelConfig", "REPO_ROOT", "TrainingConfig", "build", "check_inputs", "check_jobs",
           "load_config", "parse_overrides", "settings_diff"]
