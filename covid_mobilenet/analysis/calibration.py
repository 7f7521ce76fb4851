"""Probabilities one can act on: temperature scaling, calibration error, operating points and abstaining.

Everything here reads a finished run's predictions (``predictions.csv``: validation rows to fit and choose,
test rows to report), never a model. Temperature scaling (Guo et al. 2017, "On Calibration of Modern
Neural Networks") fits one temperature T on the validation images by minimising their negative
log-likelihood; a calibrated probability is ``softmax(log p / T)``, which never changes the predicted class.
Validation splits are small, so a temperature can make test calibration worse: every figure comes with a
bootstrap interval over test images, and whether scaling helped is read off the interval of the difference.

- ECE: 15 equal-width bins of the top-label confidence, as in Guo et al.; MCE: the largest bin gap. The plug-in
  ECE is biased upward at small n (a calibrated model shows about 0.09 on 100 images, 0.04 on 600): beside it,
  ``ce2_debiased`` (Kumar et al. 2019) estimates the squared calibration error without that bias; its interval
  containing 0 says the test images cannot tell the model from a calibrated one.
- The operating points and the abstain threshold (``decisions.py``) are chosen on the calibrated validation
  probabilities and reported on test; ``calibrate`` puts everything into one record for ``metrics.json``.

scipy fits the temperature and gives the softmax. Free of TensorFlow.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, special

from ..common.config import calibration_settings
from .decisions import abstain_threshold, operating_points
from .metrics import EPSILON, brier_score, labels_and_probabilities, negative_log_likelihood
from .uncertainty import bootstrap_intervals

ECE_BINS = 15
TEMPERATURE_BOUNDS = (0.05, 20.0)  # a fitted temperature at a bound says the validation data pulled it there
CALIBRATED_PREFIX = "calibrated_"  # predictions.csv: calibrated_p_<class> beside p_<class>


def temperature_scale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``, row by row: the calibrated probabilities (T=1 gives ``p`` back)."""
    logits = np.log(np.clip(np.asarray(probabilities, np.float64), EPSILON, 1.0)) / temperature
    return special.softmax(logits, axis=1)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (validation images), by scipy."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("a temperature is fitted on validation predictions: there are none")
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = optimize.minimize_scalar(lambda log_t: negative_log_likelihood(labels, temperature_scale(probabilities, math.exp(log_t))),
                                      bounds=(low, high), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))


def _bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each confidence's bin among ``bins`` equal-width bins of (0, 1] (right-closed, as in Guo et al.)."""
    return np.clip(np.ceil(np.asarray(confidence) * bins).astype(int) - 1, 0, bins - 1)


def _binned(labels: np.ndarray, probabilities: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per non-empty bin of the top-label confidence: (bin, images, mean confidence, accuracy). numpy alone, as the
    bootstrap calls it thousands of times."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = _bins(confidence, bins)
    images = np.bincount(which, minlength=bins)
    filled = np.flatnonzero(images)
    return (filled, images[filled], np.bincount(which, confidence, bins)[filled] / images[filled],
            np.bincount(which, correct, bins)[filled] / images[filled])


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> pd.DataFrame:
    """Top-label reliability: per bin, images, mean confidence and accuracy (empty bins left out)."""
    which, images, confidence, accuracy = _binned(labels, probabilities, bins)
    return pd.DataFrame({"bin": which, "images": images, "confidence": confidence, "accuracy": accuracy,
                         "low": which / bins, "high": (which + 1) / bins})


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the bins' |accuracy - confidence|, weighted by their share of images."""
    _, images, confidence, accuracy = _binned(labels, probabilities, bins)
    return float((images * np.abs(accuracy - confidence)).sum() / images.sum())


def maximum_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """MCE: the largest |accuracy - confidence| of a non-empty bin."""
    _, _, confidence, accuracy = _binned(labels, probabilities, bins)
    return float(np.abs(accuracy - confidence).max())


def debiased_squared_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """Kumar et al. 2019's debiased estimate of the squared top-label calibration error over the ECE's bins: each
    bin's squared gap (accuracy - confidence)^2 less its sampling variance accuracy(1 - accuracy)/(n - 1), weighted
    by the bin's share of images (bins of one image left out). The plug-in ECE is biased upward, the more so the
    fewer the images: a perfectly calibrated model shows ECE near 0.09 on 100 images. This estimate is not: near 0
    for a calibrated model, it may fall below 0, and its bootstrap interval then contains 0."""
    which, images, confidence, accuracy = _binned(labels, probabilities, bins)
    several = images > 1
    images, confidence, accuracy = images[several], confidence[several], accuracy[several]
    if not len(images):
        return 0.0
    gap = (accuracy - confidence) ** 2 - accuracy * (1 - accuracy) / (images - 1)
    return float((images * gap).sum() / images.sum())


SCORES = {"ece": expected_calibration_error, "mce": maximum_calibration_error,
          "ce2_debiased": debiased_squared_calibration_error, "brier": brier_score, "nll": negative_log_likelihood}


def scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """ECE, MCE, Brier score and NLL of one set of predictions."""
    return {name: score(labels, probabilities) for name, score in SCORES.items()}


def scores_with_intervals(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray) -> dict:
    """Each score before and after scaling, and after minus before, with bootstrap intervals over the same images
    (one set of resamples for all of them)."""
    labels, names = np.asarray(labels), list(SCORES)

    def every_score(rows: np.ndarray) -> np.ndarray:
        before = np.array([SCORES[name](labels[rows], raw[rows]) for name in names])
        after = np.array([SCORES[name](labels[rows], calibrated[rows]) for name in names])
        return np.concatenate([before, after, after - before])

    rows = np.arange(len(labels))
    values, intervals = every_score(rows), bootstrap_intervals(every_score, rows)
    count, figures = len(names), {}
    for k, name in enumerate(names):
        before, after, change = ({"value": float(values[k + part * count]), **intervals[k + part * count]} for part in range(3))
        figures[name] = {"before": before, "after": after, "change": change, "helped": verdict(change)}
    return figures


def verdict(difference: dict) -> str:
    """Whether scaling lowered a score: 'yes' or 'no' when the interval of after minus before excludes zero,
    else 'not shown'."""
    if difference["high"] < 0:
        return "yes"
    if difference["low"] > 0:
        return "no (worse)"
    return "not shown"


def ece_by_group(labels: np.ndarray, probabilities: np.ndarray, groups: pd.Series) -> list[dict]:
    """ECE, accuracy and mean confidence per group (a source), with each group's number of images."""
    rows = []
    groups = pd.Series(np.asarray(groups)).fillna("unknown")
    for group in sorted(groups.unique()):
        chosen = (groups == group).to_numpy()
        p = np.asarray(probabilities)[chosen]
        rows.append({"group": str(group), "images": int(chosen.sum()), "ece": expected_calibration_error(labels[chosen], p),
                     "accuracy": float((p.argmax(axis=1) == labels[chosen]).mean()),
                     "mean_confidence": float(p.max(axis=1).mean())})
    return rows


def calibrated_columns(table: pd.DataFrame, class_names: list[str], temperature: float) -> pd.DataFrame:
    """``table`` with ``calibrated_p_<class>`` beside its ``p_<class>`` columns."""
    _, probabilities = labels_and_probabilities(table, class_names)
    calibrated = temperature_scale(probabilities, temperature)
    table = table.copy()
    for i, name in enumerate(class_names):
        table[f"{CALIBRATED_PREFIX}p_{name}"] = calibrated[:, i]
    return table


def calibrate(predictions: pd.DataFrame, class_names: list[str], settings: dict | None = None,
              shortcuts: pd.DataFrame | None = None) -> tuple[dict, pd.DataFrame]:
    """A run's ``calibration`` record and its predictions with the calibrated columns.

    ``predictions``: the rows of ``predictions.csv`` (``split`` val and test); ``shortcuts``: the rows of
    ``shortcuts.csv`` (``source`` and the no-lungs probabilities ``p_no_lungs_<class>``), when the run has them.
    """
    settings = calibration_settings({"calibration": settings or {}})  # experiments.json's defaults and checks
    val, test = (predictions[predictions["split"] == subset] for subset in ("val", "test"))
    val_labels, val_raw = labels_and_probabilities(val, class_names)
    test_labels, test_raw = labels_and_probabilities(test, class_names)
    temperature = fit_temperature(val_labels, val_raw)
    val_calibrated, test_calibrated = temperature_scale(val_raw, temperature), temperature_scale(test_raw, temperature)
    record = {
        "method": f"temperature scaling fitted on the {len(val)} validation images (validation NLL minimised, scipy); "
                  f"ECE over {ECE_BINS} equal-width bins of the top-label confidence",
        "temperature": temperature,
        "at_bound": bool(np.isclose(temperature, TEMPERATURE_BOUNDS, rtol=1e-3).any()),
        "settings": settings,
        "val": {"images": len(val), "before": scores(val_labels, val_raw), "after": scores(val_labels, val_calibrated)},
        "test": {"images": len(test), **scores_with_intervals(test_labels, test_raw, test_calibrated)},
        "operating_points": operating_points(val_labels, val_calibrated, test_labels, test_calibrated, class_names,
                                             settings["target_sensitivity"]),
        "abstain": abstain_threshold(val_labels, val_calibrated, test_labels, test_calibrated, settings["target_accuracy"]),
    }
    if shortcuts is not None:
        record.update(where_calibration_breaks(test, test_labels, test_calibrated, shortcuts, class_names, temperature))
    return record, calibrated_columns(predictions, class_names, temperature)


NO_LUNGS_PREFIX = "p_no_lungs_"  # shortcuts.csv: the probabilities of each test image with its lungs removed


def where_calibration_breaks(test: pd.DataFrame, labels: np.ndarray, calibrated: np.ndarray, shortcuts: pd.DataFrame,
                             class_names: list[str], temperature: float) -> dict:
    """ECE per source, and on the test images with their lungs removed (calibrated with the same T)."""
    shortcuts = shortcuts.set_index("path")
    found = test["path"].isin(shortcuts.index).to_numpy()
    record = {}
    if "source" in shortcuts.columns and found.any():
        sources = shortcuts.loc[test["path"][found], "source"]
        record["by_source"] = ece_by_group(labels[found], calibrated[found], sources)
    columns = [f"{NO_LUNGS_PREFIX}{name}" for name in class_names]
    if set(columns) <= set(shortcuts.columns):
        rows = shortcuts.loc[test["path"][found], columns]
        usable = rows.notna().all(axis=1).to_numpy()  # images without a usable mask have no no-lungs prediction
        truth = labels[found][usable]
        if usable.any():
            no_lungs = temperature_scale(rows.to_numpy(np.float64)[usable], temperature)
            wrong = no_lungs.argmax(axis=1) != truth
            record["no_lungs"] = {
                "images": int(usable.sum()), "ece": expected_calibration_error(truth, no_lungs),
                "accuracy": float(1 - wrong.mean()), "mean_confidence": float(no_lungs.max(axis=1).mean()),
                "mean_confidence_when_wrong": float(no_lungs.max(axis=1)[wrong].mean()) if wrong.any() else None,
            }
    return record
