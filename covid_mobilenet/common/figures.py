"""Measured figures quoted in the README and the docs, read from the file that measured them, never retyped.

Every figure comes from ``results/bench.json``: the benchmark's own (``python -m covid_mobilenet.benchmark``) and the
first demo's time, which ``run_all.py --demo`` writes to ``results/demo/timing.json`` and
``python -m covid_mobilenet.benchmark --demo-timing`` records there. A Markdown file quotes one as

    <!-- figure: demo_seconds -->433 s<!-- /figure -->

(the comment is invisible on GitHub). ``refresh`` rewrites every quote from the file (the benchmark does, each time
it writes it); ``disagreements`` names each quote that differs from its source, which a test fails on; ``table`` is
the one table of every figure, with what measured it, kept in ``docs/performance.md`` between its markers.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .files import write_atomic
from .paths import DOCS_DIR, PROJECT_ROOT, README_FILE

QUOTE = re.compile(r"<!-- figure: (?P<name>[a-z0-9_]+) -->(?P<value>.*?)<!-- /figure -->")
TABLE_MARKERS = ("<!-- figures:start -->", "<!-- figures:end -->")
TABLE_PAGE = DOCS_DIR / "performance.md"


@dataclass(frozen=True)
class Figure:
    path: tuple[str, ...]  # where it is in bench.json
    render: Callable[[Any], str]
    meaning: str
    measured_by: str = "`python -m covid_mobilenet.benchmark --full-size`"


def _seconds(value) -> str:
    return f"{value:,.0f} s"


def _minutes(value) -> str:
    return f"{value / 60:.1f} min"


def _ratio(digits: int) -> Callable[[Any], str]:
    return lambda value: f"{value:.{digits}f}"


def _per_second(value) -> str:
    return f"{value:,.1f} images/s"


DEMO_TIMING = "`run_all.py --demo` from a fresh clone, then `python -m covid_mobilenet.benchmark --demo-timing`"
DEMO_FAST_TIMING = DEMO_TIMING.replace("--demo`", "--demo --fast`")
DUPLICATES = "`python -m covid_mobilenet.benchmark --duplicates`"
FULL_SIZE_ALONE = "`python -m covid_mobilenet.benchmark --full-size-only`"

FIGURES: dict[str, Figure] = {
    "bench_commit": Figure(("machine", "git_commit"), lambda value: value[:7], "the code the benchmark measured"),
    "bench_machine": Figure(("machine", "device"), str, "the machine the benchmark ran on"),
    "reference_speed": Figure(("training", "ceiling"), _per_second,
                              "this machine's reference: MobileNet trained end to end at 224 px on batches held in memory "
                              "(machines of one CPU label differ by 2x and more: compare ratios, or scale by this)"),
    "pipeline_speedup": Figure(("pipeline_speedup",), _ratio(1),
                               "the project's tf.data pipeline from its 2nd epoch against Keras' directory loader"),
    "training_vs_ceiling": Figure(("training_vs_ceiling",), _ratio(2),
                                  "training fed by the pipeline against training on batches held in memory (1: never waits)"),
    "fast_sweep_speedup": Figure(("fast_sweep_speedup",), _ratio(2),
                                 "the seven frozen-backbone configurations trained end to end against through the cache"),
    "fast_sweep_end_to_end": Figure(("fast_sweep", "end_to_end_seconds"), _seconds,
                                    "those seven trained end to end, 2 epochs each, 2,000 images at 224 px"),
    "fast_sweep_cached": Figure(("fast_sweep", "cached_seconds"), _seconds,
                                "those seven through the feature cache, computing it included"),
    "int8_latency_ratio": Figure(("int8_latency_ratio",), _ratio(2),
                                 "LiteRT int8 against float32, median single-image latency, 1 thread"),
    "int8_size_share": Figure(("quantization", "int8_vs_float32", "size_ratio"), lambda value: f"{value:.0%}",
                              "the int8 file's size as a share of float32's"),
    "full_size_cold": Figure(("full_size", "cold", "wall_seconds"), _minutes,
                             "seven `--fast` configurations on 21,165 images at 224 px, empty feature cache"),
    "full_size_warm": Figure(("full_size", "warm", "wall_seconds"), _minutes,
                             "the same again with `--force` on the cache it left"),
    "full_size_backbone": Figure(("full_size", "cold", "backbone_seconds"), _seconds,
                                 "of the cold sweep: the backbone's pass over every image"),
    "full_size_heads": Figure(("full_size", "cold", "head_training_seconds"), _seconds,
                              "of the cold sweep: the seven heads' training"),
    "full_size_peak": Figure(("full_size", "peak_rss_gib"), lambda value: f"{value:.2f} GiB",
                             "the largest notebook kernel's peak memory in those sweeps"),
    "full_size_commit": Figure(("full_size", "machine", "git_commit"), lambda value: value[:7],
                               "the code the full-size sweep measured, when measured apart", FULL_SIZE_ALONE),
    "full_size_reference_speed": Figure(("full_size", "reference_speed"), _per_second,
                                        "the benchmark's reference speed on the machine that ran the full-size sweep, "
                                        "when measured apart", FULL_SIZE_ALONE),
    "duplicates_recall": Figure(("duplicates", "recall_all"), lambda value: f"{value:.0%}",
                                "near-duplicate search: known copies found (five transformations of generated films)",
                                DUPLICATES),
    "duplicates_copies": Figure(("duplicates", "copies"), lambda value: f"{value:,}", "those known copies", DUPLICATES),
    "duplicates_false_matches": Figure(("duplicates", "false_matches"), lambda value: f"{value:,}",
                                       "false matches among pairs of distinct films", DUPLICATES),
    "duplicates_pairs": Figure(("duplicates", "distinct_pairs"), lambda value: f"{value:,}", "those pairs", DUPLICATES),
    "duplicates_full_found": Figure(("duplicates", "full_size", "found"), lambda value: f"{value:,}",
                                    "listed copies found in the 21,165-image set", DUPLICATES),
    "duplicates_full_planted": Figure(("duplicates", "full_size", "planted"), lambda value: f"{value:,}",
                                      "copies listed in that set", DUPLICATES),
    "duplicates_full_false": Figure(("duplicates", "full_size", "false_match_groups"), lambda value: f"{value:,}",
                                    "groups of distinct films merged in that set", DUPLICATES),
    "duplicates_first": Figure(("duplicates", "full_size", "first_seconds"), _seconds,
                               "fingerprinting and grouping the 21,165 images the first time", DUPLICATES),
    "duplicates_cached": Figure(("duplicates", "full_size", "cached_seconds"), lambda value: f"{value:.1f} s",
                                "the same again, fingerprints and confirmed pairs cached", DUPLICATES),
    "demo_seconds": Figure(("demo", "total_seconds"), _seconds, "the first `--demo`, from a fresh clone", DEMO_TIMING),
    "demo_backbone": Figure(("demo", "phases", "demo backbone"), _seconds,
                            "of it: pretraining the demo's backbone (once; later sweeps reuse it)", DEMO_TIMING),
    "demo_runs": Figure(("demo", "runs_seconds"), _seconds, "of it: the seven runs, two at a time", DEMO_TIMING),
    "demo_commit": Figure(("demo", "git_commit"), lambda value: value[:7], "the code the demo's time measured", DEMO_TIMING),
    "demo_reference_speed": Figure(("demo", "reference_speed"), _per_second,
                                   "the benchmark's reference speed on the machine that ran the demo", DEMO_TIMING),
    "demo_fast_seconds": Figure(("demo_fast", "total_seconds"), _seconds,
                                "`--demo --fast`, from a fresh clone (pretraining its backbone too)", DEMO_FAST_TIMING),
    "demo_fast_runs": Figure(("demo_fast", "runs_seconds"), _seconds, "of it: the seven heads' runs", DEMO_FAST_TIMING),
}


class FigureError(ValueError):
    """A quote names no known figure, or its figure was never measured; the message names the file and line."""


def value(name: str, bench: dict) -> str:
    """The figure ``name`` as quoted, from bench.json's contents."""
    if name not in FIGURES:
        raise FigureError(f"unknown figure {name!r}; the figures are {', '.join(sorted(FIGURES))}")
    found: Any = bench
    for key in FIGURES[name].path:
        if not isinstance(found, dict) or key not in found:
            raise FigureError(f"figure {name!r} is not in bench.json ({'.'.join(FIGURES[name].path)}): measure it with "
                              f"{FIGURES[name].measured_by}")
        found = found[key]
    return FIGURES[name].render(found)


def quoting_files(root: Path = PROJECT_ROOT) -> list[Path]:
    """Every Markdown file of the project that may quote a figure: the README, CONTRIBUTING.md, the docs."""
    return [path for path in [root / README_FILE.name, root / "CONTRIBUTING.md", *sorted((root / DOCS_DIR.name).glob("*.md"))]
            if path.is_file()]


def disagreements(path: str | os.PathLike, bench: dict) -> list[str]:
    """Each quote of ``path`` that is not its figure's value, as ``file:line: ...``; empty when all agree."""
    path = Path(path)
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for quote in QUOTE.finditer(line):
            try:
                expected = value(quote["name"], bench)
            except FigureError as exc:
                found.append(f"{path}:{number}: {exc}")
                continue
            if quote["value"] != expected:
                found.append(f"{path}:{number}: {quote['name']} is quoted as {quote['value']!r}, "
                             f"but bench.json gives {expected!r}")
    return found


def refresh(path: str | os.PathLike, bench: dict) -> bool:
    """Every quote of ``path`` rewritten from ``bench`` (a figure not measured keeps its quote); True when it changed."""
    path = Path(path)
    text = path.read_text()

    def current(quote: re.Match) -> str:
        try:
            return f"<!-- figure: {quote['name']} -->{value(quote['name'], bench)}<!-- /figure -->"
        except FigureError:
            return quote[0]

    updated = QUOTE.sub(current, text)
    start, end = TABLE_MARKERS
    if start in updated and end in updated:
        updated = updated[: updated.index(start) + len(start)] + "\n" + table(bench) + "\n" + updated[updated.index(end):]
    if updated == text:
        return False
    write_atomic(path, updated)
    return True


def refresh_all(bench: dict, root: Path = PROJECT_ROOT) -> list[Path]:
    """``refresh`` on every quoting file; the files that changed."""
    return [path for path in quoting_files(root) if refresh(path, bench)]


def table(bench: dict) -> str:
    """Every figure with its value (or "not measured"), what it is, and the command that measures it."""
    rows = ["| Figure | Value | What it is | Measured by |", "| :-- | --: | :-- | :-- |"]
    for name, figure in FIGURES.items():
        try:
            shown = value(name, bench)
        except FigureError:
            shown = "not measured"
        rows.append(f"| `{name}` | {shown} | {figure.meaning} | {figure.measured_by} |")
    return "\n".join(rows)
