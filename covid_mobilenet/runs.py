"""Where one run's files live: ``<results_dir>/<experiment>/`` and its backup folder.

Free of TensorFlow, so that run_all.py can inspect runs without loading it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .params import resolve_path

METRICS_FILE = "metrics.json"  # written last: its presence means the run finished
PREVIOUS_METRICS_FILE = "metrics.previous.json"  # an outdated result, kept when its experiment reruns
HISTORY_FILE = "history.csv"
CONFUSION_FILE = "confusion_matrix.png"
KERNEL_LOG = "kernel.log"  # the notebook kernel's own stderr (library start-up messages, crashes)
BACKUP_FOLDER = "backup"  # Keras' BackupAndRestore checkpoint and the per-epoch log, while training


def run_dir(params: dict) -> Path:
    return resolve_path(params["results_dir"]) / params["experiment"]


def backup_dir(run_folder: Path) -> Path:
    return Path(run_folder) / BACKUP_FOLDER


def remove_backup(run_folder: Path) -> None:
    shutil.rmtree(backup_dir(run_folder), ignore_errors=True)
