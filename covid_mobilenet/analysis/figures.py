"""The summary's comparison figure: test accuracy per configuration with its interval (the study's beside it),
and training time."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


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
