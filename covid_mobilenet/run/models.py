"""The models one run makes from its parameters: the study's model or, in fast mode, its head; the head joined
back to its frozen backbone (what Grad-CAM and the region tests take); and the float32 copy that is saved.

Each takes the head the run was built with (``head``: the notebook's ``study_head``, the package's by default), so a
head changed in the notebook is the one trained, checked and saved."""
from __future__ import annotations

import keras

from ..model.architecture import Head, build_head, build_model


def study_model(params: dict, num_classes: int, *, weights: str | None, train_base: bool, head: Head | None = None
                ) -> keras.Model:
    """The study's model (pixels in) with the run's head settings."""
    return build_model(
        num_classes, image_size=params["image_size"], weights=weights, train_base=train_base,
        batchnorm_momentum=params["batchnorm_momentum"], hidden_layers=params["hidden_layers"],
        dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"], head=head,
    )


def trainable_model(params: dict, num_classes: int, feature_shape: tuple[int, ...] | None, head: Head | None = None
                    ) -> keras.Model:
    """What the run trains, not compiled yet: the study's model, or with cached features (``feature_shape``) its head
    alone."""
    if feature_shape is not None:
        return build_head(feature_shape, num_classes, hidden_layers=params["hidden_layers"],
                          dense_units=params["dense_units"], dropout=params["dropout"], seed=params["seed"], head=head)
    return study_model(params, num_classes, weights=params["weights"], train_base=params["train_base"], head=head)


def head_on_backbone(trained: keras.Model, params: dict, num_classes: int, head: Head | None = None) -> keras.Model:
    """A trained fast-mode head on the frozen backbone it was trained on: the whole model, pixels in."""
    whole = study_model(params, num_classes, weights=params["weights"], train_base=False, head=head)
    for layer in trained.layers:
        if layer.weights:
            whole.get_layer(layer.name).set_weights(layer.get_weights())
    return whole


def inference_copy(model: keras.Model, params: dict, num_classes: int, head: Head | None = None) -> keras.Model:
    """The trained weights in a fresh float32 model, not compiled: without the optimizer's state (a third of
    the file), and float32 whatever precision it trained in (mixed precision keeps its variables in float32)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = study_model(params, num_classes, weights=None, train_base=params["train_base"], head=head)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy
