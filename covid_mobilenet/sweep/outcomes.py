"""What happened to each run of a sweep, and the closing table that says it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..analysis.results import read_result
from ..analysis.text import format_duration
from ..common.files import write_json
from ..common.revision import git_commit
from ..common.paths import resolve_path
from .plan import Job, Mode

TIMING_FILE = "timing.json"  # in the sweep's results folder: where its time went (the demo's is quoted from it)


@dataclass
class Outcome:
    name: str
    status: str  # "ran", "skipped", "failed"
    seconds: float = 0.0
    detail: str = ""
    executed_notebook: Path | None = None
    test_accuracy: float | None = None


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


def write_timing(mode: Mode, total: float, phases: dict[str, float], runs_seconds: float | None, outcomes: list[Outcome],
                 configurations: int, backbone_pretrained: bool) -> Path:
    """The sweep's own timing, ``<results>/timing.json``: the total, each phase, how many runs it ran of how many,
    and whether it pretrained the demo backbone (``benchmark --demo-timing`` records a first demo's from it)."""
    path = resolve_path(mode.results_dir) / TIMING_FILE
    write_json(path, {
        "total_seconds": total, "phases": phases, "runs_seconds": runs_seconds,
        "runs": sum(outcome.status != "skipped" for outcome in outcomes), "configurations": configurations,
        "demo": mode.demo, "fast": mode.fast, "backbone_pretrained": backbone_pretrained,
        "git_commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
    })
    return path
