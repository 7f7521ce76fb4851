"""The configurations file, ``experiments.json``: the study's seven configurations with its reported numbers and
claims, the baseline, and the demo's settings.

Read by the sweep (each configuration's notebook parameters), the summary (the study's numbers and claims,
side by side with ours) and the benchmark; so it sits below all three.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .paths import CONFIG_FILE


class ConfigError(ValueError):
    """experiments.json is missing or malformed; the message names the file."""


def load_config(path: str | os.PathLike = CONFIG_FILE) -> dict:
    """The configurations of the study, with its reported numbers (experiments.json)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Configuration file {path} is not valid JSON: {exc}.") from None
    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise ConfigError(f"Configuration file {path} needs an 'experiments' object with at least one experiment.")
    for name, settings in experiments.items():
        if not isinstance(settings, dict) or not isinstance(settings.get("reference", {}), dict):
            raise ConfigError(f"Configuration file {path}: experiment {name} must be an object (its 'reference' too).")
    return config


def experiment_parameters(settings: dict) -> dict:
    """An experiment's notebook parameters: its settings without the study's reported numbers."""
    return {name: value for name, value in settings.items() if name != "reference"}


def baseline_of(config: dict) -> str:
    """The configuration the others are compared with: ``baseline``, else the first."""
    return config.get("baseline", next(iter(config["experiments"])))
