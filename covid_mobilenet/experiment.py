"""The steps of the experiment notebook, so that the notebook reads as a short sequence of calls.

A run's outputs, under ``<results_dir>/<experiment>/seed-<seed>/``: ``metrics.json``
(written last, atomically: its presence means the run finished), ``predictions.csv``
(every validation and test image's prediction), ``history.csv``, ``confusion_matrix.png`` and
``tensorboard/``; the training curves go to ``<graph_dir>/<n>-seed-<seed>.png``, and the split
table to ``<results_dir>/split-<hash>.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import keras
import pandas as pd

from . import evaluation, files, report, statistics, training
from .data import ImageIndex, Split, locate_dataset, scan_dataset, split_images
from .demo import is_demo_dataset
from .features import FeatureCache, cached_features
from .model import build_head, build_model, compile_model
from .params import check_parameters, resolve_path
from .pipeline import SplitPipelines, split_pipelines
from .runtime import Runtime, configure
from .runs import CONFUSION_FILE, HISTORY_FILE, METRICS_FILE, PREDICTIONS_FILE, TENSORBOARD_FOLDER, remove_backup, run_dir
from .weights import ensure_weights_available


@dataclass
class PreparedData:
    root: Path
    index: ImageIndex
    split: Split
    split_file: Path
    pipelines: SplitPipelines
    features: FeatureCache | None = None  # fast mode: the backbone's cached features the pipelines serve

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names


def check(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter checked, the weights available and the output folders writable, before any data is read."""
    params = check_parameters(namespace)
    ensure_weights_available(params["weights"], params["image_size"])
    for folder in (params["results_dir"], params["graph_dir"]):
        files.ensure_writable(resolve_path(folder))
    return params


def setup(params: dict) -> Runtime:
    """Seeds, the precision policy and the device(s) to train on."""
    training.set_seeds(params["seed"], params["deterministic"])
    return configure(params["precision"])


def prepare_data(params: dict, runtime: Runtime) -> PreparedData:
    """Find, validate and split the data set; write the split table; build the tf.data pipelines.

    In fast mode the pipelines serve the frozen backbone's features, computed here when no
    earlier run of the same data, split, image size and weights has cached them.
    """
    root = locate_dataset(None if params["data_dir"] is None else resolve_path(params["data_dir"]))
    index = scan_dataset(root, strict=params["strict_data"])
    split = split_images(
        index.images, val_fraction=params["val_fraction"], test_fraction=params["test_fraction"], seed=params["split_seed"]
    )
    split_file = resolve_path(params["results_dir"]) / f"split-{split.sha256[:12]}.csv"
    if not split_file.exists():
        split.save(split_file)
    batch_size = runtime.global_batch(params["batch_size"])
    if params["fast"]:
        features = cached_features(
            index, split, feature_dir=resolve_path(params["feature_dir"]), image_size=params["image_size"],
            weights=params["weights"], seed=params["seed"], batch_size=batch_size,
        )
        pipelines = features.pipelines(split, index.class_names, batch_size=batch_size, seed=params["seed"])
        return PreparedData(index.root, index, split, split_file, pipelines, features)
    cache_dir = None if params["cache_dir"] is None else resolve_path(params["cache_dir"])
    pipelines = split_pipelines(
        split, index.root, index.class_names, image_size=params["image_size"],
        batch_size=batch_size, seed=params["seed"], cache_dir=cache_dir,
    )
    return PreparedData(index.root, index, split, split_file, pipelines)


def build(params: dict, data: PreparedData, runtime: Runtime) -> keras.Model:
    """The study's model, or in fast mode its head alone, built and compiled on the run's device(s)."""
    head = dict(hidden_layers=params["hidden_layers"], dense_units=params["dense_units"],
                dropout=params["dropout"], seed=params["seed"])
    with runtime.strategy.scope():
        if data.features is not None:
            model = build_head(data.features.feature_shape, len(data.class_names), **head)
        else:
            model = build_model(
                len(data.class_names), image_size=params["image_size"], weights=params["weights"],
                train_base=params["train_base"], batchnorm_momentum=params["batchnorm_momentum"], **head,
            )
        return compile_model(model, params["learning_rate"], jit_compile=params["jit_compile"])


def train(model: keras.Model, data: PreparedData, params: dict) -> pd.DataFrame:
    return training.fit(model, data.pipelines, epochs=params["epochs"], run_dir=run_dir(params), params=params)


PREDICTED_SUBSETS = ("val", "test")  # written to predictions.csv; train is only summarised


def predict(model: keras.Model, data: PreparedData) -> dict[str, pd.DataFrame]:
    """Every image's true class, predicted class and class probabilities, per subset, in split order."""
    tables = {}
    for subset in ("train", "val", "test"):
        labels, probabilities = evaluation.predict(model, data.pipelines.batches(subset))
        rows = data.split.subset(subset)
        table = pd.DataFrame({"path": rows["path"].to_numpy(), "split": subset,
                              "true": [data.class_names[i] for i in labels],
                              "predicted": [data.class_names[i] for i in probabilities.argmax(axis=1)]})
        for i, name in enumerate(data.class_names):
            table[f"p_{name}"] = probabilities[:, i]
        if (table["true"].to_numpy() != rows["label"].to_numpy()).any():
            raise RuntimeError(f"the {subset} predictions are not in the split table's order")
        tables[subset] = table
    return tables


def evaluate(
    model: keras.Model, data: PreparedData, predictions: dict[str, pd.DataFrame], params: dict,
    history: pd.DataFrame, runtime: Runtime,
) -> dict:
    """The full metrics record of a finished run (see the module docstring for where it goes)."""
    results = {}
    for subset, table in predictions.items():
        labels, probabilities = evaluation.labels_and_probabilities(table, data.class_names)
        if subset == "test":
            results[subset] = evaluation.classification_report(labels, probabilities, data.class_names)
            results[subset]["intervals"] = statistics.single_run_intervals(
                labels, probabilities.argmax(axis=1), len(data.class_names))
        else:
            last = history.iloc[-1]
            prefix = "" if subset == "train" else "val_"
            results[subset] = {
                **evaluation.loss_and_accuracy(labels, probabilities),  # without dropout, final weights
                "last_epoch": {"loss": float(last[f"{prefix}loss"]), "accuracy": float(last[f"{prefix}accuracy"])},
            }
    train_seconds = float(history["epoch_seconds"].sum())
    epochs_run = len(history)
    train_images = len(data.split.subset("train"))
    return {
        "experiment": params["experiment"],
        "params": params,
        "dataset": {
            "root": str(data.root),
            "demo": is_demo_dataset(data.root),
            "class_names": data.class_names,
            "counts": data.split.counts(data.class_names),
            "total_images": len(data.split.table),
            "split_sha256": data.split.sha256,
            "split_file": data.split_file.name,
            "skipped": [{"path": s.path, "reason": s.reason} for s in data.index.skipped],
        },
        "model": {
            "name": model.name,
            "parameters": int(model.count_params()),
            "trainable_parameters": int(sum(keras.ops.size(w) for w in model.trainable_weights)),
        },
        **results,
        "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / epochs_run,
        "images_per_second": train_images * epochs_run / train_seconds,
        "epochs_run": epochs_run,
        "predictions_file": PREDICTIONS_FILE,
        "features": None if data.features is None else {
            "cache": data.features.folder.name,
            "computed_here": data.features.computed_here,
            "seconds": data.features.manifest["seconds"],  # of the one backbone pass, whichever run made it
            "shape": list(data.features.feature_shape),
            "dtype": data.features.manifest["dtype"],
        },
        "runtime": runtime.describe(),
        "peak_rss_gib": report.peak_rss_gib(),
        "environment": report.environment(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_outputs(metrics: dict, predictions: dict[str, pd.DataFrame], history: pd.DataFrame, params: dict) -> dict[str, Path]:
    """Write the run's files, metrics.json last; then drop the training backup."""
    folder = run_dir(params)
    title = f"{params['experiment']} (seed {params['seed']})"
    paths = {
        "predictions": files.write_csv(
            folder / PREDICTIONS_FILE, pd.concat([predictions[subset] for subset in PREDICTED_SUBSETS], ignore_index=True)),
        "history": files.write_csv(folder / HISTORY_FILE, history),
        "confusion_matrix": report.save_figure(
            report.plot_confusion_matrix(metrics["test"]["confusion_matrix"], metrics["dataset"]["class_names"], title),
            folder / CONFUSION_FILE,
        ),
        "curves": report.save_figure(
            report.plot_history(history, title), resolve_path(params["graph_dir"]) / report.graph_name(params["experiment"], params["seed"])
        ),
    }
    paths["tensorboard"] = report.write_hparams(folder / TENSORBOARD_FOLDER, metrics)
    paths["metrics"] = files.write_json(folder / METRICS_FILE, metrics)
    remove_backup(folder)
    return paths


def summary_line(metrics: dict) -> str:
    test = metrics["test"]
    return (
        f"{metrics['experiment']}: test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, "
        f"loss {test['loss']:.4f}; {metrics['epochs_run']} epochs in {metrics['train_seconds']:.1f} s "
        f"({metrics['images_per_second']:.1f} images/s)"
    )
