"""The trained model's pooled backbone features, what the unfamiliar-image guard (``analysis/unfamiliar.py``) scores.

The study's model nests MobileNet in it (see ``gradcam.py`` for why it is taken apart rather than cut with a
sub-model): the layers before the backbone, the backbone, then the head. One pass gives both the class
probabilities and the backbone's output averaged over its spatial positions (1,024 values per image), so the
guard costs the product no second pass over the images. A run's predictions take the same pass (``pass_over``), and
with it, where Grad-CAM taps the backbone's output, each image's heatmap from the head's gradients alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .gradcam import GradCam, find_backbone


@dataclass
class Pass:
    """What one inference pass over a dataset gives, a row per image in its order."""

    probabilities: np.ndarray  # float64, rows summing to 1
    pooled: np.ndarray  # float32, the backbone's output averaged over its positions (the guard's features)
    cams: np.ndarray | None = None  # Grad-CAM of each image's predicted class at the backbone's output (N x h x w)
    cam_classes: np.ndarray | None = None  # the class each heatmap is for


class PooledOutputs:
    """``(probabilities, pooled features)`` of a trained model (pixels in) for a batch of uint8 images."""

    def __init__(self, model: keras.Model):
        self.backbone = find_backbone(model)
        position = model.layers.index(self.backbone)
        self.before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
        self.after = model.layers[position + 1:]
        self._call = tf.function(lambda pixels: self._outputs(pixels)[:2], reduce_retracing=True)
        self._call_with_maps = tf.function(self._outputs, reduce_retracing=True)

    def _outputs(self, pixels):
        """(probabilities, pooled features, the backbone's output maps)."""
        x = tf.cast(pixels, tf.float32)
        for layer in self.before:
            x = layer(x, training=False)
        features = self.backbone(x, training=False)
        x = features
        for layer in self.after:
            x = layer(x, training=False)
        return tf.cast(x, tf.float32), tf.reduce_mean(tf.cast(features, tf.float32), axis=(1, 2)), features

    def __call__(self, pixels, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities float64, rows summing to 1; pooled features float32) for uint8 images."""
        found = self.pass_over((tf.convert_to_tensor(pixels[start:start + batch_size]), None)
                               for start in range(0, len(pixels), batch_size))
        return found.probabilities, found.pooled

    def pass_over(self, dataset, gradcam: GradCam | None = None) -> Pass:
        """Probabilities and pooled features of every image of a dataset of (images, labels) batches (or any iterable
        of them), in its order; with ``gradcam`` (one that taps the backbone's output), each image's heatmap from the
        same maps: the head's gradients on the maps this pass computed, the very ones ``gradcam.cams(images)`` would
        compute again."""
        if gradcam is not None and not gradcam.taps_backbone_output:
            raise ValueError(f"Grad-CAM taps {gradcam.layer}, not the backbone's output: its maps are not this pass's")
        probabilities, pooled, cams, classes = [], [], [], []
        for images, _ in dataset:
            if gradcam is None:
                batch_probabilities, batch_pooled = self._call(images)
            else:
                batch_probabilities, batch_pooled, maps = self._call_with_maps(images)
                batch_cams, cam_probabilities = gradcam.cams_from_maps(maps)
                cams.append(batch_cams)
                classes.append(cam_probabilities.argmax(axis=1))
            probabilities.append(batch_probabilities.numpy())
            pooled.append(batch_pooled.numpy())
        if not probabilities:
            return Pass(np.zeros((0, int(self.after[-1].units))), np.zeros((0, int(self.backbone.output.shape[-1])), np.float32))
        rows = np.concatenate(probabilities).astype(np.float64)
        return Pass(rows / rows.sum(axis=1, keepdims=True), np.concatenate(pooled),
                    np.concatenate(cams) if cams else None, np.concatenate(classes) if classes else None)


def pooled_maps(maps) -> np.ndarray:
    """Feature maps (N x h x w x C, the frozen backbone's cached output) averaged over their positions, as float32:
    the same average the whole model's backbone gives (within the cache's float16 rounding)."""
    return tf.reduce_mean(tf.cast(maps, tf.float32), axis=(1, 2)).numpy()
