"""The study's model: MobileNet without its top, Flatten, hidden Dense+Dropout blocks, softmax.

MobileNet's own preprocessing (pixels 0..255 to [-1, 1]) is the model's first
layer, so a saved model takes raw pixels.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import keras

# Keras downloads MobileNet's ImageNet weights from here (keras.applications.mobilenet).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
IMAGENET_SIZES = (128, 160, 192, 224)  # image sizes with their own ImageNet weights file


class WeightsError(RuntimeError):
    """The requested backbone weights cannot be had or do not fit; the message says what to do."""


def imagenet_weights_file(image_size: int) -> str:
    """The file Keras loads for weights='imagenet' (other sizes reuse the 224 weights)."""
    rows = image_size if image_size in IMAGENET_SIZES else 224
    return f"mobilenet_1_0_{rows}_tf_no_top.h5"


def keras_cache_dirs() -> list[Path]:
    """Where keras.utils.get_file keeps downloads: $KERAS_HOME or ~/.keras, or /tmp/.keras when that is read-only."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return [home / "models", Path("/tmp/.keras/models")]


def ensure_weights_available(weights: str | None, image_size: int, timeout: float = 5.0) -> None:
    """Fail within seconds, before any data is read, when weights='imagenet' can neither be found nor downloaded."""
    if weights != "imagenet":
        return
    name = imagenet_weights_file(image_size)
    cache = keras_cache_dirs()
    if any((folder / name).is_file() for folder in cache):
        return
    host = urlsplit(KERAS_WEIGHTS_URL).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise WeightsError(
            f"weights='imagenet' needs {name}, which is not in the Keras cache ({cache[0]}) and cannot be "
            f"downloaded ({host}: {exc}). Fixes: download {KERAS_WEIGHTS_URL}{name} elsewhere and place it at "
            f"{cache[0] / name}; or pass weights as the path of that file; or use weights=None "
            "(random initialisation, much lower accuracy)."
        ) from None


def build_model(
    num_classes: int,
    *,
    image_size: int,
    hidden_layers: int,
    dense_units: int,
    dropout: float,
    weights: str | None,
    train_base: bool,
    batchnorm_momentum: float | None = None,
) -> keras.Model:
    """MobileNet - Flatten - hidden_layers x (Dense(dense_units, relu), Dropout) - Dense(num_classes, softmax)."""
    backbone = build_backbone(image_size, weights)
    if batchnorm_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = batchnorm_momentum
    backbone.trainable = train_base

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="mobilenet_preprocessing")(inputs)
    # A frozen backbone runs its BatchNorm in inference mode, as in Keras' transfer-learning guide.
    x = backbone(x, training=None if train_base else False)
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(1, hidden_layers + 1):
        x = keras.layers.Dense(dense_units, activation="relu", name=f"dense_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"mobilenet_F{''.join(f'_D{dense_units}' for _ in range(hidden_layers))}")


def build_backbone(image_size: int, weights: str | None) -> keras.Model:
    """keras.applications.MobileNet without its top, with 'imagenet', no, or a file's weights."""
    try:
        return keras.applications.MobileNet(
            input_shape=(image_size, image_size, 3), include_top=False, weights=weights
        )
    except Exception as exc:
        if weights is None:
            raise
        source = "the ImageNet weights" if weights == "imagenet" else f"the weights file {weights}"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise WeightsError(
            f"Loading {source} into MobileNet at image_size={image_size} failed: {reason}. "
            "The file must hold the weights of keras.applications.MobileNet(include_top=False) "
            "(Keras' mobilenet_1_0_*_tf_no_top.h5, or a .weights.h5 saved from that model)."
        ) from exc


def compile_model(model: keras.Model, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model
