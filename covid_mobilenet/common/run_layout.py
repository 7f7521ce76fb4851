"""One run's files, the interface between the stages: ``<results_dir>/<experiment>/seed-<seed>/``.

A run (a configuration trained with one seed) writes these files; the analyses, the product
(predict, export) and the sweep read them, never a live notebook's variables. The seeds of a
configuration sit side by side in its folder. Free of TensorFlow.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .files import file_sha256
from .paths import resolve_path

METRICS_FILE = "metrics.json"  # written last: its presence means the run finished
PREVIOUS_METRICS_FILE = "metrics.previous.json"  # an outdated result, kept when its experiment reruns
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions.csv"  # one row per validation and test image: true, predicted, probabilities
CONFUSION_FILE = "confusion_matrix.png"
MODEL_FILE = "model.keras"  # the trained model, float32, raw pixels in; git-ignored
GUARD_FILE = "unfamiliar.npz"  # the unfamiliar-image guard's statistics, read with the model (analysis/unfamiliar.py)
SHORTCUTS_FILE = "shortcuts.csv"  # one row per test image: predictions with the lungs removed and alone, Grad-CAM energy, source
GRADCAM_FILE = "gradcam.png"  # Grad-CAM overlays of a few test images per class
RELIABILITY_FILE = "reliability.png"  # calibration: top-label and per-class reliability, before and after scaling
RISK_COVERAGE_FILE = "risk_coverage.png"  # abstaining: accuracy against the share of images answered
TENSORBOARD_FOLDER = "tensorboard"  # per-epoch scalars and the HParams record of the run
KERNEL_LOG = "kernel.log"  # the notebook kernel's own stderr (library start-up messages, crashes)
EXTERNAL_FOLDER = "external"  # <name>/: the run evaluated on another collection (python -m covid_mobilenet.evaluate)
BACKUP_FOLDER = "backup"  # Keras' BackupAndRestore checkpoint and the per-epoch log, while training


def run_dir(params: dict) -> Path:
    return resolve_path(params["results_dir"]) / params["experiment"] / seed_folder(params["seed"])


def region_experiment(experiment: str, region: str) -> str:
    """The name of ``experiment`` trained on an input region (run_all.py --regions): itself on full images,
    ``<experiment>-lungs`` and ``<experiment>-no_lungs`` otherwise, so region runs never mix with the sweep's."""
    return experiment if region == "full" else f"{experiment}-{region}"


HOLDOUT_PLAN_FILE = "holdout-sources.json"  # run_all.py --holdout-sources: which (class, source) pairs, which classes not


def holdout_experiment(experiment: str, label: str, source: str) -> str:
    """The name of ``experiment`` trained without one class's source (run_all.py --holdout-sources):
    ``<experiment>-holdout-<class>-<source>``, made a safe folder name, with a short hash of the two."""
    import hashlib

    readable = re.sub(r"[^\w.-]+", "_", f"{label}-{source.split('://', 1)[-1]}").strip("._")[:60]
    return f"{experiment}-holdout-{readable}-{hashlib.sha256(f'{label}={source}'.encode()).hexdigest()[:6]}"


def seed_folder(seed: int) -> str:
    return f"seed-{seed}"


def seed_of(folder: str | Path) -> int | None:
    """The seed a run folder's name says (seed-42 -> 42), or None for another folder."""
    name = Path(folder).name
    return int(name[5:]) if name.startswith("seed-") and name[5:].isdigit() else None


def seeds_in(folder: str | Path) -> list[int]:
    """The seeds of the run folders (seed-<seed>) inside an experiment's folder, in order."""
    return sorted(seed for seed in map(seed_of, Path(folder).glob("seed-*")) if seed is not None)


def backup_dir(run_folder: Path) -> Path:
    return Path(run_folder) / BACKUP_FOLDER


def remove_backup(run_folder: Path) -> None:
    shutil.rmtree(backup_dir(run_folder), ignore_errors=True)


def split_file_name(split_sha256: str) -> str:
    """The split table's file, beside the experiment folders in the results folder: ``split-<hash>.csv``."""
    return f"split-{split_sha256[:12]}.csv"


def graph_name(experiment: str, seed: int) -> str:
    """The study's graph file name, the experiment name's trailing number, with the seed (mn_resultset3 -> 3-seed-42.png)."""
    match = re.search(r"(\d+)$", experiment)
    return f"{match.group(1) if match else experiment}-seed-{seed}.png"


def external_dir(run_folder: Path, name: str) -> Path:
    """Where the run's evaluation on the collection ``name`` goes: ``<run>/external/<name>/``."""
    return Path(run_folder) / EXTERNAL_FOLDER / name


def evaluation_is_current(run_folder: Path, name: str, collection_sha256: str) -> bool:
    """Whether ``<run>/external/<name>/`` holds a finished evaluation of this collection by this run's saved model."""
    record_file = external_dir(run_folder, name) / METRICS_FILE
    model_file = Path(run_folder) / MODEL_FILE
    if not (record_file.is_file() and model_file.is_file()):
        return False
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        return False
    return (record.get("collection_sha256") == collection_sha256
            and record.get("model_sha256") == file_sha256(model_file))
