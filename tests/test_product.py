"""The trained model as a product: the saved model, the predict command, LiteRT exports and the model card."""
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.analysis import calibration
from covid_mobilenet.analysis.results import best_run
from covid_mobilenet.bench.quantization import measure_quantization
from covid_mobilenet.common.files import file_sha256
from covid_mobilenet.product import export, litert, model_card, predict
from tests.conftest import PROJECT


@pytest.mark.slow
def test_every_run_saves_its_model_in_float32_and_records_it(trained_run):
    """Uses the shared finished run (a kernel trained it): the model the notebook saved."""
    run, metrics = trained_run
    record = metrics["saved_model"]
    model_file = run / record["file"]
    assert record["file"] == "model.keras" and record["dtype"] == "float32"
    assert record["bytes"] == model_file.stat().st_size and record["sha256"] == file_sha256(model_file)
    model = keras.saving.load_model(model_file, compile=False)
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 4)
    assert all(w.dtype == "float32" for w in model.weights)
    assert record["bytes"] < 1.2 * 4 * metrics["model"]["parameters"], "the weights alone, no optimizer state"
    assert record["class_names"] == metrics["dataset"]["class_names"]


def test_a_model_trained_in_mixed_precision_is_saved_in_float32(tmp_path):
    from covid_mobilenet.model.architecture import build_model
    from covid_mobilenet.run.models import inference_copy

    params = {"image_size": 32, "train_base": True, "batchnorm_momentum": None, "hidden_layers": 1, "dense_units": 8,
              "dropout": 0.5, "seed": 1}
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = build_model(4, weights=None, **params)
        copy = inference_copy(mixed, params, num_classes=4)
        pixels = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
        expected = np.asarray(mixed.predict(pixels, verbose=0), np.float32)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.layers[2].compute_dtype == "float16" and copy.layers[2].compute_dtype == "float32"
    assert np.allclose(copy.predict(pixels, verbose=0), expected, atol=5e-3), "same weights, float32 arithmetic"


@pytest.mark.slow
def test_predict_agrees_with_the_notebooks_own_test_predictions(trained_run, tmp_path, capsys):
    """Uses the shared finished run: predict must agree with the notebook that trained the model."""
    run, metrics = trained_run
    notebook = pd.read_csv(run / "predictions.csv").query("split == 'test'").reset_index(drop=True)
    root = metrics["dataset"]["root"]
    images = [f"{root}/{path}" for path in notebook["path"]]
    assert predict.main([*images, "--run", str(run), "--csv", str(tmp_path / "p.csv")]) == 0
    ours = pd.read_csv(tmp_path / "p.csv")
    assert len(ours) == len(notebook) and ours["path"].tolist() == images
    assert (ours["predicted"] == notebook["predicted"]).all()
    columns = [f"p_{name}" for name in metrics["dataset"]["class_names"]]
    # calibrated by default: the notebook's own calibrated columns, the run's temperature on the raw ones
    calibrated = [f"calibrated_{column}" for column in columns]
    assert np.abs(ours[columns].to_numpy() - notebook[calibrated].to_numpy()).max() < 1e-4
    assert ours["probabilities"].str.startswith("calibrated (T=").all()
    calibration = metrics["calibration"]
    abstain = calibration["abstain"]
    confident = notebook[calibrated].max(axis=1) >= (abstain["threshold"] if abstain["reached"] else np.inf)
    unfamiliar = ours["unfamiliarity"] > metrics["unfamiliar"]["threshold"]
    assert (ours["unfamiliar"] == unfamiliar.map({True: "yes", False: "no"})).all()
    assert unfamiliar.sum() == metrics["unfamiliar"]["test_flagged"]["images"], "the notebook's own count"
    assert (ours["answer"] == notebook["predicted"].where(confident, "uncertain").where(~unfamiliar, "unfamiliar")).all()
    covid = calibration["operating_points"]["COVID"]["target_sensitivity"]
    flagged = (notebook["calibrated_p_COVID"] >= covid["threshold"]).map({True: "yes", False: "no"})
    assert (ours[f"COVID at sensitivity {covid['target']:g}"] == flagged).all()
    assert "predicted with" in capsys.readouterr().err
    # --raw: the model's own softmax, as the notebook recorded it; the answers stay the calibrated ones
    assert predict.main([*images, "--run", str(run), "--csv", str(tmp_path / "raw.csv"), "--raw"]) == 0
    raw = pd.read_csv(tmp_path / "raw.csv")
    assert np.abs(raw[columns].to_numpy() - notebook[columns].to_numpy()).max() < 1e-4
    assert (raw["probabilities"] == "raw").all() and (raw["answer"] == ours["answer"]).all()


@pytest.mark.slow
def test_predict_reads_every_image_kind_names_a_broken_file_and_searches_folders(trained_run, tmp_path, capsys):
    """Uses the shared finished run: a trained model to predict with."""
    run, metrics = trained_run
    source = np.asarray(Image.open(f"{metrics['dataset']['root']}/{pd.read_csv(run / 'predictions.csv')['path'][0]}").convert("L"))
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(source, "L").save(folder / "gray.png")
    Image.fromarray(np.stack([source] * 3, -1), "RGB").save(folder / "rgb.png")
    Image.fromarray(np.stack([source] * 3 + [np.full_like(source, 255)], -1), "RGBA").save(folder / "rgba.png")
    Image.fromarray(source.astype(np.uint16) * 257).save(folder / "sixteen.png")  # 16-bit grayscale PNG
    Image.fromarray(np.stack([source] * 3, -1), "RGB").resize((523, 411)).save(folder / "nested" / "large.jpg", quality=95)
    Image.fromarray(255 - source, "L").save(folder / "nested" / "gray.png")  # another picture of the same name
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not the rest of a PNG")
    (folder / "notes.txt").write_text("not an image: named, not predicted")
    assert Image.open(folder / "sixteen.png").mode.startswith("I")

    exit_status = predict.main([str(folder), "--run", str(run), "--csv", str(tmp_path / "p.csv"),
                                "--gradcam", str(tmp_path / "heatmaps")])
    assert exit_status == 1, "two files were skipped"
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err
    assert f"skipped {folder / 'notes.txt'}: {predict.NOT_AN_IMAGE}" in err
    table = pd.read_csv(tmp_path / "p.csv").set_index("path")
    names = sorted(path.rsplit("/", 1)[-1] for path in table.index)
    assert names == ["gray.png", "gray.png", "large.jpg", "rgb.png", "rgba.png", "sixteen.png"]
    probabilities = table.filter(like="p_")
    assert np.allclose(probabilities.sum(axis=1), 1)
    # the same picture as 8-bit gray, RGB, RGBA and 16-bit decodes to the same pixels, so the same answer
    same = probabilities.loc[[str(folder / n) for n in ("gray.png", "rgb.png", "rgba.png", "sixteen.png")]].to_numpy()
    assert np.abs(same - same[0]).max() < 1e-6
    # every input its own overlay, named in the CSV: the two gray.png do not overwrite each other
    overlays = sorted((tmp_path / "heatmaps").glob("*.gradcam.png"))
    assert len(overlays) == 6 and sorted(map(str, overlays)) == sorted(table["gradcam"])
    assert table.loc[str(folder / "gray.png"), "gradcam"] != table.loc[str(folder / "nested" / "gray.png"), "gradcam"]


def test_only_a_keras_file_is_loaded_and_never_runs_code_from_it(tmp_path, capsys):
    """A model file is code's way in: an .h5 (whose safe_mode older Keras ignored) is refused before loading, and
    a .keras file holding a Lambda (Python bytecode) is refused by safe_mode; the Keras installed has the fixes."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    floor = next(Requirement(line.split("#")[0]) for line in (PROJECT / "requirements.txt").read_text().splitlines()
                 if line.startswith("keras"))
    assert "3.11.3" in floor.specifier and "3.11.2" not in floor.specifier and "3.9.0" not in floor.specifier
    assert Version(keras.__version__) in floor.specifier
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    legacy = tmp_path / "model.h5"
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(4)]).save(legacy)
    assert predict.main([str(image), "--model", str(legacy)]) == 2
    assert "only .keras files are loaded" in capsys.readouterr().err
    crafted = tmp_path / "crafted.keras"
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Flatten(),
                      keras.layers.Dense(4)]).save(crafted)
    assert predict.main([str(image), "--model", str(crafted)]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded as a Keras model" in err and "safe_mode" in err


def test_predict_without_a_model_says_how_to_get_one(tmp_path, capsys):
    assert predict.main([str(tmp_path), "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "No finished run on the real data" in err and "run_all.py" in err


def test_the_best_run_is_chosen_on_validation_never_on_test(tmp_path):
    """Run A (validation 0.95, test 0.80) against run B (validation 0.70, test 0.81): choosing on test used to serve B,
    and to report the best of several test draws as its accuracy."""
    for name, val, test, demo in (("a", 0.95, 0.80, False), ("b", 0.70, 0.81, False), ("c", 0.99, 0.5, True)):
        run = tmp_path / name / "seed-1"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"val": {"accuracy": val}, "test": {"accuracy": test},
                                                      "dataset": {"demo": demo}}))
        (run / "model.keras").write_bytes(b"x")
    assert best_run(tmp_path) == tmp_path / "a" / "seed-1"
    assert best_run(tmp_path, allow_demo=True) == tmp_path / "c" / "seed-1"


def test_the_best_run_is_never_a_region_run_nor_one_of_another_folder(tmp_path, capsys):
    """A model trained with the lungs blacked out, or a frozen-backbone run of results/fast/, may score higher on its
    own test images; predict applies the model to whole images, so the choice is among the sweep's full-image runs."""
    for name, accuracy, region in (("mn_resultset1", 0.8, "full"), ("mn_resultset1-no_lungs", 0.95, "no_lungs"),
                                   ("fast/mn_resultset2", 0.99, "full"), ("mn_resultset2", 0.7, None)):
        run = tmp_path / name / "seed-42"
        run.mkdir(parents=True)
        params = {} if region is None else {"input_region": region}  # runs from before the regions had none
        (run / "metrics.json").write_text(json.dumps({"val": {"accuracy": accuracy}, "test": {"accuracy": accuracy},
                                                      "dataset": {"demo": False}, "params": params}))
        (run / "model.keras").write_bytes(b"x")
    assert best_run(tmp_path) == tmp_path / "mn_resultset1" / "seed-42"
    assert predict.main([str(tmp_path / "absent.png"), "--results-dir", str(tmp_path)]) == 2  # the model file is not real
    assert f"Using the best finished run on the real data, by validation accuracy: {tmp_path / 'mn_resultset1' / 'seed-42'}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run, metrics = trained_run
    out = tmp_path_factory.mktemp("export")
    return export.export_run(run, out, representative=24, say=lambda *_: None), out, metrics


@pytest.mark.slow
def test_the_three_exports_load_predict_and_int8_takes_uint8(exported, trained_run):
    """Uses the shared finished run: converting a trained model is the claim."""
    record, out, metrics = exported
    run = trained_run[0]
    assert [row["format"] for row in record["formats"]] == ["Keras (.keras, float32)", "LiteRT float32", "LiteRT float16", "LiteRT int8"]
    test = pd.read_csv(run.parent.parent / metrics["dataset"]["split_file"]).query("split == 'test'")
    assert record["test_images"] == len(test) and record["representative_images"] == {"images": 24, "split": "train", "seed": 0}
    pixels = export.load_pixels(Path(metrics["dataset"]["root"]), test["path"][:3], 64)
    keras_model = keras.saving.load_model(run / "model.keras", compile=False)
    # the run's temperature is folded into every export: they give the Keras model's probabilities, calibrated
    folded = record["temperature_scaling"]
    assert folded["folded"] is True and folded["temperature"] == metrics["calibration"]["temperature"]
    differences = folded["max_difference_vs_keras_calibrated"]
    assert differences["LiteRT float32"] < 1e-4 and differences["LiteRT float16"] < 0.02  # float16 weights: 0.008 on the demo's
    # int8's output steps of 1/256 pass through log p / T, and this tiny model's T sits at its lower bound (0.05): its
    # differences grow 20-fold (0.18 measured; 0.05 on an earlier tiny model with a larger T)
    assert differences["LiteRT int8"] < 0.25, "int8: within its quantization error"
    expected = calibration.temperature_scale(keras_model.predict(pixels, verbose=0), folded["temperature"])
    for variant in export.VARIANTS:
        lite = litert.LiteModel(out / f"model_{variant}.tflite", threads=1)
        assert (lite.input_dtype == np.uint8) == (variant == "int8")
        outputs = np.stack([lite(image) for image in pixels])
        assert outputs.shape == expected.shape and np.allclose(outputs.sum(axis=1), 1, atol=0.02)
        if variant != "int8":  # float16 weights: within 0.02, as export.json says above
            assert np.abs(outputs - expected).max() < (2e-2 if variant == "float16" else 1e-4)
    rows = {row["format"]: row for row in record["formats"]}
    assert rows["LiteRT float32"]["agreement_with_keras"] == 1.0
    for row in record["formats"]:
        assert 0 <= row["accuracy"] <= 1 and row["median_latency_ms"] > 0 and row["bytes"] > 0
    assert rows["LiteRT int8"]["bytes"] < 0.35 * rows["LiteRT float32"]["bytes"]
    assert rows["LiteRT float16"]["bytes"] < 0.6 * rows["LiteRT float32"]["bytes"]
    assert json.loads((out / "export.json").read_text()) == record


@pytest.mark.slow
def test_the_model_card_is_generated_from_the_runs_files(exported):
    """Uses the shared finished run and its export: the card is made from both."""
    record, out, metrics = exported
    card = (out / "MODEL_CARD.md").read_text()
    assert "synthetic demo set: these numbers say nothing about chest X-rays" in card
    assert "Not a medical device. Not for diagnosis" in card
    assert metrics["dataset"]["split_sha256"][:12] in card
    low = metrics["test"]["intervals"]["accuracy"]["low"]
    assert f"{100 * metrics['test']['accuracy']:.2f}% [{100 * low:.1f}," in card
    assert "no lungs" in card and "Grad-CAM" in card and "## Known limitations" in card
    assert model_card.export_table(record) in card
    assert f"learning rate {metrics['params']['learning_rate']:g}" in card
    t = metrics["calibration"]["temperature"]
    assert f"Temperature T = {t:.2f}" in card and "ECE" in card and "COVID at target sensitivity 0.95" in card
    assert "Abstaining" in card and "The exported LiteRT models include T" in card


def test_export_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    assert export.main([str(tmp_path)]) == 2
    assert "is not a finished run with a saved model" in capsys.readouterr().err


@pytest.mark.slow
def test_the_benchmark_compares_int8_with_float32_side_by_side(trained_run, exported, monkeypatch):
    """Uses the shared export of the finished run: the benchmark takes its figures from export_run's record."""
    from covid_mobilenet.bench import quantization

    asked = []
    monkeypatch.setattr(quantization, "export_run", lambda run, out, threads: asked.append((run, threads)) or exported[0])
    figures = measure_quantization(trained_run[0])
    assert asked == [(trained_run[0], 1)], "one thread: the latency of a small device"
    assert figures["run"] == str(trained_run[0]) and figures["test_images"] == exported[0]["test_images"]
    rows = {row["format"]: row for row in figures["formats"]}
    ratio = figures["int8_vs_float32"]
    assert ratio["latency_ratio"] == rows["LiteRT int8"]["median_latency_ms"] / rows["LiteRT float32"]["median_latency_ms"]
    assert ratio["accuracy_difference_vs_float32"] == pytest.approx(
        100 * (rows["LiteRT int8"]["accuracy"] - rows["LiteRT float32"]["accuracy"]))
    assert measure_quantization(None)["skipped"].startswith("no finished run")


@pytest.mark.slow
def test_an_exported_folder_can_be_copied_and_used_alone(exported, tmp_path):
    """Uses the shared export of the finished run."""
    record, out, _ = exported
    shutil.copy(out / "model_int8.tflite", tmp_path / "model.tflite")
    lite = litert.LiteModel(tmp_path / "model.tflite", threads=2)
    assert lite(np.zeros((64, 64, 3), np.uint8)).shape == (4,)


@pytest.mark.slow
def test_a_real_export_fills_the_readme_table_a_demo_one_never(exported, trained_run, tmp_path, monkeypatch, capsys):
    """The export command's own README branch, on the fixture's export record (the conversion itself ran there)."""
    record, out, _ = exported
    assert record["demo"] is True
    readme = tmp_path / "README.md"
    original = f"before\n{export.EXPORT_START}\nold\n{export.EXPORT_END}\nafter\n"
    readme.write_text(original)
    monkeypatch.setattr(export, "README_FILE", readme)
    exported_as = {}
    monkeypatch.setattr(export, "export_run", lambda run, out, **kw: exported_as.get("record", record))
    command = [str(trained_run[0]), "--out", str(out)]

    assert export.main(command) == 0
    assert readme.read_text() == original, "a demo export never reaches the README"
    exported_as["record"] = {**record, "demo": False}  # as an export of a run on the real data
    assert export.main([*command, "--no-readme"]) == 0
    assert readme.read_text() == original, "--no-readme leaves it alone"
    assert export.main(command) == 0
    text = readme.read_text()
    assert "old" not in text and "| LiteRT int8 |" in text and text.endswith(f"{export.EXPORT_END}\nafter\n")
    assert model_card.readme_section({**record, "demo": False}) in text
    assert f"updated the export table in {readme}" in capsys.readouterr().out


@pytest.mark.slow
def test_export_names_missing_data_and_takes_its_new_place(trained_run, tmp_path):
    """Uses the shared finished run: export reads its files."""
    run, metrics = trained_run
    moved = tmp_path / "results" / "mn_resultset1" / "seed-42"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("tensorboard"))
    shutil.copy(run.parent.parent / metrics["dataset"]["split_file"], tmp_path / "results")
    record = json.loads((moved / "metrics.json").read_text())
    record["dataset"]["root"] = str(tmp_path / "gone")  # made on another machine
    (moved / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(export.ExportError, match="is not on this machine.*--data-dir"):
        export.run_files(moved)
    _, split, root = export.run_files(moved, Path(metrics["dataset"]["root"]))
    assert root == Path(metrics["dataset"]["root"]) and len(split) == metrics["dataset"]["total_images"]


def test_a_model_xnnpack_cannot_prepare_runs_on_litert_s_own_kernels(tmp_path, monkeypatch):
    """XNNPACK can claim a node it then fails to prepare (an int8 model at 32 px on a CPU without AVX-512 did): the
    export then measures the same flatbuffer on LiteRT's own kernels, says so, and answers as the plain interpreter."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    real, resolvers, name = litert.interpreter_class()
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    expected = litert.LiteModel(path, threads=1)(image)

    def refusing(message):
        class Refusing(real):
            def __init__(self, *args, experimental_op_resolver_type=resolvers.AUTO, **kwargs):
                super().__init__(*args, experimental_op_resolver_type=experimental_op_resolver_type, **kwargs)
                self.delegated = experimental_op_resolver_type == resolvers.AUTO

            def invoke(self):
                if self.delegated:
                    raise RuntimeError(message)
                return super().invoke()
        return Refusing

    monkeypatch.setattr(litert, "interpreter_class", lambda: (refusing(
        "failed to create XNNPACK runtimeNode number 44 (TfLiteXNNPackDelegate) failed to prepare."), resolvers, name))
    lite = litert.LiteModel(path, threads=1)
    assert lite.runtime == f"{name} with its own kernels (the XNNPACK delegate failed to prepare this model)"
    np.testing.assert_allclose(lite(image), expected, atol=1e-6)  # other kernels: other rounding
    monkeypatch.setattr(litert, "interpreter_class", lambda: (refusing("something else broke"), resolvers, name))
    with pytest.raises(RuntimeError, match="something else broke"):
        litert.LiteModel(path, threads=1)
