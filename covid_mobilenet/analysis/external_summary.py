"""What survives outside the split: every run's evaluation on another collection (``run_all.py --external``), in the
summary and the README.

Reads ``<run>/external/<name>/metrics.json`` and ``predictions.csv`` (``product/external.py``). Per collection, one
row per run (configuration and seed): the internal test accuracy and the external accuracy, each with its Wilson
interval, external minus internal with Newcombe's interval (two independent proportions: other images), the
calibration error with the run's own temperature on both, the share flagged unfamiliar on both, the images that copy
the run's own data set and the accuracy without them, and, where the collection has lung masks, the accuracy with
the lungs blacked out beside the majority rate. The study's claims are judged again on the external images, as
``comparison.py`` judges them on the test split (McNemar per seed on the same images, Holm across comparisons).
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..common.files import save_figure, write_csv
from ..common.run_layout import EXTERNAL_FOLDER, METRICS_FILE, PREDICTIONS_FILE, external_dir
from . import comparison
from .text import claim_lines, percent
from .uncertainty import newcombe_difference, wilson_interval

EXTERNAL_START = "<!-- external:start -->"
EXTERNAL_END = "<!-- external:end -->"


def external_names(collected: dict) -> list[str]:
    """The collections any finished run was evaluated on."""
    return sorted({record.parent.name for runs in collected.values() for run in runs if run.status == "done"
                   for record in (run.folder / EXTERNAL_FOLDER).glob(f"*/{METRICS_FILE}")})


def read_external(run, name: str) -> dict | None:
    record_file = external_dir(run.folder, name) / METRICS_FILE
    try:
        return json.loads(record_file.read_text())
    except (OSError, ValueError):
        return None


def external_correctness(run, name: str) -> pd.Series | None:
    """Whether each external image of a class the run knows was answered right (the argmax, as on the test split),
    indexed by its path; None without the evaluation."""
    folder = external_dir(run.folder, name)
    if not (folder / PREDICTIONS_FILE).is_file() or not (folder / METRICS_FILE).is_file():  # finished: metrics last
        return None
    predictions = folder / PREDICTIONS_FILE
    table = pd.read_csv(predictions)
    table = table[table["true"].isin(run.metrics["dataset"]["class_names"])]
    return pd.Series((table["true"] == table["predicted"]).to_numpy(), index=table["path"].to_numpy())


def _counts(confusion) -> tuple[int, int]:
    matrix = np.asarray(confusion)
    return int(np.trace(matrix)), int(matrix.sum())


def external_table(collected: dict, name: str) -> pd.DataFrame:
    """One row per run evaluated on the collection ``name`` (see the module's docstring)."""
    rows = []
    for configuration, runs in collected.items():
        for run in runs:
            record = read_external(run, name) if run.status == "done" else None
            if record is None or not record["all"].get("images"):
                continue
            every, test = record["all"], run.metrics["test"]
            (internal_right, internal_n), (external_right, external_n) = (
                _counts(test["confusion_matrix"]), _counts(every["confusion_matrix"]))
            internal, external = wilson_interval(internal_right, internal_n), wilson_interval(external_right, external_n)
            difference = newcombe_difference(internal_right, internal_n, external_right, external_n)
            clean = record["without_overlap"] if isinstance(record["without_overlap"], dict) else every
            regions = every.get("shortcuts", {}).get("regions", {})
            rows.append({
                "Model": configuration, "Seed": run.seed,
                "Internal accuracy": internal_right / internal_n, "Internal low": internal["low"],
                "Internal high": internal["high"],
                "External accuracy": every["accuracy"], "External low": external["low"], "External high": external["high"],
                "External images": external_n,
                "Difference": difference["difference"], "Difference low": difference["low"],
                "Difference high": difference["high"],
                "ECE internal": _ece(run.metrics.get("calibration", {}).get("test")),
                "ECE external": _ece(every.get("calibration")),
                "Unfamiliar internal": _internal_unfamiliar(run.metrics),
                "Unfamiliar external": every.get("unfamiliar", {}).get("share"),
                "Overlap images": record["overlap"]["external_images"],
                "External accuracy without overlap": clean.get("accuracy"),
                "No lungs external accuracy": regions.get("no_lungs", {}).get("accuracy"),
                "Majority rate external": every.get("shortcuts", {}).get("majority_rate"),
            })
    return pd.DataFrame(rows)


def _ece(scores: dict | None) -> float | None:
    """The calibrated ECE (after temperature scaling) of a calibration record, or None."""
    return (scores or {}).get("ece", {}).get("after", {}).get("value")


def _internal_unfamiliar(metrics: dict) -> float | None:
    flagged = metrics.get("unfamiliar", {}).get("test_flagged")
    return flagged["images"] / flagged["of"] if flagged and flagged.get("of") else None


def _points(value, low, high) -> str:
    return f"{100 * value:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def _interval(value, low, high) -> str:
    return f"{percent(value)} [{percent(low)}, {percent(high)}]"


def external_lines(table: pd.DataFrame, records: list[dict], verdicts: list[dict], baseline: str, name: str,
                   graph: str | None, heading: str = "###") -> list[str]:
    """The collection's part of the summary: what it is, the table, the claims judged on it, the figure."""
    first = records[0]
    shared = sorted({r["collection"] for r in records})
    overlap = table["Overlap images"]
    lines = [f"{heading} On another collection: `{name}`", "",
             f"{first['read']} of {first['images']} images read from `{shared[0]}`"
             + (f" ({len(first['unknown_classes'])} class(es) the runs do not know left out of every figure: "
                f"{', '.join(sorted(first['unknown_classes']))})" if first["unknown_classes"] else "")
             + f"; {int(overlap.max())} of them copy an image of the runs' own data set (found by the audit's "
               "fingerprints; the accuracy without them is given). Each run's temperature, operating points and guard "
               "were chosen on its internal validation split and are not refitted here.", "",
             "| Model | Seed | Internal test accuracy | External accuracy | External minus internal (points) | "
             "ECE int. / ext. | Unfamiliar int. / ext. | Ext. without overlap | Ext. no lungs (majority) |",
             "| :-- | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: |"]
    for row in table.to_dict("records"):
        bold = "**" if row["Model"] == baseline else ""
        ece = " / ".join("–" if v is None or pd.isna(v) else f"{v:.3f}" for v in (row["ECE internal"], row["ECE external"]))
        unfamiliar = " / ".join(percent(v) for v in (row["Unfamiliar internal"], row["Unfamiliar external"]))
        no_lungs = ("–" if pd.isna(row["No lungs external accuracy"]) else
                    f"{percent(row['No lungs external accuracy'])} ({percent(row['Majority rate external'])})")
        lines.append(
            f"| {bold}{row['Model']}{bold} | {row['Seed']} | "
            f"{_interval(row['Internal accuracy'], row['Internal low'], row['Internal high'])} | "
            f"{_interval(row['External accuracy'], row['External low'], row['External high'])} | "
            f"{_points(row['Difference'], row['Difference low'], row['Difference high'])} | {ece} | {unfamiliar} | "
            f"{percent(row['External accuracy without overlap'])} | {no_lungs} |")
    lines += ["", "Intervals: Wilson for each accuracy, Newcombe's hybrid score for the difference (the two accuracies "
                  "are on different images). ECE after the run's own temperature scaling; unfamiliar: the share the "
                  "run's guard flags, about 5% on its own test split by construction."]
    judged = claim_lines(verdicts, None, baseline, on=f"the same images of `{name}`")
    if judged:
        lines += ["", *judged]
    if graph:
        lines += ["", f"![Internal and external accuracy per configuration]({graph})"]
    return lines


def external_figure(table: pd.DataFrame, title: str, name: str) -> Figure:
    """Internal test accuracy and external accuracy per run, with their intervals."""
    figure = Figure(figsize=(max(6, 0.9 * len(table) + 3), 4.2))
    axes = figure.subplots()
    positions = np.arange(len(table))
    labels = [f"{m}\n(seed {s})" if table["Seed"].nunique() > 1 else m for m, s in zip(table["Model"], table["Seed"])]
    for offset, column, label in ((-0.15, "Internal", "internal test split"), (0.15, "External", f"`{name}`")):
        value = table[f"{column} accuracy"].astype(float) * 100
        errors = np.vstack([value - table[f"{column} low"].astype(float) * 100,
                            table[f"{column} high"].astype(float) * 100 - value])
        axes.errorbar(positions + offset, value, yerr=errors, fmt="o", capsize=3, label=label)
    axes.set_xticks(positions, labels, rotation=30, ha="right")
    axes.set(ylabel="accuracy (%)", ylim=(0, 105), title=f"{title}: inside and outside the split (95% CIs)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def write_external(results_dir: Path, graph_dir: Path, collected: dict, config: dict, baseline: str, title: str,
                   readme: str | os.PathLike) -> tuple[list[str], list[str], dict]:
    """Per collection: ``external-<name>.csv``, its figure and its lines; (summary.md's lines, the README's, paths)."""
    lines, readme_lines, paths = [], [], {}
    for name in external_names(collected):
        table = external_table(collected, name)
        if table.empty:
            continue
        records = [r for runs in collected.values() for run in runs if run.status == "done"
                   for r in [read_external(run, name)] if r is not None]
        paths[f"external_{name}"] = write_csv(Path(results_dir) / f"external-{name}.csv", table)
        graph = save_figure(external_figure(table, title, name), Path(graph_dir) / f"external-{name}.png")
        paths[f"external_{name}_graph"] = graph
        comparisons = comparison.compare_with_baseline(collected, baseline, partial(external_correctness, name=name))
        verdicts = comparison.judge_claims(config.get("claims", []), comparisons)
        for where, folder, heading in ((lines, Path(results_dir), "###"), (readme_lines, Path(readme).parent, "####")):
            where += ["", *external_lines(table, records, verdicts, baseline, name, os.path.relpath(graph, folder),
                                          heading)]
    if lines:
        lines = ["", "## Outside the split: other collections", *lines]
    return lines, readme_lines, paths


def external_section(lines: list[str]) -> str:
    """The README's external section: from real runs, or how to fill it."""
    if not lines:
        return ("No run has been evaluated on another collection of real films in this repository yet: "
                "`python run_all.py --external path/to/collection` evaluates every finished run and fills this section.")
    return "\n".join(lines).strip()
