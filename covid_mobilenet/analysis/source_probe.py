"""Can the images tell their source? Inside each class with two or more sources, a logistic regression on the frozen
backbone's features predicts each image's source, cross-validated.

If it does far better than always naming the class's commonest source, the features carry the collection an image
came from, and a classifier has a shortcut at hand: it could learn the collection instead of the disease. (It shows
that the shortcut is available, not that a model took it: the shortcut checks and ``--holdout-sources`` ask that.)
A class with a single source cannot be probed: inside this data set nothing separates its label from its source.
Free of TensorFlow: it reads features already computed (``run/audit.py``).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .uncertainty import wilson_interval

FOLDS = 5
MIN_IMAGES_PER_SOURCE = 5  # fewer and the source cannot be in every fold's test part: left out, listed


def probe_class(features: np.ndarray, sources: list[str], *, seed: int = 0) -> dict:
    """One class: cross-validated accuracy of predicting the source from the features, with its Wilson
    interval, against the majority source's share (what always naming that source scores)."""
    sources = np.asarray(sources)
    names, counts = np.unique(sources, return_counts=True)
    kept = names[counts >= MIN_IMAGES_PER_SOURCE]
    record = {"images": int(len(sources)), "sources": {str(n): int(c) for n, c in zip(names, counts)},
              "left_out_sources": [str(n) for n in names if n not in kept]}
    if len(kept) < 2:
        return {**record, "testable": False,
                "reason": "a single source" if len(names) < 2 else f"fewer than two sources with {MIN_IMAGES_PER_SOURCE} images"}
    rows = np.isin(sources, kept)
    x, y = np.asarray(features, np.float32)[rows], sources[rows]
    folds = min(FOLDS, int(min(counts[counts >= MIN_IMAGES_PER_SOURCE])))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    predicted = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    correct = int((predicted == y).sum())
    majority = float(max(np.mean(y == name) for name in kept))
    return {**record, "testable": True, "probed_images": int(len(y)), "folds": folds, "correct": correct,
            "accuracy": correct / len(y), "interval": wilson_interval(correct, len(y)), "majority": majority,
            "above_majority": wilson_interval(correct, len(y))["low"] > majority}


def source_probe(features: np.ndarray, labels: list[str], sources: list[str], *, seed: int = 0) -> dict:
    """Every class probed (``features``: one row per image, pooled; ``labels`` its class, ``sources`` its source;
    images of an unknown source are left out)."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    known = ~np.char.startswith(sources.astype(str), "unknown")
    return {str(label): probe_class(features[(labels == label) & known], list(sources[(labels == label) & known]), seed=seed)
            for label in sorted(set(labels))}


def probe_lines(probe: dict) -> list[str]:
    """The probe in words, one line per class."""
    lines = []
    for label, result in probe.items():
        if not result["testable"]:
            lines.append(f"- {label}: not testable ({result['reason']}: {', '.join(result['sources']) or 'none known'}); inside "
                         "this data set its label cannot be told apart from its source.")
            continue
        interval = result["interval"]
        lines.append(
            f"- {label}: the source is predicted right for {100 * result['accuracy']:.1f}% [{100 * interval['low']:.1f}, "
            f"{100 * interval['high']:.1f}] of {result['probed_images']} images ({len(result['sources'])} sources, "
            f"{result['folds']}-fold cross-validation), against {100 * result['majority']:.1f}% for always naming the commonest: "
            + ("**the features carry the source**." if result["above_majority"] else "not above it at 95%."))
    return lines
