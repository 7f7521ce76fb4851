"""Running notebooks with papermill, each in a kernel of its own: one run's experiment notebook (the same
function serves the local pool and a Slurm task), the summary notebook, and the export of the best run.

A failure becomes an Outcome, never an exception that stops the sweep.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from pathlib import Path

from ..analysis.audit_summary import current_audit
from ..analysis.results import RunNotFound, best_run, read_result
from ..common.paths import EXPERIMENT_NOTEBOOK, PROJECT_ROOT, SUMMARY_NOTEBOOK, resolve_path
from ..common.run_layout import KERNEL_LOG, METRICS_FILE
from .outcomes import Outcome, metrics_accuracy
from .plan import Job, Mode

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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


def export_best(mode: Mode) -> Outcome:
    """The best finished run of the mode's results, exported by ``python -m covid_mobilenet.export`` in a
    process of its own (run_all.py stays free of TensorFlow)."""
    start = time.perf_counter()
    try:
        run = best_run(resolve_path(mode.results_dir), allow_demo=mode.demo)
    except RunNotFound as exc:
        return Outcome("export", "failed", 0.0, str(exc))
    done = subprocess.run([sys.executable, "-m", "covid_mobilenet.export", str(run)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return Outcome("export", "failed", time.perf_counter() - start, f"{run}: {reason}")
    table = done.stdout[done.stdout.find("| Format"):].strip()
    return Outcome("export", "ran", time.perf_counter() - start, f"best run {run}:\n{table}")


def audit_data(mode: Mode, jobs: list) -> Outcome:
    """The data set's audit (``python -m covid_mobilenet.audit``, in a process of its own) from the first finished run
    of the sweep: near-duplicates and the source probe, into ``<results_dir>/audit-<data hash>.json``."""
    start = time.perf_counter()
    finished = [job.run_dir for job in jobs if (job.run_dir / METRICS_FILE).is_file()]
    if not finished:
        return Outcome("audit", "skipped", 0.0, "no finished run to take the data and backbone from")
    audited = current_audit(finished[0], resolve_path(mode.results_dir))
    if audited is not None:
        return Outcome("audit", "skipped", time.perf_counter() - start,
                       f"{audited.name} holds the audit of the same images, split and backbone")
    done = subprocess.run([sys.executable, "-m", "covid_mobilenet.audit", str(finished[0]),
                           "--results-dir", str(resolve_path(mode.results_dir))], cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return Outcome("audit", "failed", time.perf_counter() - start, f"{finished[0]}: {reason}")
    return Outcome("audit", "ran", time.perf_counter() - start, done.stdout.strip().splitlines()[0])
