"""A trained model's class probabilities over a dataset, in inference mode."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def predicted_probabilities(model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted class probabilities) over one pass of ``dataset`` of (inputs, labels) batches."""
    # Keras' predict, not predict_on_batch: under MirroredStrategy it splits each batch over the
    # replicas and puts the rows back in order (predict_on_batch returned every row once per replica).
    probabilities = np.asarray(model.predict(dataset.map(lambda inputs, labels: inputs), verbose=0), dtype=np.float64)
    labels = np.concatenate([batch_labels.numpy() for _, batch_labels in dataset])
    # float32 softmax rows sum to 1 only within rounding; scikit-learn's AUC wants exact probabilities
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)
