"""Writing a finished run's files (``common/run_layout.py`` names them): the model first, then the tables,
figures and TensorBoard record, ``metrics.json`` last (its presence means the run finished); then the
training backup is dropped. Every file is published atomically."""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..common.files import atomic_path, file_sha256, save_figure, write_csv, write_json
from ..common.paths import resolve_path
from ..common.run_layout import (CONFUSION_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, PREDICTIONS_FILE, SHORTCUTS_FILE,
                                 TENSORBOARD_FOLDER, graph_name, remove_backup, run_dir)
from ..model.architecture import Head
from .models import inference_copy

PREDICTED_SUBSETS = ("val", "test")  # written to predictions.csv; train is only summarised
HPARAMS = ("hidden_layers", "dense_units", "learning_rate", "dropout", "batch_size", "epochs", "image_size",
           "seed", "split_seed", "train_base", "fast", "precision", "input_region")


def save_model(whole: keras.Model, params: dict, class_names: list[str], head: Head | None = None) -> dict:
    """The trained model, pixels in, as ``model.keras`` in the run's folder, in float32; its record for metrics.json."""
    path = run_dir(params) / MODEL_FILE
    with atomic_path(path) as temporary:
        inference_copy(whole, params, len(class_names), head).save(temporary)
    return {"file": MODEL_FILE, "bytes": path.stat().st_size, "sha256": file_sha256(path), "dtype": "float32",
            "input": f"uint8 pixels 0..255, {params['image_size']}x{params['image_size']}x3 (scaling inside the model)",
            "class_names": class_names}


def write_run_files(metrics: dict, predictions: pd.DataFrame, history: pd.DataFrame, params: dict,
                    shortcut_table: pd.DataFrame, figures: dict[str, Figure], whole: keras.Model, head: Head | None = None
                    ) -> dict[str, Path]:
    """Every file of the run, the model first (recorded in ``metrics["saved_model"]``), metrics.json last.

    ``predictions``: the validation and test rows of predictions.csv; ``figures``: the run's own figures by file name
    (Grad-CAM, reliability, risk-coverage)."""
    folder = run_dir(params)
    title = f"{params['experiment']} (seed {params['seed']})"
    metrics["saved_model"] = save_model(whole, params, metrics["dataset"]["class_names"], head)
    paths = {
        "model": folder / MODEL_FILE,
        "predictions": write_csv(folder / PREDICTIONS_FILE, predictions),
        "shortcuts": write_csv(folder / SHORTCUTS_FILE, shortcut_table),
        **{Path(name).stem: save_figure(figure, folder / name) for name, figure in figures.items()},
        "history": write_csv(folder / HISTORY_FILE, history),
        "confusion_matrix": save_figure(
            plot_confusion_matrix(metrics["test"]["confusion_matrix"], metrics["dataset"]["class_names"], title),
            folder / CONFUSION_FILE,
        ),
        "curves": save_figure(
            plot_history(history, title), resolve_path(params["graph_dir"]) / graph_name(params["experiment"], params["seed"])
        ),
    }
    paths["tensorboard"] = write_hparams(folder / TENSORBOARD_FOLDER, metrics)
    paths["metrics"] = write_json(folder / METRICS_FILE, metrics)
    remove_backup(folder)
    return paths


def plot_history(history: pd.DataFrame, title: str) -> Figure:
    """Accuracy and loss per epoch, training against validation, like the study's graphs."""
    figure = Figure(figsize=(11, 4))
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axes.plot(history["epoch"], history[metric], "o-", label=f"train {metric}")
        axes.plot(history["epoch"], history[f"val_{metric}"], "s-", label=f"val {metric}")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], title: str) -> Figure:
    matrix = np.asarray(confusion)
    figure = Figure(figsize=(5.5, 4.8))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=30, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    for row in ticks:
        for column in ticks:
            value = matrix[row, column]
            color = "white" if value > matrix.max() / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color)
    return figure


def write_hparams(log_dir: str | os.PathLike, metrics: dict) -> Path:
    """The TensorBoard HParams plugin's record of a finished run: its parameters and final test metrics,
    so that `tensorboard --logdir results` lists every run of a sweep in one table."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams

    params = metrics["params"]
    log_dir = Path(log_dir) / "hparams"
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hparams.hparams({name: params[name] for name in HPARAMS if name in params},
                        trial_id=f"{params['experiment']}/seed-{params['seed']}")
        test = metrics["test"]
        for name in ("accuracy", "macro_f1", "balanced_accuracy", "loss"):
            tf.summary.scalar(f"test/{name}", test[name], step=metrics["epochs_run"])
        tf.summary.scalar("train_seconds", metrics["train_seconds"], step=metrics["epochs_run"])
    writer.close()
    return log_dir
