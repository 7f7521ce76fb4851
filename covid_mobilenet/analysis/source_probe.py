"""Can the images tell their source? Inside each class with two or more sources, a logistic regression on the frozen
backbone's features predicts each image's source, cross-validated.

If it does far better than always naming the class's commonest source, the features carry the collection an image
came from, and a classifier has a shortcut at hand: it could learn the collection instead of the disease. (It shows
that the shortcut is available, not that a model took it: the shortcut checks and ``--holdout-sources`` ask that.)
A class with a single source cannot be probed: inside this data set nothing separates its label from its source.

Folds keep near-duplicate groups whole (scikit-learn's ``StratifiedGroupKFold``): a copy of a film in the other
folds would let the probe recognise the film, not its source. The probe runs twice, on the backbone's last
convolutional maps pooled two ways: averaged over positions (what the whole image looks like) and the maximum over
positions (a small local mark, a marker or text in a corner, which averaging washes out).
Free of TensorFlow: it reads features already computed (``run/audit.py``).
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .uncertainty import wilson_interval

FOLDS = 5
MIN_IMAGES_PER_SOURCE = 5  # fewer and the source cannot be in every fold's test part: left out, listed


POOLINGS = {"mean": "averaged over positions", "max": "maximum over positions"}


def probe_class(features: np.ndarray, sources: list[str], groups: np.ndarray | None = None, *, seed: int = 0) -> dict:
    """One class: cross-validated accuracy of predicting the source from the features, folds keeping each group
    (``groups``: near-duplicate group per row; default every row its own) whole, with its Wilson interval, against
    the majority source's share (what always naming that source scores)."""
    sources = np.asarray(sources)
    groups = np.arange(len(sources)) if groups is None else np.asarray(groups)
    names, counts = np.unique(sources, return_counts=True)
    distinct = {name: len(set(groups[sources == name])) for name in names}
    kept = np.array([name for name in names if distinct[name] >= MIN_IMAGES_PER_SOURCE])
    record = {"images": int(len(sources)), "sources": {str(n): int(c) for n, c in zip(names, counts)},
              "left_out_sources": [str(n) for n in names if n not in kept]}
    if len(kept) < 2:
        return {**record, "testable": False,
                "reason": "a single source" if len(names) < 2 else f"fewer than two sources with {MIN_IMAGES_PER_SOURCE} distinct images"}
    rows = np.isin(sources, kept)
    x, y, g = np.asarray(features, np.float32)[rows], sources[rows], groups[rows]
    folds = min(FOLDS, min(distinct[name] for name in kept))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    predicted = cross_val_predict(model, x, y, groups=g, cv=StratifiedGroupKFold(folds, shuffle=True, random_state=seed))
    correct = int((predicted == y).sum())
    majority = float(max(np.mean(y == name) for name in kept))
    interval = wilson_interval(correct, len(y))
    return {**record, "testable": True, "probed_images": int(len(y)), "groups": int(len(set(g))), "folds": folds,
            "correct": correct, "accuracy": correct / len(y), "interval": interval, "majority": majority,
            "above_majority": interval["low"] > majority}


def source_probe(features: np.ndarray, labels: list[str], sources: list[str], groups=None, *, seed: int = 0) -> dict:
    """Every class probed (``features``: one row per image, pooled; ``labels`` its class, ``sources`` its source,
    ``groups`` its near-duplicate group; images of an unknown source are left out)."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    known = ~np.char.startswith(sources.astype(str), "unknown")
    return {str(label): probe_class(features[(labels == label) & known], list(sources[(labels == label) & known]),
                                    groups[(labels == label) & known], seed=seed)
            for label in sorted(set(labels))}


def pooled(maps: np.ndarray, pooling: str) -> np.ndarray:
    """Feature maps (images x positions... x channels) pooled over their positions: "mean" or "max"."""
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1, maps.shape[-1])
    return flat.mean(axis=1) if pooling == "mean" else flat.max(axis=1)


def spatial_probe(features: dict[str, np.ndarray], labels: list[str], sources: list[str], groups=None, *,
                  seed: int = 0) -> dict:
    """The probe of the features pooled each way (``features``: {pooling of ``POOLINGS``: rows}): {pooling: probe}."""
    return {pooling: source_probe(rows, labels, sources, groups, seed=seed) for pooling, rows in features.items()}


def which_found(probes: dict) -> list[str]:
    """Per class, which pooling found the source (``probes``: spatial_probe's record), in words."""
    lines = []
    for label in probes["mean"]:
        if not probes["mean"][label]["testable"]:
            continue
        found = [pooling for pooling in POOLINGS if probes[pooling][label]["above_majority"]]
        if found == ["max"]:
            lines.append(f"- {label}: only the maximum over positions finds the source: a small local mark (a marker, "
                         "text, a corner) gives it away, not the image as a whole.")
        elif found:
            lines.append(f"- {label}: found by {' and '.join(POOLINGS[p] for p in found)}.")
        else:
            lines.append(f"- {label}: neither pooling finds the source.")
    return lines


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
            f"{result['folds']}-fold cross-validation, near-duplicates kept in one fold), against {100 * result['majority']:.1f}% for always naming the commonest: "
            + ("**the features carry the source**." if result["above_majority"] else "not above it at 95%."))
    return lines
