"""``run_all.py --external DIR[=NAME]``: every finished run of the sweep evaluated on other collections.

Each collection is read and checked before anything trains (a folder that is not a collection stops the sweep at
once, not after hours). After the sweep, ``python -m covid_mobilenet.evaluate`` evaluates, in one process of its own
per collection, the finished runs whose ``<run>/external/<name>/metrics.json`` does not already hold this
collection (the hash of its images, masks, labels and sources) evaluated by this run's saved model: a rerun with
nothing changed recomputes nothing. With ``--demo``, ``--external`` without a folder is the generated second
hospital (``data/demo_hospital.py``), written beside the demo set when absent, with a few of the demo set's films
copied into it as public collections copy each other.
"""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..common.paths import PROJECT_ROOT, resolve_path
from ..common.run_layout import METRICS_FILE, evaluation_is_current
from ..data.demo_hospital import RECORD, generate_second_hospital
from ..data.external import ExternalError, check_name, collection_sha256, read_collection
from .outcomes import Outcome
from .plan import Mode

DEMO_COLLECTION = "hospital-2"  # the demo's second hospital: its folder beside the demo set, and its name


@dataclass(frozen=True)
class ExternalSet:
    """A collection to evaluate every finished run on: its name (the folder under ``<run>/external/``) and root."""

    name: str
    root: Path


def demo_collection_dir(mode: Mode) -> Path:
    return resolve_path(mode.data_dir).parent / DEMO_COLLECTION


def parse_external(values: list[str] | None, mode: Mode) -> list[ExternalSet]:
    """``--external`` as given: ``DIR`` or ``DIR=NAME`` (a folder whose own name holds '=' is taken whole), or nothing
    with ``--demo`` (the generated second hospital). Names must differ."""
    sets = []
    for value in values or []:
        if not value:
            if not mode.demo:
                raise ExternalError("--external without a folder is the demo's generated second hospital; with the "
                                    "real data give the other collection's folder: --external DIR[=NAME]")
            sets.append(ExternalSet(DEMO_COLLECTION, demo_collection_dir(mode)))
            continue
        folder, name = value, None
        if "=" in value and not Path(value).expanduser().is_dir():
            folder, _, name = value.rpartition("=")
        root = Path(folder).expanduser()
        sets.append(ExternalSet(check_name(name or root.resolve().name), root))
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ExternalError(f"--external: the name(s) {repeated} are given to more than one collection; name each "
                            "with DIR=NAME")
    return sets


def check_external(sets: list[ExternalSet], mode: Mode, say: Callable[[str], None] = print) -> None:
    """Before the sweep: the demo's second hospital written when absent, and every collection read (its layout, its
    images by content); ``ExternalError`` names what is wrong."""
    for external in sets:
        if mode.demo and external.root == demo_collection_dir(mode) and not (external.root / RECORD).is_file():
            say(f"Generating the demo's second hospital in {external.root}")
            generate_second_hospital(external.root, copies_from=resolve_path(mode.data_dir))  # with a few copies
        collection = read_collection(external.root)
        say(f"--external {external.name}: {len(collection.images)} images in {external.root}"
            + (f" ({len(collection.left_out)} files that are not images left out)" if collection.left_out else ""))


def evaluate_external(sets: list[ExternalSet], run_dirs: list[Path]) -> list[Outcome]:
    """Each collection's evaluation of the finished runs among ``run_dirs`` that have none for it yet: one Outcome
    per collection, its detail the evaluation's line per run."""
    finished = [Path(run) for run in run_dirs if (Path(run) / METRICS_FILE).is_file()]
    outcomes = []
    for external in sets:
        start = time.perf_counter()
        label = f"external {external.name}"
        try:
            digest = collection_sha256(read_collection(external.root))
        except ExternalError as exc:  # changed since the check before the sweep
            outcomes.append(Outcome(label, "failed", 0.0, str(exc)))
            continue
        pending = [run for run in finished if not evaluation_is_current(run, external.name, digest)]
        if not pending:
            outcomes.append(Outcome(label, "skipped", 0.0, f"{len(finished)} run(s) already evaluated on this collection"))
            continue
        command = [sys.executable, "-m", "covid_mobilenet.evaluate", "--data-dir", str(external.root),
                   "--name", external.name, *[part for run in pending for part in ("--run", str(run))]]
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        problems = [line for line in done.stderr.splitlines() if line.startswith("evaluate:")]
        status = "ran" if done.returncode == 0 else "failed"
        if done.returncode != 0 and not problems:
            problems = (done.stderr.strip().splitlines() or ["no message"])[-1:]
        detail = (f"{len(pending)} run(s) evaluated, {len(finished) - len(pending)} already were"
                  + "".join(f"\n    {line}" for line in lines + problems))
        outcomes.append(Outcome(label, status, time.perf_counter() - start, detail))
    return outcomes
