"""run_all.py --backend slurm: the sweep's pending runs as one Slurm job array, through submitit.

Each array task runs one notebook with ``notebooks.execute``, the function the local backend runs, into the
same results folders (on the cluster's shared filesystem). On preemption or at its time limit Slurm
sends SIGUSR2; submitit then requeues the task, and the notebook resumes from its per-epoch backup.

Beside the runs, ``<results_dir>/slurm/`` holds submitit's files (the pickled task, its result) and
each task's Slurm log, ``<array id>_<task>/<array id>_<task>_0_log.out`` and ``.err``, and
``submitted.json``: which task runs which run, so that a rerun never submits a run that is still queued.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from ..common.files import write_atomic
from ..common.paths import PROJECT_ROOT
from .notebooks import execute, kill_kernels
from .outcomes import Outcome
from .plan import Job

SLURM_FOLDER = "slurm"
SUBMITTED_FILE = "submitted.json"
# sacct's states of a task that will not run again (a requeued task shows REQUEUED, then PENDING).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


class SlurmError(RuntimeError):
    """Slurm cannot take the sweep (no sbatch, a rejected submission); the message says what to do."""


@dataclass(frozen=True)
class SlurmOptions:
    """What every task of the array asks Slurm for (run_all.py's --partition, --account, ...)."""

    partition: str | None = None
    account: str | None = None
    time_min: int = 120
    gpus: int = 1
    cpus: int = 8
    mem_gb: int = 32
    max_at_once: int | None = None  # tasks running at once (the array's %N); default: all
    setup: tuple[str, ...] = ()  # shell lines before the task starts, e.g. "module load cuda"
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: time to requeue


class NotebookTask:
    """One array task: one run's notebook. When Slurm preempts the task or its time runs out, submitit calls
    ``checkpoint`` and requeues the same call; the notebook then resumes from its per-epoch backup."""

    def __call__(self, job: Job, kernel: str) -> Outcome:
        signal.signal(signal.SIGTERM, _stop)
        return execute(job, kernel)

    def checkpoint(self, job: Job, kernel: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, job, kernel)


def _stop(signum, frame) -> None:
    """SIGTERM: Slurm ends the task (scancel, the time limit, preemption). submitit would let the task go on
    until Slurm's SIGKILL, seconds later, and the kernel, in a session of its own, could survive that
    (proctrack/linuxproc loses a process whose parent died): stop both now. The last finished epoch's
    backup is on disk; a rerun resumes from it."""
    print(f"{signal.Signals(signum).name} from Slurm: stopping the notebook's kernel and this task", file=sys.stderr, flush=True)
    kill_kernels()
    os._exit(128 + signum)


def slurm_folder(results_dir: Path) -> Path:
    return results_dir / SLURM_FOLDER


def private_folder(folder: Path) -> Path:
    """``folder``, created or narrowed to its owner alone (0700): the pickled tasks inside are code a task runs, so
    nobody else may write them (nor read the logs)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def _executor(results_dir: Path, options: SlurmOptions, mode_name: str, *, dry_run: bool = False):
    import submitit

    class DryRunExecutor(submitit.SlurmExecutor):
        """submitit refuses to start where srun is missing; the script it would write needs no Slurm."""

        @classmethod
        def affinity(cls) -> int:
            return 1

    executor_class = DryRunExecutor if dry_run else submitit.SlurmExecutor
    executor = executor_class(folder=slurm_folder(results_dir) / "%j", max_num_timeout=3)
    executor.update_parameters(
        job_name=f"covid-mobilenet-{mode_name}",  # covid-mobilenet-real or -demo in squeue
        time=options.time_min,
        cpus_per_task=options.cpus,
        mem=f"{options.mem_gb}G",
        signal_delay_s=options.signal_delay_s,
        # The task process runs where run_all.py lives, so that it imports this package.
        additional_parameters={"chdir": str(PROJECT_ROOT)},
        **({"partition": options.partition} if options.partition else {}),
        **({"account": options.account} if options.account else {}),
        **({"gpus_per_node": options.gpus} if options.gpus else {}),
        **({"array_parallelism": options.max_at_once} if options.max_at_once else {}),
        **({"setup": list(options.setup)} if options.setup else {}),
    )
    return executor


def batch_script(jobs: list[Job], results_dir: Path, options: SlurmOptions, mode_name: str) -> str:
    """The sbatch script that ``submit`` hands to Slurm for these jobs, word for word (submitit writes it)."""
    executor = _executor(results_dir, options, mode_name, dry_run=True)
    if len(jobs) > 1:  # what submitit's map_array does for an array
        executor.parameters["map_count"] = len(jobs)
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def check_slurm_available() -> None:
    missing = [command for command in ("sbatch", "sacct", "squeue", "scancel") if shutil.which(command) is None]
    if missing:
        raise SlurmError(
            f"--backend slurm: {', '.join(missing)} not found on this machine. Run run_all.py on the cluster's "
            "login node (where sbatch works), or use the default local backend; `--dry-run` shows the batch "
            "script without Slurm. For a test cluster on this machine: sudo scripts/local_slurm.sh install && "
            "sudo scripts/local_slurm.sh start")


def submit(jobs: list[Job], results_dir: Path, options: SlurmOptions, kernel: str, mode_name: str) -> list:
    """Submit the jobs as one array (a single job when there is one); returns submitit's jobs, in order."""
    import submitit

    check_slurm_available()
    private_folder(slurm_folder(results_dir))
    executor = _executor(results_dir, options, mode_name)
    try:
        tasks = executor.map_array(NotebookTask(), jobs, [kernel] * len(jobs))
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        raise SlurmError(f"sbatch refused the array: {exc}".strip()) from None
    _record_submission(results_dir, jobs, tasks)
    return tasks


def array_id(tasks: list) -> str:
    return tasks[0].job_id.split("_")[0]


def _record_submission(results_dir: Path, jobs: list[Job], tasks: list) -> None:
    path = slurm_folder(results_dir) / SUBMITTED_FILE
    record = _read_submitted(results_dir)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for job, task in zip(jobs, tasks):
        record[job.name] = {"job_id": task.job_id, "log": str(task.paths.stdout), "submitted": now}
    write_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _read_submitted(results_dir: Path) -> dict:
    try:
        return json.loads((slurm_folder(results_dir) / SUBMITTED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def still_queued(jobs: list[Job], results_dir: Path) -> dict[str, str]:
    """{run name: its Slurm job id} for the jobs whose task of an earlier submission is still pending or
    running (squeue knows it), so that a rerun or a local sweep does not run them a second time."""
    record = _read_submitted(results_dir)
    ids = {job.name: record[job.name]["job_id"] for job in jobs if job.name in record}
    if not ids or shutil.which("squeue") is None:
        return {}
    try:  # all of this user's tasks: squeue -j fails as a whole when one id is too old to know
        listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-u", getpass.getuser()],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    alive = set(listed.stdout.split())
    return {name: job_id for name, job_id in ids.items() if job_id in alive}


def wait(tasks: list, jobs: list[Job], on_done: Callable[[Outcome], None],
         on_poll: Callable[[dict[str, int]], None] = lambda counts: None, poll_s: float = 30) -> list[Outcome]:
    """Poll sacct for the array's states until every task is final; each finished task becomes an Outcome
    as it finishes. KeyboardInterrupt goes to the caller; the tasks keep running."""
    pending = dict(zip((task.job_id for task in tasks), zip(tasks, jobs)))
    outcomes = []
    while pending:
        tasks[0].watcher.update()  # one sacct call for the whole array
        states = {job_id: _state(task) for job_id, (task, _) in pending.items()}
        for job_id, state in states.items():
            task, job = pending[job_id]
            if state in FINAL_STATES or (state == "UNKNOWN" and task.paths.result_pickle.exists()):
                del pending[job_id]
                outcomes.append(task_outcome(task, job, state))
                on_done(outcomes[-1])
        on_poll(dict(Counter(states[job_id] for job_id in pending)))
        if pending:
            time.sleep(poll_s)
    return outcomes


def _state(task) -> str:
    return task.watcher.get_state(task.job_id, mode="cache").split(" ")[0]  # "CANCELLED by 0" -> CANCELLED


def task_outcome(task, job: Job, state: str) -> Outcome:
    """What a finished task did: the notebook's own Outcome when it returned one, else Slurm's state,
    with the task's Slurm log named."""
    log = f"Slurm log {task.paths.stdout}"
    notebook = job.executed_notebook if job.executed_notebook.exists() else None
    if task.paths.result_pickle.exists():
        try:
            outcome = task.result()
        except Exception as exc:  # the task raised: submitit keeps the traceback between dashed lines
            trace = str(exc).split("-" * 22)
            lines = (trace[1] if len(trace) > 2 else str(exc)).strip().splitlines() or [type(exc).__name__]
            return Outcome(job.name, "failed", 0.0, f"Slurm {state}: {lines[-1]}; {log}", notebook)
        if outcome.status == "failed":
            outcome.detail = f"{outcome.detail}; {log}"
        return outcome
    return Outcome(job.name, "failed", 0.0, f"Slurm {state}; {log}", notebook)
