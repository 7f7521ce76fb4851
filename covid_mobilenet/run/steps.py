"""The steps of the experiment notebook, one call per cell, and ``run_experiment``: all of them in order.

The notebook calls these functions one by one, so that it reads as a short sequence of calls; the
benchmark and the tests call ``run_experiment``, which makes the same calls in the same order (a test
compares the two). A run's files, under ``<results_dir>/<experiment>/seed-<seed>/``, are those of
``common/run_layout.py``: ``metrics.json`` (written last, atomically: its presence means the run finished),
``predictions.csv``, ``model.keras``, ``shortcuts.csv``, ``gradcam.png``, ``history.csv``,
``confusion_matrix.png`` and ``tensorboard/``; the training curves go to ``<graph_dir>/<n>-seed-<seed>.png``,
and the split table to ``<results_dir>/split-<hash>.csv``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import keras
import pandas as pd
from matplotlib.figure import Figure

from ..analysis import calibration as calibration_analysis
from ..analysis.calibration_report import reliability_figure, risk_coverage_figure
from ..common.config import calibration_settings, load_config
from ..common.files import ensure_writable
from ..common.paths import resolve_path
from ..common.run_layout import (GRADCAM_FILE, GUARD_FILE, RELIABILITY_FILE, RISK_COVERAGE_FILE, TENSORBOARD_FOLDER, backup_dir, run_dir,
                                 split_file_name)
from ..data.locate import locate_dataset
from ..data.masks import restrict_to_masked
from ..data.pipeline import SplitPipelines, split_pipelines
from ..data.scan import ImageIndex, scan_dataset
from ..data.grouping import split_for, write_duplicates_table
from ..data.sources import hold_out
from ..data.split import Split
from ..model import batchnorm, training
from ..model.architecture import Head, compile_model
from ..model.features import FeatureCache, cached_features, cached_region_features
from ..model.runtime import Runtime, configure
from ..model.weights import ensure_weights_available
from . import guard, outputs, record
from .guard import Unfamiliar
from .models import head_on_backbone, trainable_model
from .outputs import PREDICTED_SUBSETS
from .params import check_parameters
from .predictions import Predictions, predict_split
from .shortcut_checks import CachedInputs, ShortcutAnalysis, analyse


@dataclass
class PreparedData:
    root: Path
    index: ImageIndex
    split: Split
    split_file: Path
    pipelines: SplitPipelines
    features: FeatureCache | None = None  # fast mode: the backbone's cached features the pipelines serve
    masks: dict | None = None  # input_region other than full: the mask check, and the images left out
    calibration_settings: dict | None = None  # experiments.json's targets, checked against the classes before training
    duplicates: dict | None = None  # near-duplicate groups and label conflicts: counts and the table's file
    holdout: dict | None = None  # holdout_source: the class and source moved to test, and how many images

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names


def check(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter checked, the weights available and the output folders writable, before any data is read."""
    params = check_parameters(namespace)
    ensure_weights_available(params["weights"], params["image_size"])
    for folder in (params["results_dir"], params["graph_dir"]):
        ensure_writable(resolve_path(folder))
    return params


def setup(params: dict, devices: list[str] | None = None) -> Runtime:
    """Seeds, the precision policy and the device(s) to train on (``devices``: default every visible GPU)."""
    training.set_seeds(params["seed"], params["deterministic"])
    return configure(params["precision"], devices)


def prepare_data(params: dict, runtime: Runtime) -> PreparedData:
    """Find, validate and split the data set; write the split table; build the tf.data pipelines.

    In fast mode the pipelines serve the frozen backbone's features, computed here when no
    earlier run of the same data, split, image size and weights has cached them.
    """
    root = locate_dataset(None if params["data_dir"] is None else resolve_path(params["data_dir"]))
    index = scan_dataset(root, strict=params["strict_data"], cache_dir=resolve_path(params["feature_dir"]))
    targets = checked_calibration_settings(index.class_names)
    split, groups, duplicates = split_for(index.root, index.images, params, feature_dir=resolve_path(params["feature_dir"]))
    results_dir, holdout = resolve_path(params["results_dir"]), None
    if params["holdout_source"]:
        split, holdout = hold_out(split, index.root, params["holdout_source"], groups.images)
    else:  # the table of every near-duplicate group, with the split of each image (the preflight wrote it too)
        write_duplicates_table(results_dir, groups, split, duplicates)
    region, mask_record = params["input_region"], None
    if region != "full":  # the images without a usable lung mask cannot be shown as that region: left out, counted
        split, mask_record = restrict_to_masked(split, index.root)
    split_file = results_dir / split_file_name(split.sha256)
    if not split_file.exists():
        split.save(split_file)
    batch_size = runtime.global_batch(params["batch_size"])
    if params["fast"]:
        features = cached_features(
            index, split, feature_dir=resolve_path(params["feature_dir"]), image_size=params["image_size"],
            weights=params["weights"], seed=params["seed"], batch_size=batch_size, region=region,
        )
        pipelines = features.pipelines(split, index.class_names, batch_size=batch_size, seed=params["seed"])
        return PreparedData(index.root, index, split, split_file, pipelines, features, mask_record, targets, duplicates, holdout)
    cache_dir = None if params["cache_dir"] is None else resolve_path(params["cache_dir"])
    pipelines = split_pipelines(
        split, index.root, index.class_names, image_size=params["image_size"],
        batch_size=batch_size, seed=params["seed"], cache_dir=cache_dir, region=region,
    )
    return PreparedData(index.root, index, split, split_file, pipelines, masks=mask_record, calibration_settings=targets,
                        duplicates=duplicates, holdout=holdout)


def checked_calibration_settings(class_names: list[str]) -> dict:
    """experiments.json's calibration targets, refused before training when they name a class the data lacks."""
    settings = calibration_settings(load_config())
    unknown = sorted(set(settings["target_sensitivity"]) - set(class_names))
    if unknown:
        raise ValueError(f"experiments.json, calibration.target_sensitivity: {unknown} is not a class of this data set "
                         f"({class_names}); name one of its classes or remove it")
    return settings


def build(params: dict, data: PreparedData, runtime: Runtime, head: Head | None = None) -> keras.Model:
    """The study's model with ``head`` (the package's ``study_head`` by default), or in fast mode the head alone on
    the cached features, built on the run's device(s); compiled next (``compile_model``, or the notebook's cell)."""
    with runtime.strategy.scope():
        return trainable_model(params, len(data.class_names), None if data.features is None else data.features.feature_shape,
                               head)


def train(model: keras.Model, data: PreparedData, params: dict) -> pd.DataFrame:
    """Training to ``epochs``, resuming the run's backup when an earlier attempt was interrupted; the history."""
    folder = run_dir(params)
    return training.fit(model, data.pipelines, epochs=params["epochs"], backup=backup_dir(folder),
                        tensorboard=folder / TENSORBOARD_FOLDER, params=params)


BATCHNORM_GAP_WARNING = 0.05  # validation accuracy on batch statistics against the moving ones, beyond which a run warns


def recalibrate_batchnorm(model: keras.Model, data: PreparedData, params: dict) -> dict:
    """When the backbone trained: its BatchNorm statistics recomputed on the training images (``model/batchnorm.py``),
    with the validation accuracy before and after, and on batch statistics; a warning when those disagree."""
    if data.features is not None or not params["train_base"]:
        return {"recalibrated": False, "reason": "frozen backbone: its BatchNorm statistics are the pretrained ones, "
                                                 "as in training"}
    val = data.pipelines.batches("val")
    before = batchnorm.accuracy(model, val)
    # batch statistics as training saw them: shuffled batches that mix the classes (split order groups them)
    on_batches = batchnorm.accuracy(model, data.pipelines.shuffled_batches("val"), batchnorm_training=True)
    batches = batchnorm.recalibrate(model, data.pipelines.shuffled_batches("train"))
    after = batchnorm.accuracy(model, val)
    record = {"recalibrated": True, "train_batches": batches, "val_accuracy_before": before, "val_accuracy_after": after,
              "val_accuracy_on_batch_statistics": on_batches}
    if abs(on_batches - after) > BATCHNORM_GAP_WARNING:
        record["warning"] = (f"validation accuracy {on_batches:.3f} on batch statistics against {after:.3f} in inference "
                             "mode after recalibrating: BatchNorm's statistics do not describe these images; a lower "
                             "batchnorm_momentum, more data or a frozen backbone may help")
        print(f"Warning: {record['warning']}")
    return record


def split_predictions(model: keras.Model, data: PreparedData) -> Predictions:
    """Every image's true class, predicted class and class probabilities, per subset, in split order; without the
    feature cache, one pass over the images that also gives the guard's features and the test images' Grad-CAM
    (``run/predictions.py``)."""
    return predict_split(model, data)


def full_model(model: keras.Model, data: PreparedData, params: dict, head: Head | None = None) -> keras.Model:
    """The whole model, pixels in: ``model`` itself, or in fast mode its trained head (built with ``head``) on the
    frozen backbone it was trained on (what Grad-CAM and the region tests need)."""
    return model if data.features is None else head_on_backbone(model, params, len(data.class_names), head)


def look_for_shortcuts(whole: keras.Model, data: PreparedData, predictions: Predictions, params: dict,
                       runtime: Runtime) -> ShortcutAnalysis:
    """Grad-CAM inside the lungs, the test images with the lungs removed and alone, accuracy per source
    (``whole``: the model that takes pixels, ``full_model``)."""
    batch_size = runtime.global_batch(params["batch_size"])
    cached = None
    if data.features is not None:  # fast mode: the backbone's cached features, no pass over the test images
        cached = CachedInputs(data.features.rows("test"), partial(
            cached_region_features, data.index, data.split, feature_dir=resolve_path(params["feature_dir"]),
            image_size=params["image_size"], weights=params["weights"], seed=params["seed"], batch_size=batch_size))
    return analyse(
        whole, data.root, predictions["test"], data.class_names,
        image_size=params["image_size"], input_region=params["input_region"],
        batch_size=batch_size, title=f"{params['experiment']} (seed {params['seed']})", cached=cached,
        test_cams=predictions.test_cams,
    )


@dataclass
class Calibration:
    """Temperature scaling, operating points and the abstain threshold of a run (``analysis/calibration.py``)."""

    record: dict  # metrics.json's "calibration"
    predictions: pd.DataFrame  # the validation and test rows of predictions.csv, with calibrated_p_<class> columns
    figures: dict[str, Figure]


def calibrate(predictions: dict[str, pd.DataFrame], analysis: ShortcutAnalysis, data: PreparedData, params: dict) -> Calibration:
    """The temperature fitted on the validation predictions, operating points and the abstain threshold chosen
    there, all reported on test, with ECE per source and with the lungs removed. Needs no model."""
    table = pd.concat([predictions[subset] for subset in PREDICTED_SUBSETS], ignore_index=True)
    found, calibrated = calibration_analysis.calibrate(table, data.class_names, data.calibration_settings, analysis.table)
    title = f"{params['experiment']} (seed {params['seed']})"
    figures = {RELIABILITY_FILE: reliability_figure(calibrated, data.class_names, title),
               RISK_COVERAGE_FILE: risk_coverage_figure(calibrated, data.class_names, found, title)}
    return Calibration(found, calibrated, figures)


def fit_guard(data: PreparedData, predictions: Predictions, analysis: ShortcutAnalysis, params: dict) -> Unfamiliar:
    """The unfamiliar-image guard, fitted on the training images' pooled backbone features, its threshold chosen on
    validation's; what it flags on test, and against a held-out source (``run/guard.py``)."""
    return guard.fit_run_guard(data, predictions.pooled, analysis, params)


def evaluate(model: keras.Model, data: PreparedData, predictions: dict[str, pd.DataFrame], params: dict,
             history: pd.DataFrame, runtime: Runtime, analysis: ShortcutAnalysis, batchnorm_record: dict,
             calibration: Calibration, unfamiliar: Unfamiliar) -> dict:
    """The full metrics record of a finished run (``run/record.py``)."""
    return record.metrics_record(model, data, predictions, params, history, runtime,
                                 {**analysis.metrics, "batchnorm": batchnorm_record, "calibration": calibration.record,
                                  "unfamiliar": unfamiliar.record})


def save_outputs(metrics: dict, calibration: Calibration, history: pd.DataFrame, params: dict,
                 analysis: ShortcutAnalysis, whole: keras.Model, unfamiliar: Unfamiliar, head: Head | None = None
                 ) -> dict[str, Path]:
    """Write the run's files, metrics.json last; then drop the training backup (``run/outputs.py``). The model is
    saved in float32, rebuilt with the ``head`` it was built with."""
    guard_file = unfamiliar.guard.save(run_dir(params) / GUARD_FILE)
    return {"unfamiliar": guard_file,
            **outputs.write_run_files(metrics, calibration.predictions, history, params, analysis.table,
                                      {GRADCAM_FILE: analysis.panel, **calibration.figures}, whole, head)}



@dataclass
class Experiment:
    """Everything one run made, as the notebook's variables after its last cell."""

    params: dict
    runtime: Runtime
    data: PreparedData
    model: keras.Model
    history: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    whole: keras.Model
    analysis: ShortcutAnalysis
    batchnorm: dict
    calibration: Calibration
    unfamiliar: Unfamiliar
    metrics: dict
    paths: dict[str, Path]


def run_experiment(namespace: Mapping[str, Any], *, devices: list[str] | None = None, head: Head | None = None
                   ) -> Experiment:
    """One run from its parameters: the notebook's steps, in the notebook's order (``devices`` as for ``setup``;
    ``head`` as the notebook's ``study_head``, the package's by default)."""
    params = check(namespace)
    runtime = setup(params, devices)
    data = prepare_data(params, runtime)
    model = build(params, data, runtime, head)
    with runtime.strategy.scope():
        compile_model(model, params["learning_rate"], jit_compile=params["jit_compile"])  # Adam, cross-entropy, accuracy
    history = train(model, data, params)
    batchnorm_record = recalibrate_batchnorm(model, data, params)
    predictions = split_predictions(model, data)
    whole = full_model(model, data, params, head)
    analysis = look_for_shortcuts(whole, data, predictions, params, runtime)
    calibration = calibrate(predictions, analysis, data, params)
    unfamiliar = fit_guard(data, predictions, analysis, params)
    metrics = evaluate(model, data, predictions, params, history, runtime, analysis, batchnorm_record, calibration,
                       unfamiliar)
    paths = save_outputs(metrics, calibration, history, params, analysis, whole, unfamiliar, head)
    return Experiment(params, runtime, data, model, history, predictions, whole, analysis, batchnorm_record, calibration,
                      unfamiliar, metrics, paths)
