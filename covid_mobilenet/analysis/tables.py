"""The summary's tables: one row per configuration over its seeds (our numbers with their uncertainty, the
paired comparison with the baseline, what the models look at, the study's reported numbers), and one row per run."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..common.config import experiment_parameters
from . import comparison, shortcut_summary
from .calibration_report import calibration_columns
from .results import ExperimentResult
from .text import format_duration


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
        rows[-1].update(calibration_columns([run.metrics["calibration"] for run in done if "calibration" in run.metrics]))
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
            calibration = (run.metrics or {}).get("calibration", {})
            rows.append({
                "Model": name, "Seed": run.seed, "Status": run.status,
                "Test accuracy": test.get("accuracy"),
                "Accuracy CI low": intervals.get("accuracy", {}).get("low"),
                "Accuracy CI high": intervals.get("accuracy", {}).get("high"),
                "Macro F1": test.get("macro_f1"),
                "Macro F1 CI low": intervals.get("macro_f1", {}).get("low"),
                "Macro F1 CI high": intervals.get("macro_f1", {}).get("high"),
                "Balanced accuracy": test.get("balanced_accuracy"),
                "Temperature": calibration.get("temperature"),
                "ECE": calibration.get("test", {}).get("ece", {}).get("before", {}).get("value"),
                "Calibrated ECE": calibration.get("test", {}).get("ece", {}).get("after", {}).get("value"),
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


def majority_share(collected: dict[str, list[ExperimentResult]]) -> float | None:
    """The test accuracy of always predicting the commonest class, from a finished run's class counts."""
    for result in (run for runs in collected.values() for run in runs):
        if result.status == "done":
            support = [c["support"] for c in result.metrics["test"].get("per_class", {}).values()]
            return max(support) / sum(support) if support and sum(support) else None
    return None
