import socket

import keras
import numpy as np
import pytest

from covid_mobilenet.model import weights as weights_module
from covid_mobilenet.model.architecture import build_backbone, build_model
from covid_mobilenet.model.weights import WeightsError, ensure_weights_available, imagenet_weights_file


def make(**overrides):
    settings = dict(image_size=32, hidden_layers=1, dense_units=8, dropout=0.5, weights=None, train_base=True, seed=0)
    return build_model(4, **{**settings, **overrides})


def layer_kinds(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("hidden_layers", [0, 1, 3])
def test_the_head_is_flatten_then_dense_dropout_blocks_then_softmax(hidden_layers):
    model = make(hidden_layers=hidden_layers, dense_units=16)
    assert layer_kinds(model) == ["InputLayer", "Rescaling", "Functional", "Flatten"] + ["Dense", "Dropout"] * hidden_layers + ["Dense"]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [16] * hidden_layers + [4]
    assert all(layer.activation.__name__ == "relu" for layer in dense[:-1])
    assert dense[-1].activation.__name__ == "softmax"
    assert all(layer.rate == 0.5 for layer in model.layers if isinstance(layer, keras.layers.Dropout))
    assert model.output_shape == (None, 4)


def test_preprocessing_inside_the_model_is_mobilenets():
    model = make()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    scaled = model.get_layer("mobilenet_preprocessing")(pixels)
    expected = keras.applications.mobilenet.preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(scaled), expected, atol=1e-6)
    assert np.asarray(scaled).min() >= -1 and np.asarray(scaled).max() <= 1


def test_frozen_backbone_trains_only_the_head_with_batchnorm_in_inference_mode():
    model = make(train_base=False, dropout=0.0)
    backbone = model.get_layer(index=2)
    assert not backbone.trainable
    assert all("mobilenet" not in w.path for w in model.trainable_weights)
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(images, training=True)), np.asarray(model(images, training=False)), atol=1e-6)
    fine_tuned = make(train_base=True)
    assert len(fine_tuned.trainable_weights) > len(model.trainable_weights)


def test_batchnorm_momentum_reaches_every_batchnorm_layer():
    model = make(batchnorm_momentum=0.9)
    layers = [l for l in model.get_layer(index=2).layers if isinstance(l, keras.layers.BatchNormalization)]
    assert layers and all(layer.momentum == 0.9 for layer in layers)


def test_a_weights_file_is_loaded(tmp_path):
    saved = build_backbone(32, None, seed=1)
    path = tmp_path / "backbone.weights.h5"
    saved.save_weights(path)
    model = make(weights=str(path))
    loaded = model.get_layer(index=2)
    for expected, actual in zip(saved.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(expected, actual)
    assert not np.array_equal(build_backbone(32, None, seed=2).get_weights()[0], saved.get_weights()[0])


def test_a_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(WeightsError, match=f"weights file {path}"):
        make(weights=str(path))


def test_imagenet_weights_file_names():
    assert imagenet_weights_file(224) == "mobilenet_1_0_224_tf_no_top.h5"
    assert imagenet_weights_file(128) == "mobilenet_1_0_128_tf_no_top.h5"
    assert imagenet_weights_file(64) == "mobilenet_1_0_224_tf_no_top.h5"  # Keras reuses 224's


def test_imagenet_without_network_fails_fast_with_the_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(weights_module, "keras_cache_dirs", lambda: [tmp_path / "keras" / "models"])

    def no_network(address, timeout):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(WeightsError) as error:
        ensure_weights_available("imagenet", 224)
    message = str(error.value)
    assert "mobilenet_1_0_224_tf_no_top.h5" in message
    assert str(tmp_path / "keras" / "models" / "mobilenet_1_0_224_tf_no_top.h5") in message
    assert "weights=None" in message and "path" in message


def test_cached_imagenet_weights_need_no_network(monkeypatch, tmp_path):
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / "mobilenet_1_0_224_tf_no_top.h5").write_bytes(b"x")
    monkeypatch.setattr(weights_module, "keras_cache_dirs", lambda: [cache])
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("no connection expected"))
    ensure_weights_available("imagenet", 64)
    ensure_weights_available(None, 64)


def test_recalibrated_batchnorm_holds_the_mean_of_the_batch_statistics_and_changes_no_weight():
    from covid_mobilenet.model.batchnorm import recalibrate

    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.99, name="nested_bn")])
    outputs = inner(keras.layers.BatchNormalization(momentum=0.99, name="outer_bn")(keras.layers.Dense(3, name="dense")(inputs)))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(5, 2, (8, 4)).astype("float32"), np.zeros(8, "int32")) for _ in range(3)]
    for layer in ("outer_bn",):
        model.get_layer(layer).moving_mean.assign(np.full(3, 100.0, "float32"))  # stale, as a pretrained backbone's
    weights = [w.copy() for w in model.get_layer("dense").get_weights()]
    assert recalibrate(model, batches) == 3
    dense = [model.get_layer("dense")(x).numpy() for x, _ in batches]
    outer = model.get_layer("outer_bn")
    np.testing.assert_allclose(outer.moving_mean.numpy(), np.mean([d.mean(axis=0) for d in dense], axis=0), rtol=1e-5)
    np.testing.assert_allclose(outer.moving_variance.numpy(), np.mean([d.var(axis=0) for d in dense], axis=0), rtol=1e-4)
    assert inner.get_layer("nested_bn").moving_mean.numpy().std() > 0, "a nested model's BatchNorm too"
    assert outer.momentum == 0.99, "the momentum is put back"
    for before, after in zip(weights, model.get_layer("dense").get_weights()):
        np.testing.assert_array_equal(before, after)


def test_a_model_that_answers_one_class_on_stale_statistics_answers_as_in_training_once_recalibrated():
    """The issue's failure, small: BatchNorm statistics far from the trained network's make inference mode answer one
    class; after recalibration on the same images (one batch), inference mode equals the batch-statistics pass."""
    from covid_mobilenet.model.batchnorm import _call, accuracy, batchnorm_layers, recalibrate

    model = make(train_base=True)
    for layer in batchnorm_layers(model):
        layer.moving_mean.assign(layer.moving_mean + 3.0)
        layer.moving_variance.assign(layer.moving_variance * 1e-3)
    images = np.random.default_rng(1).integers(0, 60, (16, 32, 32, 3)).astype("uint8")  # mostly dark images
    batch = [(images, np.arange(16) % 4)]
    stale = model.predict(images, verbose=0)
    assert len(set(stale.argmax(axis=1))) == 1, "on stale statistics every image gets one class"
    on_batch_statistics = _call(model, images).numpy()  # BatchNorm on this batch's statistics, Dropout off
    assert len(set(on_batch_statistics.argmax(axis=1))) > 1
    assert recalibrate(model, batch) == 1
    recalibrated = model.predict(images, verbose=0)
    np.testing.assert_allclose(recalibrated, on_batch_statistics, atol=1e-4)
    assert accuracy(model, batch) == accuracy(model, batch, batchnorm_training=True)
