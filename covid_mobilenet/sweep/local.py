"""The local backend: a sweep's runs one after another, or several at once in a process pool, one GPU each
when there are GPUs (``run_all.py --jobs``)."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Callable

from .notebooks import execute
from .outcomes import Outcome
from .plan import Job


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
    jobs: list[Job], *, kernel: str, parallel: int, on_done: Callable[[Outcome], None], cell_progress: bool,
    beside_last: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Run the jobs one after another, or ``parallel`` at once (one GPU each when there are GPUs).

    ``beside_last``: work for the slot the last runs leave free (the data set's audit), started once a run has
    finished and fewer runs are left than slots, and waited for before returning; never with one slot."""
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
    with ProcessPoolExecutor(parallel, mp_context=context, initializer=_bind_worker_to_device, initargs=(slots,)) as pool, \
            ThreadPoolExecutor(1) as beside:
        futures = {pool.submit(_execute_in_worker, job, kernel, cell_progress): job for job in jobs}
        side = None
        for future in as_completed(futures):
            outcomes.append(future.result())
            on_done(outcomes[-1])
            if beside_last is not None and side is None and 0 < len(jobs) - len(outcomes) < parallel:
                side = beside.submit(beside_last)
        if side is not None:
            side.result()
    return outcomes  # in completion order; run_all.py sorts the closing table
