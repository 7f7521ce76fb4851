"""The steps of the experiment notebook, so that the notebook reads as a short sequence of calls.

A run's outputs, under ``<results_dir>/<experiment>/seed-<seed>/``: ``metrics.json``
(written last, atomically: its presence means the run finished), ``predictions.csv``
(every validation and test image's prediction), ``model.keras`` (the trained model, float32, pixels in),
``shortcuts.csv`` (every test image under each input region, with its Grad-CAM energy inside the lungs
and its source), ``gradcam.png``, ``history.csv``, ``confusion_matrix.png`` and ``tensorboard/``; the
training curves go to ``<graph_dir>/<n>-seed-<seed>.png``, and the split table to
``<results_dir>/split-<hash>.csv``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import keras
import pandas as pd

from . import evaluation, files, report, shortcuts, statistics, training
from .data import ImageIndex, Split, locate_dataset, scan_dataset, split_images
from .demo import is_demo_dataset
from .features import FeatureCache, cached_features
from .masks import REGION_LABELS, restrict_to_masked
from .model import build_head, build_model, compile_model
from .params import check_parameters, resolve_path
from .pipeline import SplitPipelines, split_pipelines
from .runtime import Runtime, configure
from .runs import (CONFUSION_FILE, GRADCAM_FILE, HISTORY_FILE, METRICS_FILE, MODEL_FILE, PREDICTIONS_FILE, SHORTCUTS_FILE,
                   TENSORBOARD_FOLDER, remove_backup, run_dir)
from .weights import ensure_weights_available


@dataclass
class PreparedData:
    root: Path
    index: ImageIndex
    split: Split
    split_file: Path
    pipelines: SplitPipelines
    features: FeatureCache | None = None  # fast mode: the backbone's cached features the pipelines serve
    masks: dict | None = None  # input_region other than full: the mask check, and the images left out

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
    region, mask_record = params["input_region"], None
    if region != "full":  # the images without a usable lung mask cannot be shown as that region: left out, counted
        split, mask_record = restrict_to_masked(split, index.root)
    split_file = resolve_path(params["results_dir"]) / f"split-{split.sha256[:12]}.csv"
    if not split_file.exists():
        split.save(split_file)
    batch_size = runtime.global_batch(params["batch_size"])
    if params["fast"]:
        features = cached_features(
            index, split, feature_dir=resolve_path(params["feature_dir"]), image_size=params["image_size"],
            weights=params["weights"], seed=params["seed"], batch_size=batch_size, region=region,
        )
        pipelines = features.pipelines(split, index.class_names, batch_size=batch_size, seed=params["seed"])
        return PreparedData(index.root, index, split, split_file, pipelines, features, mask_record)
    cache_dir = None if params["cache_dir"] is None else resolve_path(params["cache_dir"])
    pipelines = split_pipelines(
        split, index.root, index.class_names, image_size=params["image_size"],
        batch_size=batch_size, seed=params["seed"], cache_dir=cache_dir, region=region,
    )
    return PreparedData(index.root, index, split, split_file, pipelines, masks=mask_record)


def build(params: dict, data: PreparedData, runtime: Runtime) -> keras.Model:
    """The study's model, or in fast mode its head alone, built and compiled on the run's device(s)."""
    with runtime.strategy.scope():
        if data.features is not None:
            model = build_head(data.features.feature_shape, len(data.class_names), hidden_layers=params["hidden_layers"],
                               dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"])
        else:
            model = _study_model(data, params, weights=params["weights"], train_base=params["train_base"])
        return compile_model(model, params["learning_rate"], jit_compile=params["jit_compile"])


def full_model(model: keras.Model, data: PreparedData, params: dict) -> keras.Model:
    """The whole model, pixels in: ``model`` itself, or in fast mode its trained head on the frozen backbone
    it was trained on (what Grad-CAM and the region tests need)."""
    if data.features is None:
        return model
    whole = _study_model(data, params, weights=params["weights"], train_base=False)
    for layer in model.layers:
        if layer.weights:
            whole.get_layer(layer.name).set_weights(layer.get_weights())
    return whole


def inference_copy(model: keras.Model, data: PreparedData, params: dict) -> keras.Model:
    """The trained weights in a fresh float32 model, not compiled: without the optimizer's state (a third of
    the file), and float32 whatever precision it trained in (mixed precision keeps its variables in float32)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = _study_model(data, params, weights=None, train_base=params["train_base"])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _study_model(data: PreparedData, params: dict, *, weights: str | None, train_base: bool) -> keras.Model:
    return build_model(
        len(data.class_names), image_size=params["image_size"], weights=weights, train_base=train_base,
        batchnorm_momentum=params["batchnorm_momentum"], hidden_layers=params["hidden_layers"],
        dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"],
    )


def save_model(whole: keras.Model, data: PreparedData, params: dict) -> dict:
    """The trained model, pixels in, as ``model.keras`` in the run's folder, in float32; its record for metrics.json."""
    folder = run_dir(params)
    folder.mkdir(parents=True, exist_ok=True)
    path, temporary = folder / MODEL_FILE, folder / f".{MODEL_FILE}.{os.getpid()}.tmp.keras"
    try:
        inference_copy(whole, data, params).save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return {"file": MODEL_FILE, "bytes": path.stat().st_size, "sha256": files.file_sha256(path), "dtype": "float32",
            "input": f"uint8 pixels 0..255, {params['image_size']}x{params['image_size']}x3 (scaling inside the model)",
            "class_names": data.class_names}


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


def look_for_shortcuts(whole: keras.Model, data: PreparedData, predictions: dict[str, pd.DataFrame], params: dict,
                       runtime: Runtime) -> shortcuts.ShortcutAnalysis:
    """Grad-CAM inside the lungs, the test images with the lungs removed and alone, accuracy per source
    (``whole``: the model that takes pixels, ``full_model``)."""
    return shortcuts.analyse(
        whole, data.root, predictions["test"], data.class_names,
        image_size=params["image_size"], input_region=params["input_region"],
        batch_size=runtime.global_batch(params["batch_size"]), title=f"{params['experiment']} (seed {params['seed']})",
    )


def shortcut_lines(metrics: dict) -> list[str]:
    """The shortcut checks of a run in words."""
    checks = metrics["shortcuts"]
    regions = checks["regions"]
    lines = [f"On the {checks['images_with_mask']} of {checks['test_images']} test images with a usable lung mask "
             f"(trained on: {REGION_LABELS[checks['input_region']]}):"]
    lines += [f"  accuracy on {REGION_LABELS[name]:<10}: {_share(regions[name]['accuracy'])}" for name in regions]
    lines.append(f"  majority rate ({checks['majority_class']}): {_share(checks['majority_rate'])}")
    cam = checks["gradcam"]
    lines.append(f"Grad-CAM ({cam['layer']}, {cam['map_size'][0]}x{cam['map_size'][1]}): {_share(cam['energy_in_lungs'])} of the "
                 f"energy inside the lungs, which cover {_share(cam['lung_area'])} of the image (ratio {_ratio(cam['ratio'])}; "
                 "1.0 is a uniform map)")
    marker = checks.get("planted_marker")
    if marker:
        lines.append(f"Planted demo marker ({marker['source']}, {marker['images']} test images): {_share(marker['energy_in_marker'])} "
                     f"of the energy on its box, which covers {_share(marker['box_area'])} of the image")
    return lines


def _share(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def evaluate(
    model: keras.Model, data: PreparedData, predictions: dict[str, pd.DataFrame], params: dict,
    history: pd.DataFrame, runtime: Runtime, analysis: shortcuts.ShortcutAnalysis,
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
            "input_region": params["input_region"],
            "masks": data.masks,  # input_region other than full: which images had no usable mask and were left out
        },
        "model": {
            "name": model.name,
            "parameters": int(model.count_params()),
            "trainable_parameters": int(sum(keras.ops.size(w) for w in model.trainable_weights)),
        },
        **results,
        **analysis.metrics,  # "shortcuts" and "sources"
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


def save_outputs(metrics: dict, predictions: dict[str, pd.DataFrame], history: pd.DataFrame, params: dict,
                 analysis: shortcuts.ShortcutAnalysis, whole: keras.Model, data: PreparedData) -> dict[str, Path]:
    """Write the run's files (the model first, recorded in ``metrics["saved_model"]``), metrics.json last;
    then drop the training backup."""
    folder = run_dir(params)
    title = f"{params['experiment']} (seed {params['seed']})"
    metrics["saved_model"] = save_model(whole, data, params)
    paths = {
        "model": folder / MODEL_FILE,
        "predictions": files.write_csv(
            folder / PREDICTIONS_FILE, pd.concat([predictions[subset] for subset in PREDICTED_SUBSETS], ignore_index=True)),
        "shortcuts": files.write_csv(folder / SHORTCUTS_FILE, analysis.table),
        "gradcam": report.save_figure(analysis.panel, folder / GRADCAM_FILE),
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
