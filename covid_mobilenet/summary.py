"""The comparison of all experiments: the table, the graph, and the README's results section.

Every number comes from an experiment's ``metrics.json``; the study's reported
numbers come from ``experiments.json``. A missing, failed or unreadable
experiment is a row marked as such, never a crash.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import PROJECT_ROOT
from .files import write_atomic, write_csv
from .report import save_figure
from .runs import METRICS_FILE

CONFIG_FILE = PROJECT_ROOT / "experiments.json"
README_FILE = PROJECT_ROOT / "README.md"
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
FAST_RESULTS_START = "<!-- results-fast:start -->"  # the frozen-backbone experiment's own section
FAST_RESULTS_END = "<!-- results-fast:end -->"
COMPARISON_GRAPH = "The_result_of_MobileNet_fine_tuning.png"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"


class ConfigError(ValueError):
    """experiments.json is missing or malformed; the message names the file."""


def load_config(path: str | os.PathLike = CONFIG_FILE) -> dict:
    """The configurations of the study, with its reported numbers (experiments.json)."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} does not exist.") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"Configuration file {path} is not valid JSON: {exc}.") from None
    experiments = config.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise ConfigError(f"Configuration file {path} needs an 'experiments' object with at least one experiment.")
    for name, settings in experiments.items():
        if not isinstance(settings, dict) or not isinstance(settings.get("reference", {}), dict):
            raise ConfigError(f"Configuration file {path}: experiment {name} must be an object (its 'reference' too).")
    return config


def experiment_parameters(settings: dict) -> dict:
    """An experiment's notebook parameters: its settings without the study's reported numbers."""
    return {name: value for name, value in settings.items() if name != "reference"}


@dataclass
class ExperimentResult:
    name: str
    status: str  # "done", "missing", "failed", "unreadable", "demo data"
    metrics: dict | None = None
    problem: str | None = None


def read_result(results_dir: Path, name: str, *, allow_demo: bool = True) -> ExperimentResult:
    """What ``results_dir/name`` holds: finished metrics, or why there are none."""
    folder = Path(results_dir) / name
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            metrics["test"]["accuracy"]  # the least a finished run has
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return ExperimentResult(name, "unreadable", problem=f"{metrics_file} is unreadable ({type(exc).__name__}: {exc})")
        if not allow_demo and metrics.get("dataset", {}).get("demo"):
            return ExperimentResult(name, "demo data", problem=f"{metrics_file} was computed on the demo data set")
        return ExperimentResult(name, "done", metrics)
    notebook = folder / f"{name}.ipynb"
    if notebook.is_file():
        return ExperimentResult(name, "failed", problem=f"no metrics.json; the executed notebook {notebook} shows where it stopped")
    return ExperimentResult(name, "missing", problem=f"{folder} holds no results")


def collect_results(results_dir: str | os.PathLike, config: dict, *, allow_demo: bool = True) -> list[ExperimentResult]:
    return [read_result(Path(results_dir), name, allow_demo=allow_demo) for name in config["experiments"]]


def format_duration(seconds: float | None) -> str:
    """A duration as h:mm:ss (2393.6 -> 0:39:54)."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def summary_table(results: list[ExperimentResult], config: dict) -> pd.DataFrame:
    """One row per configured experiment: our measured numbers beside the study's reported ones."""
    rows = []
    for result in results:
        settings = config["experiments"][result.name]
        reference = settings.get("reference", {})
        metrics = result.metrics or {}
        params = metrics.get("params", experiment_parameters(settings))
        test = metrics.get("test", {})
        seconds = metrics.get("train_seconds")
        rows.append(
            {
                "Model": result.name,
                "Hidden Layer": params.get("hidden_layers"),
                "Dense Count": params.get("dense_units"),
                "Learning Rate": params.get("learning_rate"),
                "Test accuracy": test.get("accuracy"),
                "Macro F1": test.get("macro_f1"),
                "COVID sensitivity": test.get("per_class", {}).get("COVID", {}).get("sensitivity"),
                "Training time": format_duration(seconds) if seconds is not None else None,
                "Training seconds": seconds,
                "Epochs": metrics.get("epochs_run"),
                "Status": result.status,
                "Study test accuracy": reference.get("test_accuracy"),
                "Study table accuracy": reference.get("table_accuracy"),
                "Study training time": format_duration(reference.get("learning_seconds")) if reference.get("learning_seconds") else None,
                "Study training seconds": reference.get("learning_seconds"),
            }
        )
    return pd.DataFrame(rows)


STUDY_COLUMNS = ["Study test accuracy", "Study table accuracy", "Study training time"]


def markdown_table(table: pd.DataFrame, *, with_study: bool = True) -> str:
    """The table for people: percentages, durations, and the status of any row without results.

    ``with_study=False`` leaves out the study's columns: for the frozen-backbone experiment, which
    the study never ran.
    """
    columns = ["Model", "Hidden Layer", "Dense Count", "Learning Rate", "Test accuracy", "Macro F1",
               "COVID sensitivity", "Training time", "Epochs"] + (STUDY_COLUMNS if with_study else [])
    lines = ["| " + " | ".join(columns) + " |", "| :-- | " + " | ".join([":-:"] * (len(columns) - 1)) + " |"]
    for row in table.to_dict("records"):
        cells = []
        for column in columns:
            value = row[column]
            if column in ("Test accuracy", "Study test accuracy", "Study table accuracy", "COVID sensitivity"):
                cell = _percent(value)
            elif column == "Macro F1":
                cell = "–" if _missing(value) else f"{value:.3f}"
            elif column == "Learning Rate":
                cell = "–" if _missing(value) else f"{value:.0e}".replace("e-0", "e-")
            elif column == "Model":
                cell = f"**{value}**" + ("" if row["Status"] == "done" else f" ({row['Status']})")
            else:
                cell = "–" if _missing(value) else str(int(value) if isinstance(value, float) and value.is_integer() else value)
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and not np.isfinite(value))


def _percent(value) -> str:
    return "–" if _missing(value) else f"{100 * value:.2f}%"


def comparison_figure(table: pd.DataFrame, title: str, *, with_study: bool = True) -> Figure:
    """Test accuracy per configuration (with the study's beside it), and training time."""
    figure = Figure(figsize=(12, 4.5))
    accuracy_axes, time_axes = figure.subplots(1, 2)
    positions = np.arange(len(table))
    width = 0.38
    ours = table["Test accuracy"].astype(float) * 100
    study = table["Study test accuracy"].astype(float) * 100 if with_study else None
    accuracy_axes.bar(positions - width / 2, ours.fillna(0), width, label="this run (test)")
    if with_study:
        accuracy_axes.bar(positions + width / 2, study.fillna(0), width, label="study (reported test)", alpha=0.6)
    for x, value in zip(positions, ours):
        accuracy_axes.text(x - width / 2, (0 if np.isnan(value) else value) + 1, "n/a" if np.isnan(value) else f"{value:.1f}",
                           ha="center", fontsize=8)
    accuracy_axes.set(ylabel="test accuracy (%)", ylim=(0, 105), title=f"{title}: test accuracy")
    minutes_ours = table["Training seconds"].astype(float) / 60
    minutes_study = table["Study training seconds"].astype(float) / 60
    time_axes.bar(positions - width / 2, minutes_ours.fillna(0), width, label="this run")
    if with_study:
        time_axes.bar(positions + width / 2, minutes_study.fillna(0), width, label="study (reported)", alpha=0.6)
    time_axes.set(ylabel="training time (minutes)", title=f"{title}: training time")
    for axes in (accuracy_axes, time_axes):
        axes.set_xticks(positions, table["Model"], rotation=30, ha="right")
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    return figure


def readme_section(table: pd.DataFrame, results: list[ExperimentResult], graph_path: str, *, fast: bool = False) -> str:
    """The README's results section: measured rows when real runs exist, else the study's reference table
    (for the frozen-backbone experiment, which the study never ran: how to fill it)."""
    done = [result for result in results if result.status == "done"]
    if not done and fast:
        return "\n".join([
            "No frozen-backbone run on the real data has been recorded in this repository yet.",
            "`python run_all.py --fast` on the real data fills this section from `results/fast/<experiment>/metrics.json`.",
        ])
    if not done:
        return "\n".join([
            "No run on the real data has been recorded in this repository yet: the table below is what the",
            "original study reported, not a result of this project. `python run_all.py` on the real data",
            "fills this section from the `metrics.json` of each experiment.",
            "",
            reference_table(table),
        ])
    environments = {r.metrics.get("environment", {}).get("device") for r in done}
    commits = {r.metrics.get("environment", {}).get("git_commit") for r in done}
    if fast:
        cached = next((r.metrics.get("features") for r in done if r.metrics.get("features")), None) or {}
        intro = [
            f"{len(done)} of {len(results)} configurations run on the real data set with the backbone frozen",
            "(`run_all.py --fast`): the backbone's features were computed once"
            + (f" ({format_duration(cached.get('seconds'))})" if cached.get("seconds") else "")
            + " and each configuration trained only its head. This is not the study's fine-tuning, so its numbers",
            "are not compared with the study's. Every number comes from `results/fast/<experiment>/metrics.json`.",
        ]
    else:
        intro = [
            f"{len(done)} of {len(results)} configurations run on the real data set; every number below comes from",
            "`results/<experiment>/metrics.json` (test split, final model). The study's columns are what it reported.",
        ]
    return "\n".join([
        *intro,
        f"Device: {', '.join(sorted(str(e) for e in environments))}. Code: {', '.join(sorted(str(c) for c in commits))}.",
        "",
        markdown_table(table, with_study=not fast),
        "",
        f"![Test accuracy and training time per configuration]({graph_path})",
    ])


def reference_table(table: pd.DataFrame) -> str:
    """The study's reported numbers alone, converted to honest units."""
    lines = [
        "| Model | Hidden Layer | Dense Count | Learning Rate | Study test accuracy | Study table accuracy | Study training time |",
        "| :-- | :-: | :-: | :-: | :-: | :-: | :-: |",
    ]
    for row in table.to_dict("records"):
        lines.append(
            f"| **{row['Model']}** | {row['Hidden Layer']} | {row['Dense Count']} | "
            f"{row['Learning Rate']:.0e} | {_percent(row['Study test accuracy'])} | "
            f"{_percent(row['Study table accuracy'])} | {row['Study training time'] or '–'} |".replace("e-0", "e-")
        )
    return "\n".join(lines)


def replace_readme_section(
    readme: str | os.PathLike, section: str, markers: tuple[str, str] = (RESULTS_START, RESULTS_END)
) -> bool:
    """Put ``section`` between the README's results markers; True when the file changed."""
    path = Path(readme)
    text = path.read_text()
    start_marker, end_marker = markers
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ConfigError(f"{path} lacks the markers {start_marker} and {end_marker} around its results section.")
    updated = text[: start + len(start_marker)] + "\n" + section.strip() + "\n" + text[end:]
    if updated == text:
        return False
    write_atomic(path, updated)
    return True


def write_summary(
    results_dir: str | os.PathLike,
    graph_dir: str | os.PathLike,
    *,
    config: dict,
    demo: bool,
    update_readme: bool,
    fast: bool = False,
    readme: str | os.PathLike = README_FILE,
) -> dict[str, Path]:
    """Write summary.csv, summary.md and the comparison graph; in real mode, optionally the README.

    ``fast``: the frozen-backbone experiment (run_all.py --fast), summarised without the study's
    numbers and into the README's own section for it.
    """
    if demo and update_readme:
        raise ValueError("Demo results never go into the README: run the summary with update_readme=False.")
    results_dir, graph_dir = Path(results_dir), Path(graph_dir)
    results = collect_results(results_dir, config, allow_demo=demo)
    table = summary_table(results, config)
    title = ("Demo (synthetic data)" if demo else "MobileNet fine-tuning") if not fast else (
        "Demo (synthetic data), frozen backbone" if demo else "MobileNet with a frozen backbone")
    paths = {
        "csv": write_csv(results_dir / SUMMARY_CSV, table),
        "graph": save_figure(comparison_figure(table, title, with_study=not fast), graph_dir / COMPARISON_GRAPH),
    }
    header = [f"# {title}", ""]
    if fast:
        header += [
            "The backbone is frozen and its features cached (`run_all.py --fast`); each configuration trains only "
            "its head. This is another experiment than the study's fine-tuning, so the study's numbers are not shown.",
            "",
        ]
    if demo:
        demo_config = config.get("demo", {})
        header += [
            "**Demo run on synthetic images: these numbers say nothing about chest X-rays.**",
            "",
            demo_config.get("description", ""),
            "",
            "Demo overrides applied to every configuration: "
            + ", ".join(f"`{k}={v}`" for k, v in demo_config.get("overrides", {}).items()),
            "",
        ]
        if fast and demo_config.get("fast_description"):
            header += [demo_config["fast_description"], ""]
    problems = [f"- {r.name}: {r.status}: {r.problem}" for r in results if r.status != "done"]
    body = markdown_table(table, with_study=not fast) + ("\n\nWithout results:\n" + "\n".join(problems) if problems else "")
    paths["markdown"] = write_atomic(results_dir / SUMMARY_MD, "\n".join(header) + "\n" + body + "\n")
    if update_readme:
        graph_link = os.path.relpath(paths["graph"], Path(readme).parent)
        markers = (FAST_RESULTS_START, FAST_RESULTS_END) if fast else (RESULTS_START, RESULTS_END)
        if replace_readme_section(readme, readme_section(table, results, graph_link, fast=fast), markers):
            paths["readme"] = Path(readme)
    return paths
