"""Sweeps measured: the seven configurations with a frozen backbone trained end to end against the same seven
through the feature cache (each one the notebook's steps, ``run.steps.run_experiment``, in this process), and
the seven-configuration fast sweep on a generated set of the real size, cold and warm, for its time and memory."""
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


def measure_full_size(root: Path, image_size: int, only: list[str] | None = None) -> dict:
    """The seven-configuration ``run_all.py --fast`` sweep on ``root``, a generated set of the real size, as a user
    runs it (two notebooks at once, each run's shortcut checks, calibration and guard): first with an empty feature
    cache (cold), then again with ``--force`` on the cache it left (warm).

    The backbone has random weights (``weights=None``) and each head trains FULL_SIZE_EPOCHS epochs: time and memory
    do not depend on the weights' values, and the demo's own backbone would first be pretrained at this size.
    ``only``: some configurations (the tests'), not the seven."""
    seed = notebook_defaults()["seed"]
    sweeps = {}
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, str(PROJECT_ROOT / "run_all.py"), "--demo", "--fast", "--data-dir", str(root),
            "--image-size", str(image_size), "--epochs", str(FULL_SIZE_EPOCHS), "--results-dir", f"{scratch}/results",
            "--graph-dir", f"{scratch}/Graph", "--set", f"feature_dir={scratch}/features", "--set", "weights=None",
            *(["--only", ",".join(only)] if only else []),
        ]
        for name, extra in (("cold", []), ("warm", ["--force"])):
            started = time.perf_counter()
            subprocess.run(command + extra, check=True, cwd=PROJECT_ROOT)
            wall = time.perf_counter() - started
            runs = [json.loads(path.read_text()) for path in
                    sorted((Path(scratch) / "results").glob(f"*/{seed_folder(seed)}/{METRICS_FILE}"))]
            computed = [run["features"]["seconds"] for run in runs if run["features"]["computed_here"]]
            sweeps[name] = {
                "wall_seconds": wall, "runs": len(runs), "peak_rss_gib": max(run["peak_rss_gib"] for run in runs),
                "backbone_seconds": sum(computed), "head_training_seconds": sum(run["train_seconds"] for run in runs),
            }
            print(f"full size, {name} cache: {len(runs)} configurations in {wall:.0f} s, the backbone's pass "
                  f"{sum(computed):.0f} s, the heads' training {sweeps[name]['head_training_seconds']:.0f} s, "
                  f"kernel peak memory {sweeps[name]['peak_rss_gib']:.2f} GiB")
    return {
        "images": runs[0]["dataset"]["total_images"],
        "image_size": image_size,
        "epochs": FULL_SIZE_EPOCHS,
        "peak_rss_gib": max(sweep["peak_rss_gib"] for sweep in sweeps.values()),
        **sweeps,
        "command": " ".join(command[1:]),
    }
