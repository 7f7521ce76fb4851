"""A run's predictions on its split: one pass per subset, which without the feature cache also gives the guard's
pooled features and, where Grad-CAM taps the backbone's output, the test images' heatmaps (``model/pooled.py``), so
that no later step passes those images through the model again."""
from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from ..model.gradcam import GradCam
from ..model.inference import predicted_probabilities
from ..model.pooled import PooledOutputs


class Predictions(dict):
    """Every image's true class, predicted class and class probabilities: a table per subset (``train``, ``val``,
    ``test``), in split order. Beside them, from the same pass over the images (a run without the feature cache, whose
    pooled features the cache holds instead): ``pooled``, the backbone's pooled output per subset (the guard's
    features), and ``test_cams``, Grad-CAM of each test image's predicted class with that class, when Grad-CAM taps
    the backbone's output (``model/pooled.py``)."""

    def __init__(self, tables: dict[str, pd.DataFrame], pooled: dict[str, np.ndarray] | None = None,
                 test_cams: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__(tables)
        self.pooled = pooled
        self.test_cams = test_cams


def predict_split(model: keras.Model, data) -> Predictions:
    """Every image's true class, predicted class and class probabilities, per subset, in split order; without the
    feature cache, one pass over the images that also gives the guard's features and the test images' Grad-CAM.
    ``data``: the run's ``steps.PreparedData``."""
    tables, pooled, test_cams = {}, None, None
    if data.features is None:
        outputs, gradcam, pooled = PooledOutputs(model), GradCam(model), {}
    for subset in ("train", "val", "test"):
        batches = data.pipelines.batches(subset)  # in the split table's order
        if data.features is not None:  # the head on the cached features
            probabilities = predicted_probabilities(model, batches)
        else:
            found = outputs.pass_over(batches, gradcam if subset == "test" and gradcam.taps_backbone_output else None)
            probabilities, pooled[subset] = found.probabilities, found.pooled
            if found.cams is not None:
                test_cams = (found.cams, found.cam_classes)
        rows = data.split.subset(subset)
        if len(probabilities) != len(rows):
            raise RuntimeError(f"{len(probabilities)} {subset} predictions for the split table's {len(rows)} images")
        table = pd.DataFrame({"path": rows["path"].to_numpy(), "split": subset, "true": rows["label"].to_numpy(),
                              "predicted": [data.class_names[i] for i in probabilities.argmax(axis=1)]})
        for i, name in enumerate(data.class_names):
            table[f"p_{name}"] = probabilities[:, i]
        tables[subset] = table
    return Predictions(tables, pooled, test_cams)
