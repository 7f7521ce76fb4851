"""What happened to each run of a sweep, and the closing table that says it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..analysis.results import read_result
from ..analysis.text import format_duration
from .plan import Job


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
