"""The comparison of all experiments: the table, the graph, and the README's results section.

Every number comes from an experiment's ``metrics.json``; the study's reported
numbers come from ``experiments.json``. A missing, failed or unreadable
experiment is a row marked as such, never a crash.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import PROJECT_ROOT, comparison, shortcut_summary
from .files import write_atomic, write_csv
from .report import save_figure
from .runs import METRICS_FILE, seed_folder, seed_of, seeds_in

CONFIG_FILE = PROJECT_ROOT / "experiments.json"
README_FILE = PROJECT_ROOT / "README.md"
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
FAST_RESULTS_START = "<!-- results-fast:start -->"  # the frozen-backbone experiment's own section
FAST_RESULTS_END = "<!-- results-fast:end -->"
COMPARISON_GRAPH = "The_result_of_MobileNet_fine_tuning.png"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
RUNS_CSV = "runs.csv"  # one row per run (configuration and seed)


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
    """One run: a configuration with one training seed (``seed`` None: no run of it was found)."""

    name: str  # the configuration
    status: str  # "done", "missing", "failed", "unreadable", "demo data"
    metrics: dict | None = None
    problem: str | None = None
    seed: int | None = None
    folder: Path | None = None


def read_result(run_folder: str | os.PathLike, *, allow_demo: bool = True) -> ExperimentResult:
    """What one run's folder (``<results_dir>/<experiment>/seed-<seed>``) holds: finished metrics, or why there are none."""
    folder = Path(run_folder)
    name, seed = folder.parent.name, seed_of(folder)
    metrics_file = folder / METRICS_FILE
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
            metrics["test"]["accuracy"]  # the least a finished run has
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            return ExperimentResult(name, "unreadable", problem=f"{metrics_file} is unreadable ({type(exc).__name__}: {exc})",
                                    seed=seed, folder=folder)
        if not allow_demo and metrics.get("dataset", {}).get("demo"):
            return ExperimentResult(name, "demo data", problem=f"{metrics_file} was computed on the demo data set",
                                    seed=seed, folder=folder)
        return ExperimentResult(name, "done", metrics, seed=seed, folder=folder)
    notebook = folder / f"{name}.ipynb"
    if notebook.is_file():
        return ExperimentResult(name, "failed", problem=f"no metrics.json; the executed notebook {notebook} shows where it stopped",
                                seed=seed, folder=folder)
    return ExperimentResult(name, "missing", problem=f"{folder} holds no results", seed=seed, folder=folder)


def collect_results(
    results_dir: str | os.PathLike, config: dict, *, allow_demo: bool = True, seeds: list[int] | None = None
) -> dict[str, list[ExperimentResult]]:
    """Every configuration's runs, one per seed: ``seeds`` when given, else every ``seed-*`` folder there is."""
    collected = {}
    for name in config["experiments"]:
        folder = Path(results_dir) / name
        found = seeds if seeds is not None else seeds_in(folder)
        runs = [read_result(folder / seed_folder(seed), allow_demo=allow_demo) for seed in found]
        collected[name] = runs or [ExperimentResult(name, "missing", problem=f"{folder} holds no results")]
    return collected


def format_duration(seconds: float | None) -> str:
    """A duration as h:mm:ss (2393.6 -> 0:39:54)."""
    if seconds is None or not np.isfinite(seconds):
        return "–"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def summary_table(collected: dict[str, list[ExperimentResult]], config: dict,
                  comparisons: dict[str, comparison.Comparison] | None = None) -> pd.DataFrame:
    """One row per configuration, over its seeds: our numbers with their uncertainty, the paired
    comparison with the baseline, and the study's reported numbers."""
    comparisons = comparisons or {}
    rows = []
    for name, runs in collected.items():
        settings = config["experiments"][name]
        reference = settings.get("reference", {})
        done = [run for run in runs if run.status == "done"]
        first = done[0].metrics if done else {}
        params = first.get("params", experiment_parameters(settings))
        accuracy = comparison.accuracy_summary(runs)
        seconds = _mean([run.metrics.get("train_seconds") for run in done])
        versus = comparisons.get(name)
        rows.append(
            {
                "Model": name,
                "Hidden Layer": params.get("hidden_layers"),
                "Dense Count": params.get("dense_units"),
                "Learning Rate": params.get("learning_rate"),
                "Seeds": len(done),
                "Test accuracy": accuracy["mean"],
                "Accuracy SD": accuracy["sd"],
                "Accuracy CI low": accuracy["low"],
                "Accuracy CI high": accuracy["high"],
                "Interval": accuracy["method"],
                "Macro F1": _mean([run.metrics["test"].get("macro_f1") for run in done]),
                "COVID sensitivity": _mean([run.metrics["test"].get("per_class", {}).get("COVID", {}).get("sensitivity") for run in done]),
                "Training time": format_duration(seconds) if done else None,
                "Training seconds": seconds,
                "Epochs": first.get("epochs_run"),
                "Status": _status(runs),
                "Difference": None if versus is None else versus.difference,
                "Difference CI low": None if versus is None else versus.low,
                "Difference CI high": None if versus is None else versus.high,
                "McNemar p": None if versus is None else versus.p_value,
                "Holm p": None if versus is None else versus.holm_p_value,
                "Significant": None if versus is None or versus.p_value is None else versus.significant,
                "Study test accuracy": reference.get("test_accuracy"),
                "Study table accuracy": reference.get("table_accuracy"),
                "Study training time": format_duration(reference.get("learning_seconds")) if reference.get("learning_seconds") else None,
                "Study training seconds": reference.get("learning_seconds"),
            }
        )
    looked_at = shortcut_summary.shortcut_table(collected).reindex(columns=["Model", *SHORTCUT_COLUMNS])
    return pd.DataFrame(rows).merge(looked_at, on="Model", how="left") if rows else pd.DataFrame(rows)


# What the models look at (shortcut_summary.py), also in summary.csv: accuracy with the lungs removed and alone
SHORTCUT_COLUMNS = ["Accuracy no lungs", "No lungs CI low", "No lungs CI high", "No lungs above majority p",
                    "Accuracy lungs only", "Majority rate", "Energy in lungs", "Lung area", "Energy ratio"]


def runs_table(collected: dict[str, list[ExperimentResult]]) -> pd.DataFrame:
    """One row per run (configuration and seed): the numbers behind the summary's means."""
    rows = []
    for name, runs in collected.items():
        for run in runs:
            test = (run.metrics or {}).get("test", {})
            intervals = test.get("intervals", {})
            rows.append({
                "Model": name, "Seed": run.seed, "Status": run.status,
                "Test accuracy": test.get("accuracy"),
                "Accuracy CI low": intervals.get("accuracy", {}).get("low"),
                "Accuracy CI high": intervals.get("accuracy", {}).get("high"),
                "Macro F1": test.get("macro_f1"),
                "Macro F1 CI low": intervals.get("macro_f1", {}).get("low"),
                "Macro F1 CI high": intervals.get("macro_f1", {}).get("high"),
                "Balanced accuracy": test.get("balanced_accuracy"),
                "Training seconds": (run.metrics or {}).get("train_seconds"),
                "Folder": None if run.folder is None else f"{run.folder.parent.name}/{run.folder.name}",
            })
    return pd.DataFrame(rows)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _status(runs: list[ExperimentResult]) -> str:
    done = sum(run.status == "done" for run in runs)
    if done == len(runs):
        return "done"
    if done:
        return f"{done} of {len(runs)} seeds"
    return runs[0].status


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
                cell = _percent(value)
            elif column == "Test accuracy (95% CI)":
                cell = _percent(row["Test accuracy"]) + (
                    "" if _missing(row["Accuracy CI low"]) else f" [{100 * row['Accuracy CI low']:.1f}, {100 * row['Accuracy CI high']:.1f}]")
                cell += "" if _missing(row["Accuracy SD"]) else f" ±{100 * row['Accuracy SD']:.1f} SD"
            elif column == versus:
                cell = "–" if _missing(row["Difference"]) else (
                    f"{100 * row['Difference']:+.1f} [{100 * row['Difference CI low']:+.1f}, {100 * row['Difference CI high']:+.1f}]"
                    + ("\\*" if row["Significant"] else ""))
            elif column == "Holm p":
                cell = "–" if _missing(value) else f"{value:.3g}"
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
    errors = np.vstack([ours - table["Accuracy CI low"].astype(float) * 100, table["Accuracy CI high"].astype(float) * 100 - ours])
    accuracy_axes.bar(positions - width / 2, ours.fillna(0), width, yerr=np.nan_to_num(errors), capsize=3,
                      label="ours: mean test accuracy, 95% CI")
    if with_study:
        accuracy_axes.bar(positions + width / 2, study.fillna(0), width, label="study (reported test)", alpha=0.6)
    for x, value in zip(positions, ours):
        accuracy_axes.text(x - width / 2, 2, "n/a" if np.isnan(value) else f"{value:.1f}", ha="center", fontsize=8,
                           color="white" if not np.isnan(value) and value > 10 else "black")
    accuracy_axes.set(ylabel="test accuracy (%)", ylim=(0, 105), title=f"{title}: test accuracy")
    minutes_ours = table["Training seconds"].astype(float) / 60
    minutes_study = table["Study training seconds"].astype(float) / 60
    time_axes.bar(positions - width / 2, minutes_ours.fillna(0), width, label="ours (mean over seeds)")
    if with_study:
        time_axes.bar(positions + width / 2, minutes_study.fillna(0), width, label="study (reported)", alpha=0.6)
    time_axes.set(ylabel="training time (minutes)", title=f"{title}: training time")
    for axes in (accuracy_axes, time_axes):
        axes.set_xticks(positions, table["Model"], rotation=30, ha="right")
        axes.legend(fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    return figure


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
            f"{_setting(column, row[column])}: {_percent(row['Test accuracy'])} ({row['Model']})" for _, row in rows.iterrows()
        )
        held = ", ".join(f"{EFFECT_COLUMNS[c]} {_setting(c, base[c])}" for c in others)
        lines.append(f"- {words} ({held}): {steps}")
    return lines


def majority_share(collected: dict[str, list[ExperimentResult]]) -> float | None:
    """The test accuracy of always predicting the commonest class, from a finished run's class counts."""
    for result in (run for runs in collected.values() for run in runs):
        if result.status == "done":
            support = [c["support"] for c in result.metrics["test"].get("per_class", {}).values()]
            return max(support) / sum(support) if support and sum(support) else None
    return None


def _setting(column: str, value) -> str:
    return f"{value:.0e}".replace("e-0", "e-") if column == "Learning Rate" else str(int(value))


def readme_section(table: pd.DataFrame, collected: dict[str, list[ExperimentResult]], body: list[str], graph_path: str,
                   *, fast: bool = False) -> str:
    """The README's results section: measured rows when real runs exist, else the study's reference table
    (for the frozen-backbone experiment, which the study never ran: how to fill it)."""
    done = [run for runs in collected.values() for run in runs if run.status == "done"]
    if not done and fast:
        return "\n".join([
            "No frozen-backbone run on the real data has been recorded in this repository yet.",
            "`python run_all.py --fast` on the real data fills this section from `results/fast/<experiment>/seed-<seed>/metrics.json`.",
        ])
    if not done:
        return "\n".join([
            "No run on the real data has been recorded in this repository yet: the table below is what the",
            "original study reported, not a result of this project. `python run_all.py` on the real data",
            "fills this section from the `metrics.json` of each run.",
            "",
            reference_table(table),
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
    from .demo import REAL_CLASS_COUNTS

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


def claim_lines(verdicts: list[dict], table: pd.DataFrame, baseline: str) -> list[str]:
    """One line per claim of the study: our verdict and the comparisons it rests on."""
    if not verdicts:
        return []
    study = dict(zip(table["Model"], table["Study test accuracy"]))
    lines = [f"The study's claims, judged by paired comparisons with {baseline} on the same test images:", ""]
    for verdict in verdicts:
        evidence = "; ".join(
            f"{c.name} minus {baseline}: {100 * c.difference:+.1f} points [{100 * c.low:+.1f}, {100 * c.high:+.1f}], "
            f"Holm p = {c.holm_p_value:.3g}, {len(c.seeds)} seed{'s' if len(c.seeds) != 1 else ''}"
            f" (the study reported {_percent(study.get(c.name))} against {_percent(study.get(baseline))})"
            for c in verdict["evidence"] if c.difference is not None
        ) or "; ".join(f"{c.name}: {c.problem}" for c in verdict["evidence"] if c.problem) or "no runs to compare"
        lines.append(f"- *{verdict['claim']}* **{VERDICT_WORDS[verdict['verdict']].capitalize()}**: {evidence}.")
    return lines


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
    seeds: list[int] | None = None,
    readme: str | os.PathLike = README_FILE,
) -> dict[str, Path]:
    """Write summary.csv, runs.csv, summary.md and the comparison graph; in real mode, optionally the README.

    ``seeds``: the training seeds to summarise (default: every seed folder found). ``fast``: the
    frozen-backbone experiment (run_all.py --fast), summarised without the study's numbers and into
    the README's own section for it.
    """
    if demo and update_readme:
        raise ValueError("Demo results never go into the README: run the summary with update_readme=False.")
    results_dir, graph_dir = Path(results_dir), Path(graph_dir)
    collected = collect_results(results_dir, config, allow_demo=demo, seeds=seeds)
    baseline = config.get("baseline", next(iter(config["experiments"])))
    comparisons = comparison.compare_with_baseline(collected, baseline)
    verdicts = comparison.judge_claims(config.get("claims", []) if not fast else [], comparisons)
    table = summary_table(collected, config, comparisons)
    title = ("Demo (synthetic data)" if demo else "MobileNet fine-tuning") if not fast else (
        "Demo (synthetic data), frozen backbone" if demo else "MobileNet with a frozen backbone")
    paths = {
        "csv": write_csv(results_dir / SUMMARY_CSV, table),
        "runs": write_csv(results_dir / RUNS_CSV, runs_table(collected)),
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
        changes = {**demo_config.get("overrides", {}), **(demo_config.get("fast_overrides", {}) if fast else {})}
        header += [
            "**Demo run on synthetic images: these numbers say nothing about chest X-rays.**",
            "",
            demo_config.get("description", ""),
            "",
            "Demo settings applied to every configuration: "
            + ", ".join(f"`{k}={v}`" for k, v in changes.items())
            + (f"; every learning rate multiplied by {demo_config['learning_rate_factor']:g}"
               if demo_config.get("learning_rate_factor", 1) != 1 else "")
            + ".",
            "",
        ]
        if fast and demo_config.get("fast_description"):
            header += [demo_config["fast_description"], ""]
    effects = effect_lines(table)
    if effects:
        header += ["What each setting does, with the other two held at the first configuration's values (mean test accuracy):",
                   "", *effects, ""]
    majority = majority_share(collected)
    if majority is not None:
        header += [f"Always answering the commonest class would score {_percent(majority)} on the test split.", ""]
    body = [*dataset_lines(collected), "", markdown_table(table, with_study=not fast, baseline=baseline), "", HOW_TO_READ]
    claims = claim_lines(verdicts, table, baseline)
    if claims:
        body += ["", *claims]
    looked_at, region_lines, shortcut_paths = shortcut_summary.write_shortcut_summary(
        results_dir, graph_dir, collected, baseline, seeds=seeds, read_result=partial(read_result, allow_demo=demo), title=title)
    paths.update(shortcut_paths)
    if looked_at:
        body += ["", *looked_at]
    problems = [f"- {r.name} {seed_folder(r.seed) if r.seed is not None else ''}: {r.status}: {r.problem}"
                for runs in collected.values() for r in runs if r.status != "done"]
    if problems:
        body += ["", "Without results:", *problems]
    paths["markdown"] = write_atomic(results_dir / SUMMARY_MD, "\n".join(header + body) + "\n")
    if update_readme:
        graph_link = os.path.relpath(paths["graph"], Path(readme).parent)
        markers = (FAST_RESULTS_START, FAST_RESULTS_END) if fast else (RESULTS_START, RESULTS_END)
        changed = replace_readme_section(readme, readme_section(table, collected, body, graph_link, fast=fast), markers)
        if not fast and shortcut_summary.REGIONS_START in Path(readme).read_text():  # a README of before the section has none
            changed |= replace_readme_section(readme, regions_section(region_lines, paths.get("regions_graph"), readme),
                                              (shortcut_summary.REGIONS_START, shortcut_summary.REGIONS_END))
        if changed:
            paths["readme"] = Path(readme)
    return paths


def regions_section(region_lines: list[str], graph: Path | None, readme: str | os.PathLike) -> str:
    """The README's section on the training-time protocol: the matrix from real runs, or how to fill it."""
    if not region_lines:
        return ("No run of the training-time protocol on the real data has been recorded in this repository yet: "
                "`python run_all.py --regions` trains the baseline on each region and fills this section.")
    link = os.path.relpath(graph, Path(readme).parent)
    return "\n".join([*region_lines, f"![Accuracy of the baseline trained on each region, tested on each region]({link})"])
