"""The study's model: MobileNet without its top, Flatten, hidden Dense+Dropout blocks, softmax.

MobileNet's own preprocessing (pixels 0..255 to [-1, 1]) is the model's first
layer, so a saved model takes raw pixels. The head (everything after the
backbone) can also be built alone, on the backbone's cached features: with a
frozen backbone the two train alike (``features.py``).

The head's initial weights and Dropout masks come from seeds derived from the
run's ``seed`` only, so they do not depend on whether a backbone was built first.
"""
from __future__ import annotations

from typing import Callable

import keras

from .weights import WeightsError

Head = Callable[..., object]  # (features, num_classes, hidden_layers, dense_units, dropout, seed) -> class probabilities


def build_model(
    num_classes: int,
    *,
    image_size: int,
    hidden_layers: int,
    dense_units: int,
    dropout: float,
    weights: str | None,
    train_base: bool,
    seed: int,
    batchnorm_momentum: float | None = None,
    head: Head | None = None,
) -> keras.Model:
    """MobileNet - Flatten - hidden_layers x (Dense(dense_units, relu), Dropout) - Dense(num_classes, softmax): the
    study's head (``study_head``), or ``head`` called with the same arguments (the notebook shows and may change it)."""
    backbone = build_backbone(image_size, weights, seed)
    if batchnorm_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = batchnorm_momentum
    backbone.trainable = train_base

    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="mobilenet_preprocessing")(inputs)
    # A frozen backbone runs its BatchNorm in inference mode, as in Keras' transfer-learning guide.
    x = backbone(x, training=None if train_base else False)
    outputs = (head or study_head)(x, num_classes, hidden_layers, dense_units, dropout, seed)
    return keras.Model(inputs, outputs, name=model_name(hidden_layers, dense_units))


def build_head(
    feature_shape: tuple[int, ...], num_classes: int, *, hidden_layers: int, dense_units: int, dropout: float, seed: int,
    head: Head | None = None,
) -> keras.Model:
    """The layers after the backbone alone, taking its (float16) features: what a frozen-backbone run trains."""
    inputs = keras.Input(tuple(feature_shape), dtype="float16", name="features")
    outputs = (head or study_head)(inputs, num_classes, hidden_layers, dense_units, dropout, seed)
    return keras.Model(inputs, outputs, name=f"{model_name(hidden_layers, dense_units)}_head")


def feature_extractor(image_size: int, weights: str | None, seed: int) -> keras.Model:
    """Pixels to the frozen backbone's features, exactly as ``build_model(train_base=False)`` computes them."""
    backbone = build_backbone(image_size, weights, seed)
    backbone.trainable = False
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="mobilenet_preprocessing")(inputs)
    return keras.Model(inputs, backbone(x, training=False), name="mobilenet_features")


def model_name(hidden_layers: int, dense_units: int) -> str:
    return f"mobilenet_F{''.join(f'_D{dense_units}' for _ in range(hidden_layers))}"


def study_head(x, num_classes: int, hidden_layers: int, dense_units: int, dropout: float, seed: int):
    """The study's classifier on the backbone's feature maps ``x``; the notebook shows the same code, in a cell a
    student may change (a test holds the two equal). Its seeds make the same initial weights with or without a
    backbone built first, and layer names that the saved model, Grad-CAM and fast mode look up."""
    x = keras.layers.Flatten(name="flatten")(x)
    for i in range(1, hidden_layers + 1):
        initializer = keras.initializers.GlorotUniform(seed=seed + 2 * i)
        x = keras.layers.Dense(dense_units, activation="relu", kernel_initializer=initializer, name=f"dense_{i}")(x)
        x = keras.layers.Dropout(dropout, seed=seed + 2 * i + 1, name=f"dropout_{i}")(x)
    initializer = keras.initializers.GlorotUniform(seed=seed)
    # float32 output whatever the precision policy: a softmax in float16 loses small probabilities.
    return keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=initializer, dtype="float32", name="predictions"
    )(x)


def build_backbone(image_size: int, weights: str | None, seed: int = 0) -> keras.Model:
    """keras.applications.MobileNet without its top, with 'imagenet', no, or a file's weights.

    Without weights, the random initial weights are drawn right after seeding with ``seed``,
    so the same seed always gives the same backbone (its features can be cached).
    """
    if weights is None:
        keras.utils.set_random_seed(seed)
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


def compile_model(model: keras.Model, learning_rate: float, *, jit_compile: bool = False) -> keras.Model:
    """Adam and sparse cross-entropy. XLA only when asked: it has been reported much slower with
    MobileNet's depthwise convolutions on some GPUs, and Keras would turn it on by itself there."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model
