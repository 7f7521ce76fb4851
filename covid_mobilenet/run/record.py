"""A finished run's record, ``metrics.json``: what it ran on, how it did on every split with its intervals, what it
looks at, how long it took and on what; and the same in a few lines of words for the notebook."""
from __future__ import annotations

from datetime import datetime, timezone

import keras
import pandas as pd

from ..analysis import metrics as classification
from ..analysis.uncertainty import single_run_intervals
from ..common import machine
from ..common.run_layout import PREDICTIONS_FILE
from ..data.demo import is_demo_dataset
from ..data.masks import REGION_LABELS


def metrics_record(model: keras.Model, data, predictions: dict[str, pd.DataFrame], params: dict, history: pd.DataFrame,
                   runtime, checks: dict) -> dict:
    """The full record of a finished run (``data``: the run's PreparedData, ``runtime``: its Runtime)."""
    results = {}
    for subset, table in predictions.items():
        labels, probabilities = classification.labels_and_probabilities(table, data.class_names)
        if subset == "test":
            results[subset] = classification.classification_report(labels, probabilities, data.class_names)
            results[subset]["intervals"] = single_run_intervals(labels, probabilities.argmax(axis=1), len(data.class_names))
        else:
            last = history.iloc[-1]
            prefix = "" if subset == "train" else "val_"
            results[subset] = {
                **classification.loss_and_accuracy(labels, probabilities),  # without dropout, final weights
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
            "duplicates": data.duplicates,  # near-duplicate groups, label conflicts (data/grouping.py)
            "holdout_source": data.holdout,  # a class's images from one source, moved to test (data/sources.py)
        },
        "model": {
            "name": model.name,
            "parameters": int(model.count_params()),
            "trainable_parameters": int(sum(keras.ops.size(w) for w in model.trainable_weights)),
        },
        **results,
        **checks,  # "shortcuts", "sources" and "batchnorm"
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
        "peak_rss_gib": machine.peak_rss_gib(),
        "environment": machine.environment(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def summary_line(metrics: dict) -> str:
    """A run's test figures and time in one line."""
    test = metrics["test"]
    return (
        f"{metrics['experiment']}: test accuracy {test['accuracy']:.4f}, macro F1 {test['macro_f1']:.4f}, "
        f"loss {test['loss']:.4f}; {metrics['epochs_run']} epochs in {metrics['train_seconds']:.1f} s "
        f"({metrics['images_per_second']:.1f} images/s)"
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
