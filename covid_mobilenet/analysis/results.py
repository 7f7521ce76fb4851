"""Reading finished runs: what each run's folder holds (finished metrics, or why there are none), every
configuration's runs, and the best finished run with its saved model, chosen on validation accuracy.

Reads run files only (``common/run_layout.py``); a missing, failed or unreadable run is a result marked as
such, never a crash.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..common.run_layout import METRICS_FILE, MODEL_FILE, seed_folder, seed_of, seeds_in


@dataclass
class ExperimentResult:
    """One run: a configuration with one training seed (``seed`` None: no run of it was found)."""

    name: str  # the configuration
    status: str  # "done", "missing", "failed", "unreadable", "demo data"
    metrics: dict | None = None
    problem: str | None = None
    seed: int | None = None
    folder: Path | None = None


def read_result(run_folder: str | os.PathLike, *, allow_demo: bool = True) -> ExperimentResult:
    """What one run's folder (``<results_dir>/<experiment>/seed-<seed>``) holds: finished metrics, or why there are none."""
    folder = Path(run_folder)
    name, seed = folder.parent.name, seed_of(folder)
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            metrics["test"]["accuracy"]  # the least a finished run has
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return ExperimentResult(name, "unreadable", problem=f"{metrics_file} is unreadable ({type(exc).__name__}: {exc})",
                                    seed=seed, folder=folder)
        if not allow_demo and metrics.get("dataset", {}).get("demo"):
            return ExperimentResult(name, "demo data", problem=f"{metrics_file} was computed on the demo data set",
                                    seed=seed, folder=folder)
        return ExperimentResult(name, "done", metrics, seed=seed, folder=folder)
    notebook = folder / f"{name}.ipynb"
    if notebook.is_file():
        return ExperimentResult(name, "failed", problem=f"no metrics.json; the executed notebook {notebook} shows where it stopped",
                                seed=seed, folder=folder)
    return ExperimentResult(name, "missing", problem=f"{folder} holds no results", seed=seed, folder=folder)


def collect_results(
    results_dir: str | os.PathLike, config: dict, *, allow_demo: bool = True, seeds: list[int] | None = None
) -> dict[str, list[ExperimentResult]]:
    """Every configuration's runs, one per seed: ``seeds`` when given, else every ``seed-*`` folder there is."""
    collected = {}
    for name in config["experiments"]:
        folder = Path(results_dir) / name
        found = seeds if seeds is not None else seeds_in(folder)
        runs = [read_result(folder / seed_folder(seed), allow_demo=allow_demo) for seed in found]
        collected[name] = runs or [ExperimentResult(name, "missing", problem=f"{folder} holds no results")]
    return collected


class RunNotFound(LookupError):
    """No finished run with a saved model where one was looked for; the message says how to make one."""


def finished_runs(results_dir: str | os.PathLike, *, allow_demo: bool = False) -> list[tuple[float, Path]]:
    """(validation accuracy, run folder) of every finished run of the sweep in ``results_dir`` that kept its model and
    was trained on full images: ``<results_dir>/<experiment>/seed-<seed>/``, not the runs of another folder inside it
    (results/fast/, results/demo/) nor the runs of --regions, whose models take images with a region blacked out,
    nor those of --holdout-sources, trained without one source. A run without a validation accuracy counts as -1."""
    runs = []
    for metrics_file in sorted(Path(results_dir).glob(f"*/seed-*/{METRICS_FILE}")):
        try:
            metrics = json.loads(metrics_file.read_text())
            float(metrics["test"]["accuracy"])  # finished
            accuracy = float(metrics.get("val", {}).get("accuracy", -1))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if metrics.get("dataset", {}).get("demo") and not allow_demo:
            continue
        if metrics.get("params", {}).get("input_region", "full") != "full" or metrics.get("params", {}).get("holdout_source"):
            continue  # a --regions model expects a region blacked out; a --holdout-sources one never saw a source
        if (metrics_file.parent / MODEL_FILE).is_file():
            runs.append((accuracy, metrics_file.parent))
    return runs


def chosen_run(runs: list[tuple[float, Path]]) -> Path:
    """The run of the highest validation accuracy (ties: the first by folder name): chosen without the test images,
    so its test accuracy is an honest estimate, not the best of several draws."""
    return max(runs, key=lambda run: (run[0], -runs.index(run)))[1]


def best_run(results_dir: str | os.PathLike, *, allow_demo: bool = False) -> Path:
    """The finished run that ``chosen_run`` picks among ``finished_runs``."""
    runs = finished_runs(results_dir, allow_demo=allow_demo)
    if not runs:
        kind = "" if allow_demo else " on the real data"
        raise RunNotFound(
            f"No finished run{kind} with a saved model ({MODEL_FILE}) under {results_dir}. Train one with "
            "`python run_all.py` (or `python run_all.py --demo` and --run results/demo/<experiment>/seed-<seed>), "
            "or pass --model FILE."
        )
    return chosen_run(runs)
