"""Fast frozen-backbone mode: cached features train the head exactly as end-to-end frozen training does."""
import json

import keras
import numpy as np
import pytest

from covid_mobilenet.analysis.metrics import labels_and_probabilities
from covid_mobilenet.data.pipeline import decoded
from covid_mobilenet.model import features
from covid_mobilenet.model.architecture import build_backbone
from covid_mobilenet.run import steps
from covid_mobilenet.run.params import ParameterError, check_parameters, notebook_defaults
from tests.conftest import conflict_images, tiny_params


@pytest.fixture(scope="module")
def backbone_file(tiny_root, tmp_path_factory):
    """A MobileNet whose BatchNorm statistics were measured on the tiny set: its features carry signal.

    A backbone straight from random initialisation (weights=None) has placeholder BatchNorm
    statistics, and its features at 32 px are ~1e-21: they would compare nothing.
    """
    backbone = build_backbone(32, None, seed=3)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the moving statistics become those of the batch below
    paths = [str(p) for p in sorted(tiny_root.glob("*/images/*.png"))]
    images = next(iter(decoded(paths, [0] * len(paths), image_size=32).batch(len(paths))))[0]
    backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(images), training=True)
    path = tmp_path_factory.mktemp("backbone") / "calibrated.weights.h5"
    backbone.save_weights(path)
    return path


def frozen_params(tmp_path, root, **overrides) -> dict:
    params = {
        **notebook_defaults(),
        **tiny_params(tmp_path, root),
        "experiment": "frozen",
        "train_base": False,
        "dropout": 0.5,  # Dropout masks must match too
        "epochs": 3,
        "precision": "float32",
        "feature_dir": str(tmp_path / "features"),
        **overrides,
    }
    return check_parameters(params)


def train_as_the_notebook_does(params):
    run = steps.run_experiment(params)
    labels, probabilities = labels_and_probabilities(run.predictions["test"], run.data.class_names)
    return run.data, run.model, run.history, labels, probabilities


@pytest.mark.slow
def test_the_head_trained_on_cached_features_equals_end_to_end_frozen_training(tmp_path, tiny_root, backbone_file):
    """Trains twice: the equality of two trainings, end to end and on cached features, is the claim."""
    _, full, full_history, full_labels, full_probabilities = train_as_the_notebook_does(
        frozen_params(tmp_path, tiny_root, experiment="end_to_end", fast=False, weights=str(backbone_file)))
    data, head, fast_history, fast_labels, fast_probabilities = train_as_the_notebook_does(
        frozen_params(tmp_path, tiny_root, experiment="cached", fast=True, weights=str(backbone_file)))

    assert data.features.computed_here and head.name.endswith("_head")
    assert fast_history["epoch"].tolist() == full_history["epoch"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(fast_labels, full_labels)
    # float16 features: agreement to float16 rounding, through 3 epochs of Adam and Dropout
    for column in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(fast_history[column], full_history[column], rtol=2e-3, atol=2e-3, err_msg=column)
    np.testing.assert_allclose(fast_probabilities, full_probabilities, atol=2e-3)
    for name in ("dense_1", "predictions"):
        for fast_weight, full_weight in zip(head.get_layer(name).get_weights(), full.get_layer(name).get_weights()):
            np.testing.assert_allclose(fast_weight, full_weight, atol=2e-3)
    # and the loss really moved: the comparison is not between two untrained models
    assert full_history["loss"].iloc[-1] < full_history["loss"].iloc[0]


@pytest.mark.slow
def test_the_backbone_runs_once_per_split_whatever_the_number_of_configurations(tmp_path, tiny_root, monkeypatch):
    """Runs the backbone: counting its passes over the data is the claim."""
    computed = []
    original = features.compute_features

    def counting(index, split, folder, **kw):
        computed.append(folder.name)
        return original(index, split, folder, **kw)

    monkeypatch.setattr(features, "compute_features", counting)
    settings = [dict(hidden_layers=1, dense_units=8), dict(hidden_layers=2, dense_units=8), dict(hidden_layers=1, dense_units=32, learning_rate=1e-4)]
    entries = []
    for i, setting in enumerate(settings):
        params = frozen_params(tmp_path, tiny_root, experiment=f"config{i}", fast=True, **setting)
        data = steps.prepare_data(params, steps.setup(params))
        entries.append((data.features.folder, data.features.computed_here))
    assert len(computed) == 1
    assert [here for _, here in entries] == [True, False, False]
    manifest = json.loads((entries[0][0] / features.MANIFEST).read_text())
    assert sum(manifest["counts"].values()) == 100 - conflict_images(tiny_root)  # every image of the split, once

    other_size = frozen_params(tmp_path, tiny_root, experiment="bigger", fast=True, image_size=48)
    assert steps.prepare_data(other_size, steps.setup(other_size)).features.computed_here
    assert len(computed) == 2, "another image size is another cache entry"


@pytest.mark.slow
def test_an_entry_cut_short_is_recomputed(tmp_path, tiny_root):
    """Runs the backbone: a cache entry is only made by computing features."""
    params = frozen_params(tmp_path, tiny_root, fast=True, epochs=1)
    folder = steps.prepare_data(params, steps.setup(params)).features.folder
    (folder / features.MANIFEST).unlink()  # as if killed before the manifest was written
    (folder / "train.f16").write_bytes(b"half")
    again = steps.prepare_data(params, steps.setup(params))
    assert again.features.computed_here
    assert again.pipelines.sizes["train"] * again.features.feature_shape[-1] * 2 == (folder / "train.f16").stat().st_size


def test_fast_mode_needs_a_frozen_backbone(tmp_path, tiny_root):
    with pytest.raises(ParameterError, match="train_base=False"):
        frozen_params(tmp_path, tiny_root, fast=True, train_base=True)


@pytest.mark.slow
def test_fast_mode_shortcut_checks_come_from_the_cache_and_equal_the_passes_over_the_images(tmp_path, tiny_root,
                                                                                            backbone_file, monkeypatch):
    """Trains two heads: that the second computes no backbone features at all, and that the cached checks equal
    the checks that pass the images through the whole model, is the claim."""
    from covid_mobilenet.run.shortcut_checks import analyse

    written = []
    original = features._write_features

    def counting(folder, images, **kw):
        written.append((folder.name, kw["about"].get("region")))
        return original(folder, images, **kw)

    monkeypatch.setattr(features, "_write_features", counting)
    first = steps.run_experiment(frozen_params(tmp_path, tiny_root, experiment="one", fast=True, weights=str(backbone_file)))
    assert sorted(region for _, region in written) == ["full", "lungs", "lungs_blurred", "no_lungs"]
    written.clear()

    def student_head(x, num_classes, hidden_layers, dense_units, dropout, seed):  # a head changed in the notebook
        x = keras.layers.GlobalAveragePooling2D(name="student_pooling")(x)
        return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)

    second = steps.run_experiment(frozen_params(tmp_path, tiny_root, experiment="two", fast=True, hidden_layers=2,
                                                weights=str(backbone_file)), head=student_head)
    assert written == [], "the second configuration reads every feature the first computed"
    saved = keras.saving.load_model(second.paths["model"])
    assert "student_pooling" in [layer.name for layer in saved.layers], "the changed head is the one trained and saved"
    assert second.metrics["shortcuts"]["gradcam"], "and checked"

    params = first.params
    passes = analyse(first.whole, first.data.root, first.predictions["test"], first.data.class_names,
                     image_size=params["image_size"], input_region="full", batch_size=16, title="passes")
    cached, direct = first.analysis.table, passes.table
    assert cached["predicted_no_lungs"].notna().sum() == len(cached) >= 15  # every tiny test image has a mask
    probabilities = [c for c in cached.columns if c.startswith("p_no_lungs_")]
    np.testing.assert_allclose(cached[probabilities].to_numpy(float), direct[probabilities].to_numpy(float), atol=2e-3)
    for region in ("lungs", "no_lungs", "lungs_blurred"):
        differ = int((cached[f"predicted_{region}"] != direct[f"predicted_{region}"]).sum())
        assert differ <= 1, f"{region}: {differ} answers differ (float16 features may flip one near tie)"
    np.testing.assert_allclose(cached["energy_in_lungs"].to_numpy(float), direct["energy_in_lungs"].to_numpy(float),
                               atol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_grad_cam_from_the_cached_maps_equals_grad_cam_through_the_backbone(tiny_root, backbone_file):
    """At the backbone's output the cached features are Grad-CAM's maps: the same heatmaps, to float16 rounding."""
    from covid_mobilenet.model.architecture import build_model, feature_extractor
    from covid_mobilenet.model.gradcam import GradCam, GradCamError

    whole = build_model(4, image_size=64, weights=str(backbone_file), train_base=False, batchnorm_momentum=0.99,
                        hidden_layers=1, dense_units=8, dropout=0.5, seed=3)
    paths = [str(p) for p in sorted(tiny_root.glob("*/images/*.png"))[:12]]
    images = next(iter(decoded(paths, [0] * len(paths), image_size=64).batch(len(paths))))[0].numpy()
    maps = feature_extractor(64, str(backbone_file), 3)(images).numpy().astype(features.FEATURE_DTYPE)
    at_output = GradCam(whole, layer="conv_pw_13_relu")
    assert at_output.taps_backbone_output
    through, probabilities = at_output.cams(images)
    from_maps, probabilities_from_maps = at_output.cams_from_maps(maps)
    assert through.shape == (12, 2, 2) and through.max() > 0  # 2 x 2 maps at 64 px: where, not only how much
    np.testing.assert_allclose(from_maps, through, rtol=1e-2, atol=1e-2 * through.max())
    np.testing.assert_allclose(probabilities_from_maps, probabilities, atol=1e-3)
    np.testing.assert_allclose(at_output.head_probabilities(maps), probabilities, atol=1e-3)
    with pytest.raises(GradCamError, match="not the backbone's output"):
        GradCam(whole, layer="conv_pw_12_relu").cams_from_maps(maps)


def test_one_pass_gives_the_predictions_the_guard_features_and_grad_cam(tiny_root, backbone_file):
    """A run's predictions pass also gives the guard's pooled features and, at the backbone's output, Grad-CAM: each
    equal to what its own pass computes (predict; the backbone alone, pooled; Grad-CAM through the backbone)."""
    from covid_mobilenet.model.architecture import build_model, feature_extractor
    from covid_mobilenet.model.gradcam import GradCam
    from covid_mobilenet.model.inference import predicted_probabilities
    from covid_mobilenet.model.pooled import PooledOutputs

    whole = build_model(4, image_size=64, weights=str(backbone_file), train_base=False, batchnorm_momentum=0.99,
                        hidden_layers=1, dense_units=8, dropout=0.5, seed=3)
    paths = [str(p) for p in sorted(tiny_root.glob("*/images/*.png"))[:12]]
    batches = decoded(paths, [0] * len(paths), image_size=64).batch(5)  # three batches, the last one short
    images = np.concatenate([batch.numpy() for batch, _ in batches])
    at_output = GradCam(whole, layer="conv_pw_13_relu")
    found = PooledOutputs(whole).pass_over(batches, at_output)

    np.testing.assert_allclose(found.probabilities, predicted_probabilities(whole, batches), atol=1e-6)
    np.testing.assert_allclose(found.probabilities.sum(axis=1), 1.0, atol=1e-12)
    pooled = feature_extractor(64, str(backbone_file), 3)(images).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(found.pooled, pooled, rtol=1e-3, atol=1e-5 * np.abs(pooled).max())  # other batches
    cams, probabilities = at_output.cams(images)
    assert found.cams.shape == (12, 2, 2) and cams.max() > 0
    np.testing.assert_allclose(found.cams, cams, rtol=1e-5, atol=1e-6 * cams.max())
    np.testing.assert_array_equal(found.cam_classes, probabilities.argmax(axis=1))
    assert PooledOutputs(whole).pass_over(batches).cams is None  # no Grad-CAM asked, none made
    with pytest.raises(ValueError, match="not the backbone's output"):
        PooledOutputs(whole).pass_over(batches, GradCam(whole, layer="conv_pw_12_relu"))


@pytest.mark.slow
def test_a_run_without_the_cache_passes_its_images_once_for_predictions_guard_and_grad_cam(tmp_path, tiny_root,
                                                                                          backbone_file, monkeypatch):
    """Without the feature cache, the guard and Grad-CAM at the backbone's output take what the predictions pass
    computed (one pass per subset, none more), and the shortcut checks equal those of a pass through the backbone."""
    from covid_mobilenet.model import gradcam, pooled
    from covid_mobilenet.run.shortcut_checks import analyse

    monkeypatch.setattr(gradcam, "choose_layer", lambda backbone: "conv_pw_13_relu")  # the output: 2 x 2 at 64 px
    passes = []
    original = pooled.PooledOutputs.pass_over

    def counting(self, dataset, gradcam=None):
        passes.append(gradcam is not None)
        return original(self, dataset, gradcam)

    monkeypatch.setattr(pooled.PooledOutputs, "pass_over", counting)

    def pooled_head(x, num_classes, hidden_layers, dense_units, dropout, seed):  # its heatmaps have positive energy
        x = keras.layers.GlobalAveragePooling2D(name="pooling")(x)
        return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)

    run = steps.run_experiment(frozen_params(tmp_path, tiny_root, image_size=64, weights=str(backbone_file)),
                               head=pooled_head)
    assert passes == [False, False, True], "one pass per subset, Grad-CAM's with the test images', the guard's none"
    assert set(run.predictions.pooled) == {"train", "val", "test"}
    assert run.unfamiliar.record["test_flagged"]["of"] == len(run.predictions["test"])

    images = np.concatenate([batch.numpy() for batch, _ in run.data.pipelines.batches("test")])
    cams, probabilities = gradcam.GradCam(run.whole).cams(images)
    np.testing.assert_allclose(run.predictions.test_cams[0], cams, rtol=1e-4, atol=1e-5 * cams.max())
    np.testing.assert_array_equal(run.predictions.test_cams[1], probabilities.argmax(axis=1))
    params = run.params
    through = analyse(run.whole, run.data.root, run.predictions["test"], run.data.class_names,
                      image_size=params["image_size"], input_region="full", batch_size=16, title="through")
    shared, direct = run.analysis.table, through.table
    assert shared["energy_in_lungs"].notna().sum() >= 10, "heatmaps with positive energy to compare"
    np.testing.assert_array_equal(shared["gradcam_class"], direct["gradcam_class"])
    np.testing.assert_allclose(shared["energy_in_lungs"].to_numpy(float), direct["energy_in_lungs"].to_numpy(float),
                               atol=1e-6, equal_nan=True)


def test_pooled_features_are_computed_once_per_entry_and_equal_the_pooled_batches(tmp_path, monkeypatch):
    """The guard's pooled features come from the entry: the same numbers as pooling the batches the pipelines serve,
    computed by the first run that asks and read by the others."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    counts, shape = {"train": 37, "val": 5, "test": 0}, (2, 3, 8)
    for subset, count in counts.items():
        rng.standard_normal((count, *shape)).astype(np.float16).tofile(tmp_path / f"{subset}.f16")
    cache = features.FeatureCache(tmp_path, {"counts": counts, "feature_shape": list(shape)}, computed_here=False)
    monkeypatch.setattr(features, "POOLING_CHUNK", 16)  # several chunks, the last one short
    for subset, count in counts.items():
        rows = features.RowReader(tmp_path / f"{subset}.f16", count, shape).rows(np.arange(count))
        batches = [tf.reduce_mean(tf.cast(rows[i:i + 32], tf.float32), axis=(1, 2)).numpy() for i in range(0, count, 32)]
        expected = np.concatenate(batches) if batches else np.zeros((0, shape[-1]), np.float32)
        np.testing.assert_array_equal(cache.pooled(subset), expected)
        assert (tmp_path / f"{subset}.pooled.f32").is_file()
    monkeypatch.setattr(features, "RowReader", None)  # the kept files answer: no row is read again
    assert cache.pooled("train").shape == (37, 8) and cache.pooled("test").shape == (0, 8)
