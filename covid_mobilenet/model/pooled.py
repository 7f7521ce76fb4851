"""The trained model's pooled backbone features, what the unfamiliar-image guard (``analysis/unfamiliar.py``) scores.

The study's model nests MobileNet in it (see ``gradcam.py`` for why it is taken apart rather than cut with a
sub-model): the layers before the backbone, the backbone, then the head. One pass gives both the class
probabilities and the backbone's output averaged over its spatial positions (1,024 values per image), so the
guard costs the product no second pass over the images.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .gradcam import find_backbone


class PooledOutputs:
    """``(probabilities, pooled features)`` of a trained model (pixels in) for a batch of uint8 images."""

    def __init__(self, model: keras.Model):
        self.backbone = find_backbone(model)
        position = model.layers.index(self.backbone)
        self.before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
        self.after = model.layers[position + 1:]
        self._call = tf.function(self._outputs, reduce_retracing=True)

    def _outputs(self, pixels):
        x = tf.cast(pixels, tf.float32)
        for layer in self.before:
            x = layer(x, training=False)
        features = self.backbone(x, training=False)
        x = features
        for layer in self.after:
            x = layer(x, training=False)
        return tf.cast(x, tf.float32), tf.reduce_mean(tf.cast(features, tf.float32), axis=(1, 2))

    def __call__(self, pixels, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities float64, rows summing to 1; pooled features float32) for uint8 images."""
        outputs = [self._call(tf.convert_to_tensor(pixels[start:start + batch_size]))
                   for start in range(0, len(pixels), batch_size)]
        if not outputs:
            return np.zeros((0, int(self.after[-1].units))), np.zeros((0, int(self.backbone.output.shape[-1])), np.float32)
        probabilities = np.concatenate([p.numpy() for p, _ in outputs]).astype(np.float64)
        return probabilities / probabilities.sum(axis=1, keepdims=True), np.concatenate([f.numpy() for _, f in outputs])

    def over(self, dataset: tf.data.Dataset) -> np.ndarray:
        """The pooled features of every image of a dataset of (images, labels) batches, in its order."""
        return np.concatenate([self._call(images)[1].numpy() for images, _ in dataset])


def pooled_maps(maps) -> np.ndarray:
    """Feature maps (N x h x w x C, the frozen backbone's cached output) averaged over their positions, as float32:
    the same average the whole model's backbone gives (within the cache's float16 rounding)."""
    return tf.reduce_mean(tf.cast(maps, tf.float32), axis=(1, 2)).numpy()
