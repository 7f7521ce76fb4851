"""The unfamiliar-image guard of one run (``analysis/unfamiliar.py``): the pooled backbone features of its training,
validation and test images, the guard fitted on them, and its record for metrics.json.

In fast mode the features are the cached output of the frozen backbone, pooled once per sweep (no pass over the
images, ``FeatureCache.pooled``); otherwise those the run's predictions pass gave (``run/predictions.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..analysis import unfamiliar as unfamiliar_analysis
from .shortcut_checks import ShortcutAnalysis


@dataclass
class Unfamiliar:
    """The unfamiliar-image guard fitted on the run's training images (``analysis/unfamiliar.py``) and its record."""

    guard: unfamiliar_analysis.Guard
    record: dict  # metrics.json's "unfamiliar"


def fit_run_guard(data, pooled: dict[str, np.ndarray] | None, analysis: ShortcutAnalysis, params: dict) -> Unfamiliar:
    """How unlike the training images an image is: fitted on the training images' pooled backbone features, its
    threshold chosen on validation's, the share of test images it flags; with a held-out source, how well it tells
    that source's test images from the others (AUROC). ``data``: the run's ``steps.PreparedData``; ``pooled``: the
    pooled features per subset from the predictions pass (None in fast mode)."""
    started = time.perf_counter()
    if data.features is not None:  # fast mode: the cached output of the frozen backbone, pooled
        features = {subset: data.features.pooled(subset) for subset in ("train", "val", "test")}
    else:
        features = pooled
    labels = data.split.subset("train")["label"].to_numpy()
    guard = unfamiliar_analysis.fit(features["train"], labels, features["val"], params["unfamiliar_method"],
                                    seed=params["seed"])
    seconds = time.perf_counter() - started
    test_scores, shifted = guard.scores(features["test"]), None
    if data.holdout is not None:  # the held-out source's test images: a shift the run can measure
        table = analysis.table
        held = ((table["true"] == data.holdout["class"]) & (table["source"] == data.holdout["source"])).to_numpy()
        shifted = {"name": f"{data.holdout['class']} images from the held-out source {data.holdout['source']}",
                   "scores": test_scores[held], "familiar_scores": test_scores[~held]}
        test_scores = test_scores[~held]
    record = unfamiliar_analysis.summary(guard, test_scores, shifted, seconds=seconds)
    print(f"Unfamiliar-image guard ({guard.method}): {record['test_flagged']['images']} of "
          f"{record['test_flagged']['of']} test images flagged (about {unfamiliar_analysis.FLAGGED_ON_VALIDATION:.0%} "
          f"expected), fitted in {seconds:.1f} s" + (f"; AUROC {record['shifted']['auroc']:.3f} against the held-out "
                                                     "source" if shifted else ""))
    return Unfamiliar(guard, record)
