"""A trained model's class probabilities over a dataset, in inference mode."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def predicted_probabilities(model, dataset: tf.data.Dataset) -> np.ndarray:
    """Predicted class probabilities over one pass of ``dataset`` of (inputs, labels) batches, a row per example.
    The labels are not read back: they are the split table's (a second pass for them re-read every input)."""
    # Keras' predict, not predict_on_batch: under MirroredStrategy it splits each batch over the
    # replicas and puts the rows back in order (predict_on_batch returned every row once per replica).
    probabilities = np.asarray(model.predict(dataset.map(lambda inputs, labels: inputs), verbose=0), dtype=np.float64)
    # float32 softmax rows sum to 1 only within rounding; scikit-learn's AUC wants exact probabilities
    return probabilities / probabilities.sum(axis=1, keepdims=True)
