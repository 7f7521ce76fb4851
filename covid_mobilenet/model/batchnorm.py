"""BatchNorm statistics that match the trained weights (PreciseBN, Wu & Johnson 2021).

While the backbone trains, each BatchNorm layer keeps a moving average of its batches' statistics that
starts from the pretrained backbone's and moves by 1 - momentum a step. On a small data set, or on
images unlike the pretraining's (a region with everything else black), few steps leave those averages
far from the statistics of the trained network, and the model in inference mode answers almost one
class while in training mode it separates the images. ``recalibrate`` replaces every moving mean and
variance by the average of the batch statistics over the training images: a pass in training mode
that updates nothing else (no gradient, no weight changes).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def recalibrate(model: keras.Model, batches: tf.data.Dataset) -> int:
    """Set each BatchNorm layer's moving statistics to the mean of its batch statistics over ``batches`` of
    (images, labels); the number of batches. The batches should mix the classes as training's did: a batch of
    one class has a smaller variance.

    With momentum 0 a training-mode pass leaves exactly its batch's statistics in the moving ones; they are
    read after each batch and averaged. One compiled pass serves every batch (the momentum is a constant of
    the trace, which is why it is not changed batch by batch)."""
    layers = [layer for layer in batchnorm_layers(model) if layer.trainable]
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        forward = _compiled(lambda images: model(images, training=True), batches)
        for count, (images, _) in enumerate(batches, start=1):
            forward(images)
            for (means, variances), layer in zip(sums, layers):
                means += np.asarray(layer.moving_mean)
                variances += np.asarray(layer.moving_variance)
        for (means, variances), layer in zip(sums if count else [], layers):  # no batches: statistics untouched
            layer.moving_mean.assign(means / count)
            layer.moving_variance.assign(variances / count)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count


def accuracy(model: keras.Model, batches: tf.data.Dataset, *, batchnorm_training: bool = False) -> float:
    """Accuracy over ``batches`` of (images, labels) in inference mode, or with the BatchNorm layers on their batch
    statistics (``batchnorm_training``; Dropout stays off). The latter moves the moving statistics: recalibrate after."""
    forward = _compiled((lambda images: _call(model, images)) if batchnorm_training
                        else (lambda images: model(images, training=False)), batches)
    right = total = 0
    for images, labels in batches:
        probabilities = forward(images)
        right += int(np.sum(np.argmax(np.asarray(probabilities), axis=1) == np.asarray(labels)))
        total += int(labels.shape[0])
    return right / max(total, 1)


def _call(model: keras.Model, images):
    """The model with its nested backbone in training mode and every other layer in inference mode."""
    x = images
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        x = layer(x, training=isinstance(layer, keras.Model))
    return x


def _compiled(forward, batches):
    """``forward`` as one graph for every batch of ``batches``: traced once for a dataset (its element spec leaves
    the batch size open, so a last, smaller batch does not trace it again), once per shape for a list."""
    spec = getattr(batches, "element_spec", None)
    return tf.function(forward, input_signature=[spec[0]]) if spec is not None else tf.function(forward)
