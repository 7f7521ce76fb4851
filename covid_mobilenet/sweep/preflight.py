"""Before a sweep trains anything: the demo's data and backbone made, everything that could fail halfway
checked (the data and its split, the weights, writable folders), and which runs are already done.

A finished run (its metrics.json made with the same parameters) is skipped; an interrupted one
resumes from its backup; an outdated result is set aside, never deleted.
"""
from __future__ import annotations

import os
from typing import Callable

from ..analysis.results import read_result
from ..common.files import StorageError, ensure_writable
from ..common.paths import resolve_path
from ..common.run_layout import BACKUP_FOLDER, METRICS_FILE, PREVIOUS_METRICS_FILE, remove_backup
from ..data.demo import DEFAULT_DEMO_DIR, demo_dataset_complete, generate_demo_dataset, is_demo_dataset
from ..data.layout import DEFAULT_DATA_DIR, DatasetError
from ..data.locate import kaggle_credentials_available, locate_dataset
from ..data.scan import scan_dataset
from ..data.grouping import split_for, write_duplicates_table
from ..data.sources import hold_out
from ..model import demo_backbone
from ..model.weights import WeightsError, ensure_weights_available
from .plan import Job, Mode


class SweepError(RuntimeError):
    """Something checked before any training is wrong; the message says what to do."""


def prepare_demo_data(mode: Mode, config: dict, say: Callable[[str], None] = print) -> None:
    """Generate the demo set when it is absent (or was left half-written)."""
    root = resolve_path(mode.data_dir)
    demo_config = config.get("demo", {})
    images = demo_config.get("images")
    expected = images if root == DEFAULT_DEMO_DIR else None  # a set the user pointed at is used as it is
    if not demo_dataset_complete(root, expected):
        say(f"Generating the demo data set ({images} images) in {root}")
        generate_demo_dataset(root, images=images, seed=demo_config.get("seed", 0))


def prepare_demo_backbone(mode: Mode, jobs: list[Job], say: Callable[[str], None] = print) -> int:
    """Pretrain the demo backbone for every image size the jobs load it at, when it is not cached yet; how many it
    pretrained. After the preflight: a minute of pretraining is not spent on a sweep that its data or folders would stop."""
    pretrained = 0
    if mode.backbone is None:
        return pretrained
    for image_size in sorted({job.params["image_size"] for job in jobs}):
        weights = demo_backbone.weights_path(mode.backbone, image_size)
        if str(weights) in {job.params["weights"] for job in jobs}:
            pretrained += not demo_backbone.is_complete(weights)
            try:
                demo_backbone.ensure_backbone(mode.backbone, image_size, say=say)
            except demo_backbone.BackboneError as exc:
                raise SweepError(str(exc)) from None
    return pretrained


def preflight(jobs: list[Job], mode: Mode, say: Callable[[str], None] = print, holdout_plan: dict | None = None) -> list[Job]:
    """What would otherwise fail in the middle of a long sweep: data and its split, weights, writable folders; the jobs
    to run. With ``holdout_plan`` (--holdout-sources), a job whose class keeps no image of another source for
    training or validation once its source is held out (a class whose other source is a handful of images may have
    none left for validation) is left out of the sweep, and the plan says why, instead of stopping it."""
    indexes, splits, tables, kept = {}, {}, {}, []
    for job in jobs:
        params = job.params
        data_dir = params["data_dir"]
        split_key = (data_dir, params["strict_data"], params["val_fraction"], params["test_fraction"], params["split_seed"],
                     params["keep_label_conflicts"])
        try:
            if split_key not in splits:  # the seeds of a configuration, and most configurations, share one split
                if (data_dir, params["strict_data"]) not in indexes:
                    root = locate_dataset(None if data_dir is None else resolve_path(data_dir))
                    if not mode.demo and is_demo_dataset(root):
                        raise SweepError(f"{root} is the synthetic demo set; run `python run_all.py --demo` for it, so demo numbers never pass for real ones.")
                    say(f"Checking every image under {root}")
                    indexes[data_dir, params["strict_data"]] = scan_dataset(root, strict=params["strict_data"],
                                                                           cache_dir=resolve_path(params["feature_dir"]))
                index = indexes[data_dir, params["strict_data"]]
                # near-duplicates grouped once here, their fingerprints cached for every run (data/grouping.py)
                splits[split_key] = index.root, *split_for(index.root, index.images, params,
                                                           feature_dir=resolve_path(params["feature_dir"]))
            root, split, groups, record = splits[split_key]
            if params["holdout_source"]:
                try:
                    hold_out(split, root, params["holdout_source"], groups.images)
                except DatasetError as exc:
                    if holdout_plan is None:
                        raise
                    _leave_out(job, exc, holdout_plan, say)
                    continue
            else:  # the duplicates table, written now: a sweep stopped later still lists its data's copies
                tables[resolve_path(params["results_dir"]) / record["file"]] = groups, split, record
        except DatasetError as exc:
            raise SweepError(f"Experiment {job.name}: {exc}") from None
        kept.append(job)
    for weights, image_size in sorted({(str(job.params["weights"]), job.params["image_size"]) for job in kept}):
        ensure_weights_available(None if weights == "None" else weights, image_size)
    for folder in sorted({resolve_path(job.params[key]) for job in kept for key in ("results_dir", "graph_dir")}):
        try:
            ensure_writable(folder)
        except StorageError as exc:
            raise SweepError(exc.strerror) from None
    for path, (groups, split, record) in tables.items():
        write_duplicates_table(path.parent, groups, split, record)
    return kept


def dry_run_problems(jobs: list[Job], mode: Mode, say: Callable[[str], None] = print) -> list[str]:
    """``--dry-run``: what can be checked without reading every image, downloading or writing anything: the data set
    found (or to be downloaded, or generated for the demo), the weights to be had. One line per problem that would
    stop the runs; none when they could start."""
    problems = []
    for data_dir in sorted({job.params["data_dir"] for job in jobs}, key=str):
        given = None if data_dir is None else resolve_path(data_dir)
        if mode.demo and given is not None and not given.exists():
            say(f"the demo set would be generated in {given}")
        elif given is None and not DEFAULT_DATA_DIR.is_dir() and kaggle_credentials_available():
            say("the data set would be downloaded from Kaggle (credentials found)")
        else:
            try:
                root = locate_dataset(given)
            except DatasetError as exc:
                problems.append(str(exc))
                continue
            if not mode.demo and is_demo_dataset(root):
                problems.append(f"{root} is the synthetic demo set; run `python run_all.py --demo` for it.")
            else:
                say(f"data set found: {root}")
    for weights, image_size in sorted({(str(job.params["weights"]), job.params["image_size"]) for job in jobs}):
        if weights in ("None", "imagenet"):
            try:
                ensure_weights_available(None if weights == "None" else weights, image_size)
            except WeightsError as exc:
                problems.append(str(exc))
        elif not resolve_path(weights).is_file():  # a file the user named is checked with the parameters
            say(f"the demo backbone would be pretrained at {image_size} px (once)")
    return problems


def _leave_out(job: Job, problem: DatasetError, plan: dict, say: Callable[[str], None]) -> None:
    """A held-out pair that cannot be split: said, moved from the plan's testable pairs to its untestable ones."""
    label, source = job.params["holdout_source"].split("=", 1)
    say(f"{job.name}: left out: {problem}")
    if not any(u["class"] == label and u["sources"] == [source] for u in plan["untestable"]):
        plan["untestable"].append({"class": label, "sources": [source], "reason": str(problem).split(": ", 1)[-1]})
    plan["testable"] = [t for t in plan["testable"] if (t["class"], t["source"]) != (label, source)]


def previous_run(job: Job) -> tuple[bool, str]:
    """(True, why) when the job's metrics.json exists and was made with the same parameters."""
    metrics_file = job.run_dir / METRICS_FILE
    if not metrics_file.exists():
        if (job.run_dir / BACKUP_FOLDER).exists():
            return False, "interrupted earlier; resuming from its backup"
        return False, "not run yet"
    result = read_result(job.run_dir)
    if result.status != "done":
        return False, f"{result.problem}; running it again"
    before = result.metrics.get("params", {})
    changed = sorted(k for k in set(before) | set(job.params) if before.get(k) != job.params.get(k))
    if changed:
        detail = ", ".join(f"{k} {before.get(k)!r} -> {job.params.get(k)!r}" for k in changed)
        return False, f"parameters changed ({detail}); running it again"
    return True, "finished earlier with the same parameters"


def set_aside_previous_results(job: Job, force: bool) -> None:
    """Keep an outdated metrics.json as metrics.previous.json, so a failed rerun never looks finished."""
    metrics_file = job.run_dir / METRICS_FILE
    if metrics_file.exists():
        os.replace(metrics_file, job.run_dir / PREVIOUS_METRICS_FILE)
    if force:
        remove_backup(job.run_dir)
