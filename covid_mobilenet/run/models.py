"""The models one run makes from its parameters: the study's model or, in fast mode, its head; the head joined
back to its frozen backbone (what Grad-CAM and the region tests take); and the float32 copy that is saved."""
from __future__ import annotations

import keras

from ..model.architecture import build_head, build_model, compile_model


def study_model(params: dict, num_classes: int, *, weights: str | None, train_base: bool) -> keras.Model:
    """The study's model (pixels in) with the run's head settings."""
    return build_model(
        num_classes, image_size=params["image_size"], weights=weights, train_base=train_base,
        batchnorm_momentum=params["batchnorm_momentum"], hidden_layers=params["hidden_layers"],
        dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"],
    )


def trainable_model(params: dict, num_classes: int, feature_shape: tuple[int, ...] | None) -> keras.Model:
    """What the run trains, compiled: the study's model, or with cached features (``feature_shape``) its head alone."""
    if feature_shape is not None:
        model = build_head(feature_shape, num_classes, hidden_layers=params["hidden_layers"],
                           dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"])
    else:
        model = study_model(params, num_classes, weights=params["weights"], train_base=params["train_base"])
    return compile_model(model, params["learning_rate"], jit_compile=params["jit_compile"])


def head_on_backbone(head: keras.Model, params: dict, num_classes: int) -> keras.Model:
    """A trained fast-mode head on the frozen backbone it was trained on: the whole model, pixels in."""
    whole = study_model(params, num_classes, weights=params["weights"], train_base=False)
    for layer in head.layers:
        if layer.weights:
            whole.get_layer(layer.name).set_weights(layer.get_weights())
    return whole


def inference_copy(model: keras.Model, params: dict, num_classes: int) -> keras.Model:
    """The trained weights in a fresh float32 model, not compiled: without the optimizer's state (a third of
    the file), and float32 whatever precision it trained in (mixed precision keeps its variables in float32)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = study_model(params, num_classes, weights=None, train_base=params["train_base"])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy
