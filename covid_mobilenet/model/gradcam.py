"""Grad-CAM (Selvaraju et al., 2017) for the study's model: where in the image the evidence for a class lies.

The study's model nests MobileNet inside the outer functional model, and Keras 3 cannot build
a sub-model from the outer input to a nested layer's output ("Graph disconnected"). So the
model is taken apart: the layers before the backbone, the backbone as a model of its own
that also returns the tapped activation, and the head's layers after it, all run inside one
gradient tape. The class score is the last layer's output before the softmax.

The tapped layer is MobileNet's last convolutional activation, ``conv_pw_13_relu``, when its
map is at least ``MIN_MAP_SIZE`` wide (7x7 at 224 pixels). At small image sizes (the demo's 48
pixels give it 1x1, which can show nothing) it is the last pointwise activation whose map is
that wide; the run records which layer it used.
"""
from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

LAST_CONV_LAYER = "conv_pw_13_relu"
MIN_MAP_SIZE = 6
_POINTWISE = re.compile(r"conv_pw_(\d+)_relu$")


class GradCamError(ValueError):
    """The model is not one Grad-CAM can take apart; the message says why."""


def find_backbone(model: keras.Model) -> keras.Model:
    """The nested backbone (the one layer of ``model`` that is itself a model)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise GradCamError(
            f"Grad-CAM needs the study's model (MobileNet nested in it, then the head); {model.name} has "
            f"{len(nested)} nested models. A fast-mode head alone must first be joined to its backbone "
            "(run.steps.full_model)."
        )
    return nested[0]


def choose_layer(backbone: keras.Model, min_size: int = MIN_MAP_SIZE) -> str:
    """``conv_pw_13_relu`` when its map is at least ``min_size`` wide, else the last pointwise activation that is."""
    pointwise = sorted((int(m.group(1)), layer) for layer in backbone.layers if (m := _POINTWISE.match(layer.name)))
    if not pointwise:
        raise GradCamError(f"{backbone.name} has no MobileNet pointwise activation (conv_pw_<n>_relu) to tap.")
    wide = [layer for _, layer in pointwise if layer.output.shape[1] >= min_size]
    return (wide or [pointwise[0][1]])[-1].name


class GradCam:
    """Heatmaps of a trained model; ``cams(images)`` takes raw uint8 pixels like the model itself."""

    def __init__(self, model: keras.Model, layer: str | None = None):
        self.backbone = find_backbone(model)
        position = model.layers.index(self.backbone)
        self.before = [layer for layer in model.layers[:position] if not isinstance(layer, keras.layers.InputLayer)]
        self.after = model.layers[position + 1:]
        self.layer = layer or choose_layer(self.backbone)
        tapped = self.backbone.get_layer(self.layer).output
        self.taps = keras.Model(self.backbone.inputs, [tapped, self.backbone.output], name="gradcam_taps")
        self.map_size = tuple(int(d) for d in tapped.shape[1:3])

    def cams(self, images, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps at the tapped layer's resolution, N x h x w, >= 0; class probabilities, N x C).

        The heatmap of each image is for ``classes[i]``, or for its predicted class when None.
        """
        pixels = tf.cast(tf.convert_to_tensor(images), tf.float32)
        with tf.GradientTape() as tape:
            x = pixels
            for layer in self.before:
                x = layer(x)
            activation, x = self.taps(x, training=False)
            logits = self._logits(x)
            score = _class_score(logits, classes)
        return _heatmaps(tape, score, activation, logits)

    @property
    def taps_backbone_output(self) -> bool:
        """Whether the tapped layer is the backbone's output: then a frozen backbone's cached features are the very
        maps Grad-CAM needs (``cams_from_maps``), and no pass through the backbone is needed."""
        return self.layer == self.backbone.layers[-1].name

    def cams_from_maps(self, maps, classes=None) -> tuple[np.ndarray, np.ndarray]:
        """``cams`` from the backbone's output itself (a frozen backbone's cached features): exact, since the head
        is all that lies between the maps and the class score; only when ``taps_backbone_output``."""
        if not self.taps_backbone_output:
            raise GradCamError(f"the tapped layer {self.layer} is not the backbone's output: its maps are not the "
                               "cached features; use cams(images)")
        activation = tf.cast(tf.convert_to_tensor(maps), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(activation)
            logits = self._logits(activation)
            score = _class_score(logits, classes)
        return _heatmaps(tape, score, activation, logits)

    def head_probabilities(self, features, batch_size: int = 256) -> np.ndarray:
        """The model's class probabilities from its backbone's output (cached features), without the backbone."""
        rows = [tf.nn.softmax(self._logits(tf.cast(features[start:start + batch_size], tf.float32))).numpy()
                for start in range(0, len(features), batch_size)]
        return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, int(self.after[-1].units)))

    def _logits(self, x):
        for layer in self.after[:-1]:
            x = layer(x, training=False)
        last = self.after[-1]
        if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
            logits = tf.matmul(tf.cast(x, tf.float32), tf.cast(last.kernel, tf.float32))
            return logits + tf.cast(last.bias, tf.float32) if last.use_bias else logits
        return tf.cast(last(x, training=False), tf.float32)  # not a softmax: its output is the score


def _class_score(logits, classes):
    """The summed score of each image's class (``classes[i]``, or its predicted class when None). Images do not
    interact in inference mode, so the gradient of the sum is each image's own."""
    chosen = tf.argmax(logits, axis=1) if classes is None else tf.convert_to_tensor(classes, tf.int64)
    return tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))


def _heatmaps(tape, score, activation, logits) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM: the activation weighted by its spatially averaged gradient, summed over channels, kept positive;
    with the class probabilities."""
    gradients = tf.cast(tape.gradient(score, activation), tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cams = tf.nn.relu(tf.reduce_sum(weights * tf.cast(activation, tf.float32), axis=-1))
    return cams.numpy(), tf.nn.softmax(logits).numpy()


def upsample(cams: np.ndarray, size: int) -> np.ndarray:
    """Heatmaps resized (bilinear) to the image's side, as for an overlay or a mask."""
    return tf.image.resize(np.asarray(cams, np.float32)[..., None], [size, size], method="bilinear").numpy()[..., 0]


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """The share of a heatmap's positive energy inside ``mask`` (energy-based pointing game, Wang et al. 2020);
    NaN when the map holds no positive energy. A uniform map gives the mask's share of the image."""
    positive = np.clip(np.asarray(cam, np.float64), 0, None)
    total = positive.sum()
    return float(positive[np.asarray(mask, bool)].sum() / total) if total > 0 else float("nan")


def overlay_panel(images: np.ndarray, cams: np.ndarray, titles: list[str], lungs: list[np.ndarray | None],
                  columns: int, title: str) -> Figure:
    """Images in a grid with their heatmaps over them and the lung mask's outline."""
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(2.6 * columns, 2.8 * rows))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, cam, text, mask in zip(axes, images, cams, titles, lungs):
        ax.imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0, vmax=255)
        peak = cam.max()
        ax.imshow(cam / peak if peak > 0 else cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        if mask is not None and mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(text, fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure
