"""The summary in words and Markdown: the comparison table, how to read it, what each setting does, the
study's claims judged, what data and device the runs used, and the README's sections. From finished runs'
records (``metrics.json``) and the summary's tables; nothing here computes a statistic."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.layout import REAL_CLASS_COUNTS
from .results import ExperimentResult


def format_duration(seconds: float | None) -> str:
    """A duration as h:mm:ss (2393.6 -> 0:39:54)."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


STUDY_COLUMNS = ["Study test accuracy", "Study table accuracy", "Study training time"]


def markdown_table(table: pd.DataFrame, *, with_study: bool = True, baseline: str | None = None) -> str:
    """The table for people: accuracy with its 95% interval, the difference from the baseline with
    its interval and Holm-adjusted p-value (* significant at 0.05), durations, and the status of any
    row without results.

    ``with_study=False`` leaves out the study's columns: for the frozen-backbone experiment, which
    the study never ran.
    """
    versus = f"vs {baseline} (points)" if baseline else "vs baseline (points)"
    columns = ["Model", "Hidden Layer", "Dense Count", "Learning Rate", "Seeds", "Test accuracy (95% CI)", versus,
               "Holm p", "Macro F1", "COVID sensitivity", "Training time", "Epochs"] + (STUDY_COLUMNS if with_study else [])
    lines = ["| " + " | ".join(columns) + " |", "| :-- | " + " | ".join([":-:"] * (len(columns) - 1)) + " |"]
    for row in table.to_dict("records"):
        cells = []
        for column in columns:
            value = row.get(column)
            if column in ("Study test accuracy", "Study table accuracy", "COVID sensitivity"):
                cell = percent(value)
            elif column == "Test accuracy (95% CI)":
                cell = percent(row["Test accuracy"]) + (
                    "" if missing(row["Accuracy CI low"]) else f" [{100 * row['Accuracy CI low']:.1f}, {100 * row['Accuracy CI high']:.1f}]")
                cell += "" if missing(row["Accuracy SD"]) else f" ±{100 * row['Accuracy SD']:.1f} SD"
            elif column == versus:
                cell = "–" if missing(row["Difference"]) else (
                    f"{100 * row['Difference']:+.1f} [{100 * row['Difference CI low']:+.1f}, {100 * row['Difference CI high']:+.1f}]"
                    + ("\\*" if row["Significant"] else ""))
            elif column == "Holm p":
                cell = "–" if missing(value) else f"{value:.3g}"
            elif column == "Macro F1":
                cell = "–" if missing(value) else f"{value:.3f}"
            elif column == "Learning Rate":
                cell = "–" if missing(value) else f"{value:.0e}".replace("e-0", "e-")
            elif column == "Model":
                cell = f"**{value}**" + ("" if row["Status"] == "done" else f" ({row['Status']})")
            else:
                cell = "–" if missing(value) else str(int(value) if isinstance(value, float) and value.is_integer() else value)
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


HOW_TO_READ = (
    "How to read it: the interval after each accuracy is its 95% confidence interval: over the seeds (a t-interval) "
    "when there are two or more, which covers both the training's randomness and the test sample; with one seed, the "
    "Wilson interval of that run, which covers the test sample only. The difference from the baseline is measured on "
    "the same test images, seed by seed (paired), with its 95% interval; its p-value is McNemar's exact test on the "
    "images the two models disagree on (the largest over seeds), Holm-corrected across the comparisons with the "
    "baseline; * marks a difference significant at 0.05: that p-value below 0.05 and an interval that excludes zero. "
    "Intervals are clipped to the possible range; with two seeds a t-interval (one degree of freedom) is very wide, so "
    "three to five seeds tell far more. A ranking of rows whose intervals overlap and whose "
    "difference is not marked says nothing about which configuration is better."
)


def missing(value) -> bool:
    """Whether a table cell holds no number (None or NaN)."""
    return value is None or (isinstance(value, float) and not np.isfinite(value))


def percent(value) -> str:
    """A share as a percentage with two decimals; '–' when there is none."""
    return "–" if missing(value) else f"{100 * value:.2f}%"


EFFECT_COLUMNS = {"Dense Count": "dense units", "Hidden Layer": "hidden layers", "Learning Rate": "learning rate"}


def effect_lines(table: pd.DataFrame) -> list[str]:
    """One line per setting the configurations vary: test accuracy as that setting changes while the
    others stay at the first configuration's values (the study's design: one change at a time)."""
    done = table[table["Status"] == "done"]
    if done.empty:
        return []
    base = done.iloc[0]
    lines = []
    for column, words in EFFECT_COLUMNS.items():
        others = [c for c in EFFECT_COLUMNS if c != column]
        rows = done[(done[others] == base[others]).all(axis=1)].sort_values(column)
        if rows[column].nunique() < 2:
            continue
        steps = ", ".join(
            f"{_setting(column, row[column])}: {percent(row['Test accuracy'])} ({row['Model']})" for _, row in rows.iterrows()
        )
        held = ", ".join(f"{EFFECT_COLUMNS[c]} {_setting(c, base[c])}" for c in others)
        lines.append(f"- {words} ({held}): {steps}")
    return lines


def _setting(column: str, value) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if column == "Learning Rate" else str(int(value))


STUDY_PAGE = "docs/original-study.md"  # the study's reported table, beside what it did and what this project changed


def readme_section(table: pd.DataFrame, collected: dict[str, list[ExperimentResult]], body: list[str], graph_path: str,
                   *, fast: bool = False) -> str:
    """The README's results section: measured rows when real runs exist, else how to fill it (and where the study's
    reported table is; the frozen-backbone experiment the study never ran)."""
    done = [run for runs in collected.values() for run in runs if run.status == "done"]
    if not done and fast:
        return "\n".join([
            "No frozen-backbone run on the real data has been recorded in this repository yet.",
            "`python run_all.py --fast` on the real data fills this section from `results/fast/<experiment>/seed-<seed>/metrics.json`.",
        ])
    if not done:
        return "\n".join([
            "No run on the real data has been recorded in this repository yet. What the original study reported is in",
            f"[{STUDY_PAGE}]({STUDY_PAGE}), not a result of this project. `python run_all.py` on the real data",
            "fills this section from the `metrics.json` of each run.",
        ])
    configurations = sum(any(run.status == "done" for run in runs) for runs in collected.values())
    if fast:
        cached = next((r.metrics.get("features") for r in done if r.metrics.get("features")), None) or {}
        intro = [
            f"{configurations} of {len(collected)} configurations run with the backbone frozen",
            "(`run_all.py --fast`): the backbone's features were computed once"
            + (f" ({format_duration(cached.get('seconds'))})" if cached.get("seconds") else "")
            + " and each configuration trained only its head. This is not the study's fine-tuning, so its numbers",
            "are not compared with the study's. Every number comes from `results/fast/<experiment>/seed-<seed>/metrics.json`.",
        ]
    else:
        intro = [
            f"{configurations} of {len(collected)} configurations run; every number below comes from",
            "`results/<experiment>/seed-<seed>/metrics.json` and `predictions.csv` (test split, final model). "
            "The study's columns are what it reported.",
        ]
    return "\n".join([*intro, "", *body, "", f"![Test accuracy with 95% intervals and training time per configuration]({graph_path})"])


def dataset_lines(collected: dict[str, list[ExperimentResult]]) -> list[str]:
    """What the runs ran on: the folder, its images per class, and the split's hash (and whether it is the full release)."""
    seen = {}
    for runs in collected.values():
        for run in runs:
            if run.status == "done":
                dataset = run.metrics.get("dataset", {})
                seen.setdefault((dataset.get("root"), dataset.get("split_sha256")), dataset)
    lines = []
    for (root, split_hash), dataset in seen.items():
        per_class = {name: sum(counts.get(name, 0) for counts in dataset.get("counts", {}).values())
                     for name in dataset.get("class_names", [])}
        test = sum(dataset.get("counts", {}).get("test", {}).values())
        if dataset.get("demo"):
            which = "the synthetic demo set"
        elif per_class == REAL_CLASS_COUNTS:
            which = "the full Kaggle release (21,165 images)"
        else:
            which = (f"not the full Kaggle release ({sum(REAL_CLASS_COUNTS.values()):,} images): "
                     "a subset or another copy of the data")
        lines.append(
            f"Data: `{root}`, {dataset.get('total_images', sum(per_class.values())):,} images "
            f"({', '.join(f'{name} {count:,}' for name, count in per_class.items())}), {which}; "
            f"split `{str(split_hash)[:12]}`, {test:,} test images."
        )
    devices = sorted({str(r.metrics.get("environment", {}).get("device")) for runs in collected.values() for r in runs if r.status == "done"})
    commits = sorted({str(r.metrics.get("environment", {}).get("git_commit")) for runs in collected.values() for r in runs if r.status == "done"})
    if devices:
        lines.append(f"Device: {', '.join(devices)}. Code: {', '.join(commits)}.")
    return lines


VERDICT_WORDS = {"supported": "supported", "contradicted": "contradicted", "not shown": "not shown (the runs cannot tell)",
                 "not tested": "not tested (a configuration it rests on has no comparable runs)"}


def claim_lines(verdicts: list[dict], table: pd.DataFrame | None, baseline: str,
                on: str = "the same test images") -> list[str]:
    """One line per claim of the study: our verdict and the comparisons it rests on (with ``table``, the study's
    reported accuracies beside them)."""
    if not verdicts:
        return []
    study = {} if table is None else dict(zip(table["Model"], table["Study test accuracy"]))
    lines = [f"The study's claims, judged by paired comparisons with {baseline} on {on}:", ""]
    for verdict in verdicts:
        evidence = "; ".join(
            f"{c.name} minus {baseline}: {100 * c.difference:+.1f} points [{100 * c.low:+.1f}, {100 * c.high:+.1f}], "
            f"Holm p = {c.holm_p_value:.3g}, {len(c.seeds)} seed{'s' if len(c.seeds) != 1 else ''}"
            + (f" (the study reported {percent(study.get(c.name))} against {percent(study.get(baseline))})" if study else "")
            for c in verdict["evidence"] if c.difference is not None
        ) or "; ".join(f"{c.name}: {c.problem}" for c in verdict["evidence"] if c.problem) or "no runs to compare"
        lines.append(f"- *{verdict['claim']}* **{VERDICT_WORDS[verdict['verdict']].capitalize()}**: {evidence}.")
    return lines


def reference_table(table: pd.DataFrame) -> str:
    """The study's reported numbers alone, converted to honest units (``docs/original-study.md`` shows them)."""
    lines = [
        "| Model | Hidden Layer | Dense Count | Learning Rate | Study test accuracy | Study table accuracy | Study training time |",
        "| :-- | :-: | :-: | :-: | :-: | :-: | :-: |",
    ]
    for row in table.to_dict("records"):
        lines.append(
            f"| **{row['Model']}** | {row['Hidden Layer']} | {row['Dense Count']} | "
            f"{row['Learning Rate']:.0e} | {percent(row['Study test accuracy'])} | "
            f"{percent(row['Study table accuracy'])} | {row['Study training time'] or '–'} |".replace("e-0", "e-")
        )
    return "\n".join(lines)


def regions_section(region_lines: list[str], graph: Path | None, readme: str | os.PathLike) -> str:
    """The README's section on the training-time protocol: the matrix from real runs, or how to fill it."""
    if not region_lines:
        return ("No run of the training-time protocol on the real data has been recorded in this repository yet: "
                "`python run_all.py --regions` trains the baseline on each region and fills this section.")
    link = os.path.relpath(graph, Path(readme).parent)
    return "\n".join([*region_lines, f"![Accuracy of the baseline trained on each region, tested on each region]({link})"])
