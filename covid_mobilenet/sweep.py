"""The sweep behind run_all.py: plan every experiment, check everything that can be checked, run the notebooks.

Each experiment is the experiment notebook run by papermill with its own
parameters: the notebook's defaults, then the experiment's settings from
experiments.json, then the mode's overrides (demo), then the command line's.
A finished experiment (its metrics.json made with the same parameters) is
skipped; an interrupted one resumes from its backup; a failed one does not stop
the others.
"""
from __future__ import annotations

import ast
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import PROJECT_ROOT, demo_backbone
from .data import DatasetError, locate_dataset, scan_dataset, split_images
from .demo import DEFAULT_DEMO_DIR, demo_dataset_complete, generate_demo_dataset, is_demo_dataset
from .files import StorageError, ensure_writable
from .params import EXPERIMENT_NOTEBOOK, ParameterError, check_parameters, notebook_defaults, resolve_path
from .masks import REGIONS
from .runs import BACKUP_FOLDER, KERNEL_LOG, METRICS_FILE, PREVIOUS_METRICS_FILE, region_experiment, remove_backup, run_dir, seed_folder
from .summary import experiment_parameters, format_duration, read_result
from .weights import ensure_weights_available

SUMMARY_NOTEBOOK = PROJECT_ROOT / "notebooks" / "summary.ipynb"
SET_BY_THE_SWEEP = {"experiment": "--only", "results_dir": "--results-dir", "graph_dir": "--graph-dir", "fast": "--fast",
                    "seed": "--seeds or --seed-values", "input_region": "--regions"}
FAST_OVERRIDES = {"train_base": False, "fast": True}  # --fast: frozen backbone, head trained on cached features
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class SweepError(RuntimeError):
    """Something checked before any training is wrong; the message says what to do."""


@dataclass(frozen=True)
class Mode:
    """Where a kind of sweep reads and writes, and what it changes in every configuration."""

    name: str  # "real" or "demo"
    results_dir: str
    graph_dir: str
    data_dir: str | None
    overrides: dict = field(default_factory=dict)
    fast: bool = False  # the frozen-backbone experiment (run_all.py --fast), reported on its own
    learning_rate_factor: float = 1.0  # the demo's one factor on every configuration's learning rate
    backbone: dict | None = None  # the demo: pretraining settings of its stand-in for ImageNet weights

    @property
    def demo(self) -> bool:
        return self.name == "demo"

    @property
    def label(self) -> str:
        return self.name + (" frozen-backbone (fast)" if self.fast else "")


def make_mode(config: dict, *, demo: bool, fast: bool = False, results_dir=None, graph_dir=None, data_dir=None) -> Mode:
    """The real sweep writes results/ and Graph/; the demo sweep results/demo/ and Graph/demo/.

    The fast sweep is another experiment (a frozen backbone, not the study's fine-tuning): its
    results go to a ``fast/`` folder inside those, so they are never mixed with the study's.
    """
    def given(path):  # a path typed on the command line is relative to where it was typed
        return None if path is None else str(Path(path).expanduser().resolve())

    fast_folder = "/fast" if fast else ""
    overrides = dict(FAST_OVERRIDES) if fast else {}
    if demo:
        demo_config = config.get("demo", {})
        fast_overrides = demo_config.get("fast_overrides", {}) if fast else {}
        return Mode(
            "demo",
            given(results_dir) or f"results/demo{fast_folder}",
            given(graph_dir) or f"Graph/demo{fast_folder}",
            given(data_dir) or os.path.relpath(DEFAULT_DEMO_DIR, PROJECT_ROOT),
            {**demo_config.get("overrides", {}), **fast_overrides, **overrides},
            fast,
            demo_config.get("learning_rate_factor", 1.0),
            demo_config.get("backbone"),
        )
    return Mode(
        "real", given(results_dir) or f"results{fast_folder}", given(graph_dir) or f"Graph{fast_folder}",
        given(data_dir), overrides, fast,
    )


@dataclass
class Job:
    """One run: a configuration trained with one seed, in ``<results_dir>/<experiment>/seed-<seed>/``."""

    params: dict

    @property
    def experiment(self) -> str:
        return self.params["experiment"]

    @property
    def name(self) -> str:
        return f"{self.experiment}/{seed_folder(self.params['seed'])}"

    @property
    def run_dir(self) -> Path:
        return run_dir(self.params)

    @property
    def executed_notebook(self) -> Path:
        return self.run_dir / f"{self.experiment}.ipynb"


@dataclass
class Outcome:
    name: str
    status: str  # "ran", "skipped", "failed"
    seconds: float = 0.0
    detail: str = ""
    executed_notebook: Path | None = None
    test_accuracy: float | None = None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from --set; VALUE is read as a Python literal when it is one (1e-4, None, True)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"--set {text!r}: expected KEY=VALUE, for example --set batch_size=64")
    if key in SET_BY_THE_SWEEP:
        raise ParameterError(f"--set {key}=...: {key} is set by the sweep; use {SET_BY_THE_SWEEP[key]} instead")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


def select(config: dict, only: list[str] | None) -> list[str]:
    names = list(config["experiments"])
    if not only:
        return names
    wanted = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ParameterError(f"--only: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return [name for name in names if name in wanted]


def training_seeds(count: int | None, values: list[int] | None, default: int) -> list[int]:
    """The sweep's training seeds: ``values`` as given, else ``count`` seeds from the notebook's ``seed`` on."""
    if values:
        if len(set(values)) != len(values) or min(values) < 0:
            raise ParameterError(f"--seed-values {','.join(map(str, values))}: seeds must be distinct integers >= 0")
        return list(values)
    if count is not None and count < 1:
        raise ParameterError(f"--seeds {count}: give at least 1")
    return [default + i for i in range(count or 1)]


def plan(config: dict, names: list[str], mode: Mode, cli_overrides: dict, seeds: list[int] | None = None) -> list[Job]:
    """Every job's full, checked parameters, one job per configuration and training seed; a bad value
    anywhere stops the sweep before it starts. The split's seed is the same for every training seed."""
    defaults = notebook_defaults()
    jobs = []
    for name in names:
        for seed in seeds or [defaults["seed"]]:
            jobs.append(_plan_one(config, name, seed, defaults, mode, cli_overrides))
    return jobs


def plan_regions(config: dict, mode: Mode, cli_overrides: dict, seeds: list[int] | None = None) -> list[Job]:
    """The training-time shortcut protocol (Sourget et al. 2024): the baseline configuration trained on each
    input region (full images, lungs only, no lungs), each run tested on every region by its notebook. The
    full-image run is the baseline's own run of the sweep, so a finished sweep's is reused."""
    defaults = notebook_defaults()
    baseline = config.get("baseline", next(iter(config["experiments"])))
    jobs = []
    for region in REGIONS:
        for seed in seeds or [defaults["seed"]]:
            job = _plan_one(config, baseline, seed, defaults, mode, {**cli_overrides, "input_region": region})
            job.params["experiment"] = region_experiment(baseline, region)
            jobs.append(job)
    return jobs


def _plan_one(config: dict, name: str, seed: int, defaults: dict, mode: Mode, cli_overrides: dict) -> Job:
    settings = experiment_parameters(config["experiments"][name])
    if "learning_rate" in settings and mode.learning_rate_factor != 1:
        settings["learning_rate"] = scaled_learning_rate(settings["learning_rate"], mode.learning_rate_factor)
    params = {
        **defaults,
        **settings,
        **mode.overrides,
        **cli_overrides,
        "experiment": name,
        "seed": seed,
        "results_dir": mode.results_dir,
        "graph_dir": mode.graph_dir,
    }
    if mode.data_dir is not None and "data_dir" not in cli_overrides:
        params["data_dir"] = mode.data_dir
    # The demo's pretrained backbone is made after this check (prepare_demo_data), so its file
    # may not exist yet: the check sees no weights, the run gets the file's path.
    pending_backbone = mode.backbone is not None and "weights" not in cli_overrides
    if pending_backbone:
        params["weights"] = None
    try:
        params = check_parameters(params)
    except ParameterError as exc:
        raise ParameterError(f"Experiment {name}: {exc} (settings from experiments.json, the mode and the command line)") from None
    if pending_backbone:
        params["weights"] = str(demo_backbone.weights_path(mode.backbone, params["image_size"]))
    return Job(params)


def scaled_learning_rate(learning_rate: float, factor: float) -> float:
    """``learning_rate * factor`` without binary noise in the record (1e-5 * 10 is 1e-4, not 0.00010000000000000002)."""
    return float(f"{learning_rate * factor:.10g}")


def prepare_demo_data(mode: Mode, config: dict, jobs: list[Job], say: Callable[[str], None] = print) -> None:
    """Generate the demo set when it is absent (or was left half-written), and pretrain the demo
    backbone for every image size the jobs load it at, when it is not cached yet."""
    root = resolve_path(mode.data_dir)
    demo_config = config.get("demo", {})
    images = demo_config.get("images")
    expected = images if root == DEFAULT_DEMO_DIR else None  # a set the user pointed at is used as it is
    if not demo_dataset_complete(root, expected):
        say(f"Generating the demo data set ({images} images) in {root}")
        generate_demo_dataset(root, images=images, seed=demo_config.get("seed", 0))
    if mode.backbone is None:
        return
    for image_size in sorted({job.params["image_size"] for job in jobs}):
        if str(demo_backbone.weights_path(mode.backbone, image_size)) in {job.params["weights"] for job in jobs}:
            try:
                demo_backbone.ensure_backbone(mode.backbone, image_size, say=say)
            except demo_backbone.BackboneError as exc:
                raise SweepError(str(exc)) from None


def preflight(jobs: list[Job], mode: Mode, say: Callable[[str], None] = print) -> None:
    """What would otherwise fail in the middle of a long sweep: data and its split, weights, writable folders."""
    indexes, splits_checked = {}, set()
    for job in jobs:
        params = job.params
        data_dir = params["data_dir"]
        split_key = (data_dir, params["strict_data"], params["val_fraction"], params["test_fraction"], params["split_seed"])
        if split_key in splits_checked:  # the seeds of a configuration, and most configurations, share one split
            continue
        try:
            if (data_dir, params["strict_data"]) not in indexes:
                root = locate_dataset(None if data_dir is None else resolve_path(data_dir))
                if not mode.demo and is_demo_dataset(root):
                    raise SweepError(f"{root} is the synthetic demo set; run `python run_all.py --demo` for it, so demo numbers never pass for real ones.")
                say(f"Checking every image under {root}")
                indexes[data_dir, params["strict_data"]] = scan_dataset(root, strict=params["strict_data"])
            index = indexes[data_dir, params["strict_data"]]
            split_images(index.images, val_fraction=params["val_fraction"], test_fraction=params["test_fraction"], seed=params["split_seed"])
            splits_checked.add(split_key)
        except DatasetError as exc:
            raise SweepError(f"Experiment {job.name}: {exc}") from None
    for weights, image_size in sorted({(str(job.params["weights"]), job.params["image_size"]) for job in jobs}):
        ensure_weights_available(None if weights == "None" else weights, image_size)
    for folder in sorted({resolve_path(job.params[key]) for job in jobs for key in ("results_dir", "graph_dir")}):
        try:
            ensure_writable(folder)
        except StorageError as exc:
            raise SweepError(exc.strerror) from None


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


def _kernel_manager_logging_to(log_file: Path):
    """A Jupyter kernel manager whose kernels write their own stderr (TensorFlow's C++ start-up
    messages, ipykernel's warnings) to ``log_file`` instead of the sweep's terminal.

    On POSIX its kernels talk over IPC sockets with a path of their own, not TCP ports: with TCP,
    jupyter_client picks free ports, closes them and hands them to the kernel, and kernels started at
    once (``--jobs``, several Slurm array tasks on one node) can pick the same ones (papermill issue 511).
    """
    from jupyter_client import AsyncKernelManager

    class KernelManagerWithLog(AsyncKernelManager):
        def __init__(self, **kw):
            if os.name == "posix":
                kw = {"transport": "ipc", "ip": _ipc_prefix(), **kw}
            super().__init__(**kw)

        async def start_kernel(self, **kw):
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with open(log_file, "ab") as log:
                started = await super().start_kernel(**{"stderr": log, **kw})
            _live_kernels.add(self)
            return started

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            _live_kernels.discard(self)
            await super()._async_cleanup_resources(restart)

    return KernelManagerWithLog


_live_kernels: weakref.WeakSet = weakref.WeakSet()  # the kernels this process started and has not shut down


def kill_kernels() -> None:
    """Kill this process's notebook kernels at once, with whatever they started (each kernel leads its own
    process group). For a process about to be killed itself: an orphaned kernel would finish its cell alone."""
    for manager in list(_live_kernels):
        process = getattr(manager.provisioner, "process", None)
        if process is not None and process.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            except OSError:
                pass


def _ipc_prefix() -> str:
    """Where one kernel's IPC sockets go (``<prefix>-1`` to ``-5``): the node's own temporary folder, unique
    per kernel. A socket's path must stay under 108 bytes, so a deep TMPDIR gives way to /tmp."""
    name = f"covid-mobilenet-kernel-{uuid.uuid4().hex[:16]}"
    folder = tempfile.gettempdir()
    return os.path.join(folder if len(folder) < 60 else "/tmp", name)


def _no_cell_ran(notebook: Path) -> bool:
    """True when papermill never got a cell executed: the kernel did not start or died at once."""
    try:
        cells = json.loads(notebook.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return True
    return not any(cell.get("execution_count") for cell in cells if cell.get("cell_type") == "code")


def execute(job: Job, kernel: str, progress_bar: bool | dict = False) -> Outcome:
    """Run one experiment notebook with papermill; a failure becomes an Outcome, not an exception.

    A kernel that fails before running any cell (a start-up race, a node's passing trouble) gets one
    more try; a failure inside the notebook does not, it would fail the same way again."""
    import papermill

    start = time.perf_counter()
    job.executed_notebook.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        try:
            papermill.execute_notebook(
                str(EXPERIMENT_NOTEBOOK), str(job.executed_notebook), parameters=job.params,
                kernel_name=kernel, progress_bar=progress_bar, cwd=str(PROJECT_ROOT),
                kernel_manager_class=_kernel_manager_logging_to(job.run_dir / KERNEL_LOG),
            )
        except papermill.PapermillExecutionError as exc:
            if exc.ename == "KeyboardInterrupt":
                raise KeyboardInterrupt from None
            detail = f"{exc.ename}: {_ANSI.sub('', exc.evalue)}"
            return Outcome(job.name, "failed", time.perf_counter() - start, detail, job.executed_notebook)
        except Exception as exc:  # the kernel died, could not start, ...
            if attempt == 1 and _no_cell_ran(job.executed_notebook):
                time.sleep(random.uniform(1, 3))
                continue
            detail = f"{type(exc).__name__}: {exc}"
            return Outcome(job.name, "failed", time.perf_counter() - start, detail, job.executed_notebook)
        break
    accuracy = metrics_accuracy(job)
    detail = "" if accuracy is not None else read_result(job.run_dir).problem
    status = "ran" if accuracy is not None else "failed"
    return Outcome(job.name, status, time.perf_counter() - start, detail, job.executed_notebook, accuracy)


def visible_gpus() -> list[str]:
    """GPU ids for --jobs: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists; none on a CPU machine."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return [gpu for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


_worker_slot = 0  # in a worker process: which of the parallel slots it is (its progress bar's row)


def _bind_worker_to_device(slots) -> None:
    """Each worker process takes one slot, and one GPU when there are GPUs, for its lifetime."""
    global _worker_slot
    _worker_slot, device = slots.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device  # the notebooks' kernels inherit it


def _execute_in_worker(job: Job, kernel: str, cell_progress: bool) -> Outcome:
    bar = {"desc": job.name, "leave": False, "position": _worker_slot + 1} if cell_progress else False
    return execute(job, kernel, bar)


def run_jobs(
    jobs: list[Job], *, kernel: str, parallel: int, on_done: Callable[[Outcome], None], cell_progress: bool
) -> list[Outcome]:
    """Run the jobs one after another, or ``parallel`` at once (one GPU each when there are GPUs)."""
    if parallel <= 1:
        outcomes = []
        for job in jobs:
            bar = {"desc": job.name, "leave": False, "position": 1} if cell_progress else False
            outcomes.append(execute(job, kernel, bar))
            on_done(outcomes[-1])
        return outcomes
    gpus = visible_gpus()
    context = multiprocessing.get_context("spawn")
    slots = context.Manager().Queue()
    for slot in range(parallel):
        slots.put((slot, gpus[slot % len(gpus)] if gpus else None))
    outcomes = []
    with ProcessPoolExecutor(parallel, mp_context=context, initializer=_bind_worker_to_device, initargs=(slots,)) as pool:
        futures = {pool.submit(_execute_in_worker, job, kernel, cell_progress): job for job in jobs}
        for future in as_completed(futures):
            outcomes.append(future.result())
            on_done(outcomes[-1])
    return outcomes  # in completion order; run_all.py sorts the closing table


def run_summary(mode: Mode, config_file: Path, kernel: str, seeds: list[int] | None = None) -> Outcome:
    """The summary notebook over the mode's results folder (the runs of ``seeds``; default: every seed found)."""
    import papermill

    start = time.perf_counter()
    executed = resolve_path(mode.results_dir) / "summary.ipynb"
    parameters = {
        "results_dir": mode.results_dir, "graph_dir": mode.graph_dir, "config_file": str(config_file),
        "demo": mode.demo, "fast": mode.fast, "update_readme": not mode.demo, "seeds": seeds,
    }
    try:
        papermill.execute_notebook(
            str(SUMMARY_NOTEBOOK), str(executed), parameters=parameters, kernel_name=kernel,
            progress_bar=False, cwd=str(PROJECT_ROOT),
            kernel_manager_class=_kernel_manager_logging_to(executed.with_suffix(".kernel.log")),
        )
    except papermill.PapermillExecutionError as exc:
        return Outcome("summary", "failed", time.perf_counter() - start, f"{exc.ename}: {_ANSI.sub('', exc.evalue)}", executed)
    return Outcome("summary", "ran", time.perf_counter() - start, "", executed)


def closing_table(outcomes: list[Outcome]) -> str:
    """A plain-text table of what happened to every experiment, with times."""
    lines = [f"{'run':<32} {'status':<8} {'time':>8}  {'test acc':>8}  note"]
    for outcome in outcomes:
        accuracy = "" if outcome.test_accuracy is None else f"{outcome.test_accuracy:.4f}"
        lines.append(
            f"{outcome.name:<32} {outcome.status:<8} {format_duration(outcome.seconds):>8}  {accuracy:>8}  {outcome.detail}"
        )
    return "\n".join(lines)


def metrics_accuracy(job: Job) -> float | None:
    result = read_result(job.run_dir)
    return result.metrics["test"]["accuracy"] if result.status == "done" else None


def export_best(mode: Mode) -> Outcome:
    """The best finished run of the mode's results, exported by ``python -m covid_mobilenet.export`` in a
    process of its own (run_all.py stays free of TensorFlow)."""
    from .predict import PredictError, best_run

    start = time.perf_counter()
    try:
        run = best_run(resolve_path(mode.results_dir), allow_demo=mode.demo)
    except PredictError as exc:
        return Outcome("export", "failed", 0.0, str(exc))
    done = subprocess.run([sys.executable, "-m", "covid_mobilenet.export", str(run)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return Outcome("export", "failed", time.perf_counter() - start, f"{run}: {reason}")
    table = done.stdout[done.stdout.find("| Format"):].strip()
    return Outcome("export", "ran", time.perf_counter() - start, f"best run {run}:\n{table}")
