"""The input pipeline and training speed: the project's tf.data pipeline against Keras'
``image_dataset_from_directory``, training fed by it against batches already in memory, and float32
against the reduced precision this hardware has."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..data.layout import IMAGES_FOLDER
from ..data.pipeline import SplitPipelines, decoded
from ..model.architecture import build_model, compile_model
from ..model.runtime import cpu_has_bfloat16


def measure_pipeline(root: Path, index, image_size: int, batch_size: int, epochs: int = 3) -> dict:
    """Images/s of each epoch, the project's pipeline against Keras' image_dataset_from_directory."""
    pipelines = _training_pipeline(index, image_size, batch_size)
    project = pipelines.training_epochs(0, epochs)
    with tempfile.TemporaryDirectory() as folders:
        # The baseline reads class folders of images; the real layout keeps masks beside images/,
        # so it is pointed at each class's images/ folder through a link.
        for name in index.class_names:
            os.symlink(root / name / IMAGES_FOLDER, Path(folders) / name)
        baseline = keras.utils.image_dataset_from_directory(
            folders, image_size=(image_size, image_size), batch_size=batch_size, shuffle=True, seed=0,
            follow_links=True, verbose=False,
        )
        baseline_rates = [_images_per_second(baseline) for _ in range(epochs)]
    project_rates = _images_per_second_per_epoch(project, pipelines.steps_per_epoch, epochs)
    result = {
        "images": pipelines.sizes["train"],
        "baseline": {"epochs": baseline_rates, "first_epoch": baseline_rates[0], "later_epochs": float(np.median(baseline_rates[1:]))},
        "project": {"epochs": project_rates, "first_epoch": project_rates[0], "later_epochs": float(np.median(project_rates[1:]))},
    }
    print(f"pipeline images/s by epoch: image_dataset_from_directory {_rounded(baseline_rates)}, project {_rounded(project_rates)}")
    return result


def _training_pipeline(index, image_size: int, batch_size: int) -> SplitPipelines:
    """The pipeline training reads (decoded once, cached in memory, shuffled per epoch), over every image."""
    paths = [str(index.root / p) for p in index.images["path"]]
    classes = {name: i for i, name in enumerate(index.class_names)}
    labels = [classes[label] for label in index.images["label"]]
    return SplitPipelines({"train": decoded(paths, labels, image_size=image_size)}, {"train": len(paths)}, batch_size, seed=0)


def _images_per_second(dataset: tf.data.Dataset) -> float:
    count, start = 0, time.perf_counter()
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def _images_per_second_per_epoch(dataset: tf.data.Dataset, steps_per_epoch: int, epochs: int) -> list[float]:
    """The project's epochs come as one stream of batches; time each epoch's share of it."""
    per_epoch = steps_per_epoch
    rates, count, start = [], 0, time.perf_counter()
    for i, (images, _) in enumerate(dataset, start=1):
        count += int(images.shape[0])
        if i % per_epoch == 0:
            rates.append(count / (time.perf_counter() - start))
            count, start = 0, time.perf_counter()
    return rates


def measure_training(index, image_size: int, batch_size: int, steps: int, rounds: int = 2) -> tuple[dict, tf.data.Dataset]:
    """Training images/s of the study's model (fine-tuned, as the study did) fed by the project's pipeline,
    against the same model on the same batches held in memory as tensors (returned too)."""
    pipelines = _training_pipeline(index, image_size, batch_size)
    for _ in pipelines.training_epochs(0, 1):
        pass  # the first epoch decodes and caches: the timed ones below are epochs 2 and later
    in_memory = list(pipelines.training_epochs(1, 2).take(steps))
    ceiling = tf.data.Dataset.from_tensor_slices((tf.stack([x for x, _ in in_memory]), tf.stack([y for _, y in in_memory])))

    model = _study_model(len(index.class_names), image_size)
    timer = _EpochSeconds()
    # Not timed: each source's first fit traces the training step for its batch shape.
    model.fit(ceiling, epochs=1, shuffle=False, verbose=0)
    model.fit(pipelines.training_epochs(2, 3).take(steps), epochs=1, shuffle=False, verbose=0)
    rates = {"pipeline": [], "ceiling": []}
    for round_ in range(rounds):  # alternated, so that drift in the machine's speed hits both alike
        model.fit(pipelines.training_epochs(3 + round_, 4 + round_).take(steps), epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        rates["pipeline"].append(steps * batch_size / timer.seconds)
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        rates["ceiling"].append(steps * batch_size / timer.seconds)
    result = {name: float(np.median(values)) for name, values in rates.items()}
    result.update({"runs": rates, "steps": steps, "batch_size": batch_size, "model": "MobileNet-F-D(8), train_base=True, float32"})
    print(f"training images/s: pipeline {_rounded(rates['pipeline'])}, in-memory tensors {_rounded(rates['ceiling'])}")
    return result, ceiling


def measure_precision(training: dict, ceiling: tf.data.Dataset, num_classes: int, image_size: int) -> dict:
    """The reduced precision this hardware has, against float32 (the ceiling figure), same model and batches."""
    reduced = "mixed_float16" if tf.config.list_physical_devices("GPU") else ("mixed_bfloat16" if cpu_has_bfloat16() else None)
    result = {"float32": {"images_per_second": training["ceiling"]}}
    if reduced is None:
        print("precision: float32 only (no bfloat16 instructions on this CPU)")
        return result
    keras.mixed_precision.set_global_policy(reduced)
    try:
        model, timer = _study_model(num_classes, image_size), _EpochSeconds()
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0)  # traces: not timed
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result[reduced] = {"images_per_second": training["steps"] * training["batch_size"] / timer.seconds}
    print(f"training images/s: {reduced} {result[reduced]['images_per_second']:.1f}, float32 {training['ceiling']:.1f}")
    return result


def _study_model(num_classes: int, image_size: int) -> keras.Model:
    model = build_model(num_classes, image_size=image_size, hidden_layers=1, dense_units=8, dropout=0.5,
                        weights=None, train_base=True, seed=0)
    return compile_model(model, 1e-5)


class _EpochSeconds(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self._start


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]
