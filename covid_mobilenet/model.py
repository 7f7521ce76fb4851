"""The study's model: MobileNet without its top, Flatten, hidden Dense+Dropout blocks, softmax.

MobileNet's own preprocessing (pixels 0..255 to [-1, 1]) is the model's first
layer, so a saved model takes raw pixels.
"""
from __future__ import annotations

import keras

from .weights import WeightsError

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
