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
    calibration_settings(config, path)  # checked before any run starts
    return config


DEFAULT_CALIBRATION = {"target_sensitivity": {"COVID": 0.95}, "target_accuracy": 0.98}


def calibration_settings(config: dict, path: str | os.PathLike = CONFIG_FILE) -> dict:
    """``calibration`` of experiments.json over its defaults: the sensitivity each named class's operating point
    must reach on validation, and the accuracy the abstain threshold must reach there; each in (0, 1]."""
    settings = {**DEFAULT_CALIBRATION, **config.get("calibration", {})}
    unknown = sorted(set(settings) - set(DEFAULT_CALIBRATION) - {"description"})
    targets = settings["target_sensitivity"]
    problems = [f"unknown key(s) {unknown}; known: {sorted(DEFAULT_CALIBRATION)}"] if unknown else []
    if not isinstance(targets, dict) or not all(isinstance(k, str) and _fraction(v) for k, v in targets.items()):
        problems.append(f"target_sensitivity must map class names to numbers in (0, 1], not {targets!r}")
    if not _fraction(settings["target_accuracy"]):
        problems.append(f"target_accuracy must be a number in (0, 1], not {settings['target_accuracy']!r}")
    if problems:
        raise ConfigError(f"Configuration file {path}, 'calibration': " + "; ".join(problems) + ".")
    return {name: value for name, value in settings.items() if name in DEFAULT_CALIBRATION}


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def experiment_parameters(settings: dict) -> dict:
    """An experiment's notebook parameters: its settings without the study's reported numbers."""
    return {name: value for name, value in settings.items() if name != "reference"}


def baseline_of(config: dict) -> str:
    """The configuration the others are compared with: ``baseline``, else the first."""
    return config.get("baseline", next(iter(config["experiments"])))
