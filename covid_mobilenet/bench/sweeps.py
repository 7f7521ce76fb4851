"""Sweeps measured: the seven configurations with a frozen backbone trained end to end against the same seven
through the feature cache (each one the notebook's steps, ``run.steps.run_experiment``, in this process), and
one fast configuration on a generated set of the real size for its peak memory."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keras

from ..common.config import experiment_parameters, load_config
from ..common.paths import PROJECT_ROOT
from ..common.run_layout import METRICS_FILE, seed_folder
from ..run.params import notebook_defaults
from ..run.steps import run_experiment

FULL_SIZE_IMAGES = 21_165


def measure_fast_sweep(root: Path, image_size: int, batch_size: int, epochs: int) -> dict:
    """The seven configurations with a frozen backbone: trained end to end, then through the feature cache.

    Each configuration is ``run_experiment``: the notebook's steps (setup, data, model, training with
    its backup, predictions, shortcut checks, evaluation, the run's files) in this process, as a
    sweep's notebooks would run them without their kernels' start-up; the cached side includes
    computing the features.
    """
    config = load_config()
    with tempfile.TemporaryDirectory() as scratch:
        base = {
            **notebook_defaults(), "data_dir": str(root), "results_dir": f"{scratch}/results", "graph_dir": f"{scratch}/Graph",
            "feature_dir": f"{scratch}/features", "image_size": image_size, "batch_size": batch_size, "epochs": epochs,
            "weights": None, "train_base": False, "precision": "float32",
        }
        seconds = {}
        for fast in (False, True):
            started = time.perf_counter()
            for name, settings in config["experiments"].items():
                run_experiment({**base, **experiment_parameters(settings), "experiment": f"{name}-{fast}", "fast": fast})
                keras.backend.clear_session(free_memory=True)  # as a new notebook kernel would start: nothing held over
            seconds[fast] = time.perf_counter() - started
            print(f"seven frozen-backbone configurations, {epochs} epochs: {'feature cache' if fast else 'end to end'} {seconds[fast]:.0f} s")
    return {"end_to_end_seconds": seconds[False], "cached_seconds": seconds[True], "epochs": epochs,
            "configurations": len(config["experiments"])}


FULL_SIZE_EPOCHS = 6


def measure_full_size(root: Path, image_size: int) -> dict:
    """One fast configuration on ``root``, a generated set of the real size, run by run_all.py in its own kernel.

    Its backbone has random weights (``weights=None``) and it trains FULL_SIZE_EPOCHS epochs: the memory of a run
    does not depend on the weights' values, and the demo's own backbone would first be pretrained at this size."""
    seed = notebook_defaults()["seed"]
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, str(PROJECT_ROOT / "run_all.py"), "--demo", "--fast", "--only", "mn_resultset1", "--force",
            "--data-dir", str(root), "--image-size", str(image_size), "--epochs", str(FULL_SIZE_EPOCHS), "--jobs", "1",
            "--results-dir", f"{scratch}/results", "--graph-dir", f"{scratch}/Graph", "--set", f"feature_dir={scratch}/features",
            "--set", "weights=None",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=PROJECT_ROOT)
        metrics = json.loads((Path(scratch) / "results" / "mn_resultset1" / seed_folder(seed) / METRICS_FILE).read_text())
    result = {
        "images": metrics["dataset"]["total_images"],
        "image_size": image_size,
        "peak_rss_gib": metrics["peak_rss_gib"],
        "feature_seconds": metrics["features"]["seconds"],
        "train_seconds": metrics["train_seconds"],
        "epochs": metrics["epochs_run"],
        "wall_seconds": time.perf_counter() - started,
        "command": " ".join(command[1:]),
    }
    print(f"full size: {result['images']} images at {image_size} px, kernel peak memory {result['peak_rss_gib']:.2f} GiB")
    return result
