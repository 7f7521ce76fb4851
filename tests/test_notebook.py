"""The experiment notebook, run through papermill on tiny generated data."""
import json
import re
import shutil
import sys
import types
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest

from PIL import Image

from covid_mobilenet.common.paths import EXPERIMENT_NOTEBOOK
from covid_mobilenet.data.masks import mask_file
from covid_mobilenet.data.scan import scan_dataset
from covid_mobilenet.data.grouping import grouped_split
from covid_mobilenet.data.split import split_hash
from covid_mobilenet.model.weights import KERAS_WEIGHTS_URL
from tests.conftest import KAGGLE_SECRETS, PROJECT, conflict_images, kernel_site, tiny_params


def run_notebook(output: Path, **parameters) -> nbformat.NotebookNode:
    papermill.execute_notebook(str(EXPERIMENT_NOTEBOOK), str(output), parameters=parameters, kernel_name="python3", progress_bar=False)
    return nbformat.read(output, as_version=4)


def run_steps(**parameters) -> None:
    """The notebook's steps in this process, as its cells call them, with its defaults: no kernel to start."""
    from covid_mobilenet.run.params import check_parameters, notebook_defaults
    from covid_mobilenet.run.steps import run_experiment

    run_experiment(check_parameters({**notebook_defaults(), **parameters}))


@pytest.mark.slow
def test_a_run_writes_every_output(finished_run):
    """Starts a kernel (the shared finished run): the files the notebook itself writes."""
    folder, params = finished_run
    run = folder / "results" / "mn_resultset3" / "seed-42"
    assert (run / "metrics.json").is_file()
    assert (run / "history.csv").is_file()
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    assert (folder / "Graph" / "3-seed-42.png").stat().st_size > 1000  # named by the trailing number, like the study's
    assert not (run / "backup").exists(), "the backup is removed once the run is complete"
    assert not list(run.glob(".*.tmp"))
    # per-image predictions of validation and test, named by metrics.json, and TensorBoard's logs
    metrics = json.loads((run / "metrics.json").read_text())
    predictions = pd.read_csv(run / metrics["predictions_file"])
    assert list(predictions.columns[:4]) == ["path", "split", "true", "predicted"]
    assert set(predictions["split"]) == {"val", "test"}
    probabilities = predictions[[f"p_{name}" for name in metrics["dataset"]["class_names"]]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1) and (probabilities.argmax(axis=1) == [
        metrics["dataset"]["class_names"].index(name) for name in predictions["predicted"]]).all()
    split = pd.read_csv(folder / "results" / metrics["dataset"]["split_file"])
    assert set(predictions["path"]) <= set(split["path"])
    test = predictions[predictions["split"] == "test"]
    assert (test["true"] == test["predicted"]).mean() == pytest.approx(metrics["test"]["accuracy"])
    intervals = metrics["test"]["intervals"]
    assert intervals["accuracy"]["low"] <= metrics["test"]["accuracy"] <= intervals["accuracy"]["high"]
    assert intervals["macro_f1"]["low"] <= metrics["test"]["macro_f1"] <= intervals["macro_f1"]["high"]
    assert "Wilson" in intervals["accuracy"]["method"] and "bootstrap" in intervals["balanced_accuracy"]["method"]
    assert list((run / "tensorboard").glob("train/events.out.tfevents.*"))
    assert list((run / "tensorboard" / "hparams").glob("events.out.tfevents.*"))
    executed = nbformat.read(folder / "executed.ipynb", as_version=4)
    assert any(output.get("data", {}).get("image/png") for cell in executed.cells for output in cell.get("outputs", []))
    # what the model looks at: every test image under each region, with its Grad-CAM energy and source
    assert (run / "gradcam.png").stat().st_size > 1000
    checks = pd.read_csv(run / "shortcuts.csv")
    assert sorted(checks["path"]) == sorted(test["path"])
    assert {"mask_status", "source", "predicted_full", "predicted_lungs", "predicted_no_lungs", "energy_in_lungs",
            "lung_area", "energy_in_marker"} <= set(checks.columns)
    shortcuts = metrics["shortcuts"]
    assert shortcuts["gradcam"]["layer"] == "conv_pw_5_relu" and shortcuts["gradcam"]["map_size"] == [8, 8]  # at 64 px
    for region in ("full", "lungs", "no_lungs"):
        assert shortcuts["regions"][region]["accuracy"] == pytest.approx((checks[f"predicted_{region}"] == checks["true"]).mean())
    # on full images the model's own predictions: the notebook's and the check's agree image by image
    assert (checks.set_index("path")["predicted_full"] == test.set_index("path")["predicted"].loc[checks["path"]].to_numpy()).all()
    cam = shortcuts["gradcam"]
    assert 0 < cam["lung_area"] < 1 and cam["images"] + cam["no_positive_energy"] == len(test)
    assert cam["images"] == checks["energy_in_lungs"].notna().sum()
    if cam["images"]:  # a barely trained model may have no positive evidence anywhere: counted, not averaged
        assert cam["ratio"] == pytest.approx((checks["energy_in_lungs"] / checks["lung_area"]).mean())
    assert shortcuts["planted_marker"]["source"] == "demo-hospital-A"
    counted = {(r["class"], r["source"]): r["images"] for r in metrics["sources"]["by_class_and_source"]}
    assert sum(counted.values()) == len(test) and metrics["sources"]["unknown_source"] == 0


@pytest.mark.slow
def test_data_found_through_kaggle_leaks_no_credential(finished_run, tiny_root):
    """The shared run found its data through kagglehub (data_dir=None), credentials in its kernel's environment:
    kagglehub was called with them, and no file the run wrote holds them, the executed notebook included."""
    folder, params = finished_run
    if params["data_dir"] is not None:
        pytest.skip("a data set in data/COVID-19_Radiography_Dataset is used before Kaggle; the download path cannot run")
    calls = [json.loads(line) for line in (folder / "kagglehub-calls.jsonl").read_text().splitlines()]
    assert calls == [{"handle": "tawsifurrahman/covid19-radiography-database", "credentials": 2}]
    metrics = json.loads((folder / "results" / "mn_resultset3" / "seed-42" / "metrics.json").read_text())
    assert metrics["dataset"]["root"] == str(tiny_root) and metrics["params"]["data_dir"] is None
    written = [path for path in folder.rglob("*") if path.is_file()]
    assert {"executed.ipynb", "metrics.json", "predictions.csv", "model.keras"} <= {path.name for path in written}
    for path in written:
        for value in KAGGLE_SECRETS.values():
            assert value.encode() not in path.read_bytes(), f"{value} leaked into {path}"


@pytest.mark.slow
def test_metrics_are_complete_and_consistent(finished_run, tiny_root):
    """Starts a kernel (the shared finished run): the record the notebook itself writes."""
    folder, params = finished_run
    metrics = json.loads((folder / "results" / "mn_resultset3" / "seed-42" / "metrics.json").read_text())
    for key in ("experiment", "params", "dataset", "train", "val", "test", "train_seconds", "seconds_per_epoch",
                "images_per_second", "epochs_run", "environment"):
        assert key in metrics, key
    assert metrics["params"]["image_size"] == 64 and metrics["params"]["weights"] == params["weights"]
    # the backbone trained: its BatchNorm statistics were recomputed on the training images, validation before and after
    batchnorm = metrics["batchnorm"]
    assert batchnorm["recalibrated"] is True and batchnorm["train_batches"] == -(-sum(metrics["dataset"]["counts"]["train"].values()) // 16)
    assert all(0 <= batchnorm[key] <= 1 for key in ("val_accuracy_before", "val_accuracy_after", "val_accuracy_on_batch_statistics"))
    assert batchnorm["val_accuracy_after"] == pytest.approx(metrics["val"]["accuracy"]), "the predictions are the recalibrated model's"
    assert ("warning" in batchnorm) == (abs(batchnorm["val_accuracy_on_batch_statistics"] - batchnorm["val_accuracy_after"]) > 0.05)
    dataset = metrics["dataset"]
    assert dataset["demo"] is True and dataset["skipped"] == []
    assert dataset["class_names"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    images = len(list(tiny_root.glob("*/images/*.png")))
    conflicts = dataset["duplicates"]
    assert conflicts["groups_across_classes"] == 3 and conflicts["conflicts_left_out"], "the tiny set's planted conflicts"
    assert sum(sum(per_class.values()) for per_class in dataset["counts"].values()) == dataset["total_images"] == (
        images - conflicts["images_in_conflicts"]), "every image but the label conflicts' is in the split"
    split = pd.read_csv(folder / "results" / dataset["split_file"])
    assert split_hash(split) == dataset["split_sha256"]

    test = metrics["test"]
    confusion = np.array(test["confusion_matrix"])
    assert confusion.sum() == sum(dataset["counts"]["test"].values())
    assert test["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-12)
    assert set(test["per_class"]) == set(dataset["class_names"])
    for name, scores in test["per_class"].items():
        assert set(scores) == {"precision", "recall", "sensitivity", "specificity", "f1", "support"}
        assert scores["support"] == dataset["counts"]["test"][name]
    for key in ("loss", "macro_f1", "balanced_accuracy", "roc_auc_ovr"):
        assert isinstance(test[key], float)
    for subset in ("train", "val"):
        assert {"loss", "accuracy", "last_epoch"} <= set(metrics[subset])

    history = pd.read_csv(folder / "results" / "mn_resultset3" / "seed-42" / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"]
    assert history["epoch"].tolist() == [1, 2, 3] and metrics["epochs_run"] == 3
    assert isinstance(metrics["train_seconds"], float)
    assert metrics["train_seconds"] == pytest.approx(history["epoch_seconds"].sum())
    assert metrics["seconds_per_epoch"] == pytest.approx(metrics["train_seconds"] / 3)
    train_images = sum(dataset["counts"]["train"].values())
    assert metrics["images_per_second"] == pytest.approx(train_images * 3 / metrics["train_seconds"])
    assert {"python", "tensorflow", "keras", "device", "git_commit"} <= set(metrics["environment"])


@pytest.mark.slow
def test_the_split_is_the_same_in_another_process(finished_run, tiny_root):
    """Starts a kernel (the shared finished run): its split against one made in this process."""
    folder, params = finished_run
    metrics = json.loads((folder / "results" / "mn_resultset3" / "seed-42" / "metrics.json").read_text())
    here, _, _ = grouped_split(tiny_root, scan_dataset(tiny_root).images, None, val_fraction=params.get("val_fraction", 0.16),
                               test_fraction=params.get("test_fraction", 0.2), seed=42)
    assert metrics["params"]["seed"] == 42
    assert metrics["dataset"]["split_sha256"] == here.sha256, "same seed, same split, in the kernel and here"


@pytest.fixture(scope="module")
def broken_masks(tiny_root, tmp_path_factory):
    """A copy of the tiny set in which one test image has no mask and another a mask of another size,
    and the Normal spreadsheet is gone."""
    root = tmp_path_factory.mktemp("masks") / "COVID-19_Radiography_Dataset"
    shutil.copytree(tiny_root, root)
    test = grouped_split(root, scan_dataset(root).images, None, val_fraction=0.16, test_fraction=0.2,
                         seed=42)[0].subset("test")["path"].tolist()
    without, resized = test[0], test[1]
    mask_file(root, without).unlink()
    Image.open(mask_file(root, resized)).resize((180, 200), Image.NEAREST).save(mask_file(root, resized))
    (root / "Normal.metadata.xlsx").unlink()
    return root, without, resized


@pytest.mark.slow
def test_an_image_without_a_mask_or_with_another_size_is_counted_not_a_failure(broken_masks, tmp_path):
    """Trains the notebook's steps in this process (the kernel is finished_run's, in conftest.py): broken masks
    must not fail a whole run."""
    root, without, resized = broken_masks
    run_steps(**tiny_params(tmp_path, root, epochs=1))
    run = tmp_path / "results" / "mn_resultset1" / "seed-42"
    metrics = json.loads((run / "metrics.json").read_text())
    shortcuts = metrics["shortcuts"]
    assert shortcuts["mask_counts"]["missing"] == 1 and shortcuts["mask_counts"]["other size"] == 1
    assert shortcuts["images_with_mask"] == shortcuts["test_images"] - 1
    assert any(without in problem for problem in shortcuts["mask_problems"])
    checks = pd.read_csv(run / "shortcuts.csv").set_index("path")
    assert pd.isna(checks.at[without, "predicted_no_lungs"]) and pd.isna(checks.at[without, "energy_in_lungs"])
    assert checks.at[resized, "mask_status"] == "other size" and not pd.isna(checks.at[resized, "energy_in_lungs"])
    assert any("Normal.metadata.xlsx: missing" in p for p in metrics["sources"]["problems"])
    assert metrics["sources"]["unknown_source"] == sum(checks["source"].str.startswith("unknown"))


@pytest.mark.slow
def test_training_on_the_lungs_alone_leaves_out_images_without_a_mask(broken_masks, tmp_path):
    """Trains the notebook's steps in this process: a region run, on masks that are partly broken."""
    root, without, resized = broken_masks
    run_steps(**tiny_params(tmp_path, root, input_region="lungs", epochs=1))
    metrics = json.loads((tmp_path / "results" / "mn_resultset1" / "seed-42" / "metrics.json").read_text())
    assert metrics["params"]["input_region"] == "lungs" and metrics["shortcuts"]["input_region"] == "lungs"
    dataset = metrics["dataset"]
    assert dataset["masks"]["excluded"] == 1 and dataset["masks"]["counts"]["missing"] == 1
    assert dataset["total_images"] == len(list(root.glob("*/images/*.png"))) - 1 - conflict_images(root)
    split = pd.read_csv(tmp_path / "results" / dataset["split_file"])
    assert without not in set(split["path"]) and resized in set(split["path"])
    assert split_hash(split) == dataset["split_sha256"]


@pytest.mark.parametrize(
    "bad, error, fragment",
    [
        ({"learning_rate": "abc"}, "ParameterError", "Parameter learning_rate"),
        ({"lerning_rate": 0.1}, "ParameterError", "did you mean 'learning_rate'"),
    ],
)
@pytest.mark.slow
def test_bad_parameters_stop_before_any_data_is_read(tmp_path, bad, error, fragment):
    """Starts a kernel: papermill's parameters reach the notebook's first cells, which stop."""
    params = {**tiny_params(tmp_path, tmp_path / "never-read"), **bad}
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        run_notebook(tmp_path / "executed.ipynb", **params)
    assert failure.value.ename == error
    assert fragment in failure.value.evalue
    assert "steps.check(globals())" in failure.value.source  # the first cell after the parameters
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_imagenet_weights_without_network_stop_in_the_first_cells(tmp_path, monkeypatch, tiny_root):
    """The kernel is offline whatever this machine's network: a sitecustomize refuses every connection in it."""
    offline = kernel_site(tmp_path / "site", {"sitecustomize.py": (
        "import errno, socket\n\n\ndef refused(address, *args, **kwargs):\n"
        "    raise OSError(errno.ENETUNREACH, f'Network is unreachable (test): {address}')\n\n\n"
        "socket.create_connection = refused\n")})
    monkeypatch.setenv("PYTHONPATH", offline["PYTHONPATH"])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    params = tiny_params(tmp_path, tiny_root, weights="imagenet")
    started = time.perf_counter()
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        run_notebook(tmp_path / "executed.ipynb", **params)
    elapsed = time.perf_counter() - started
    assert failure.value.ename == "WeightsError"
    assert "mobilenet_1_0_224_tf_no_top.h5" in failure.value.evalue and "weights=None" in failure.value.evalue
    assert "Network is unreachable (test)" in failure.value.evalue and KERAS_WEIGHTS_URL.split("/")[2] in failure.value.evalue
    assert "steps.check(globals())" in failure.value.source
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("name", ["mobilenet_finetune.ipynb", "summary.ipynb"])
def test_the_colab_setup_cell_takes_the_project_address_from_the_environment_only(tmp_path, monkeypatch, name):
    notebook = json.loads((PROJECT / "notebooks" / name).read_text())
    setup = "".join(next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")["source"])
    assert "COVID_MOBILENET_REPOSITORY" in setup and not re.search(r"[\"']https?://", setup), "no address in the code"
    monkeypatch.chdir(tmp_path)  # no checkout here
    monkeypatch.delenv("COVID_MOBILENET_REPOSITORY", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(RuntimeError, match="set COVID_MOBILENET_REPOSITORY to the git address of your copy"):
        exec(compile(setup, "setup cell", "exec"), {})
    # Nothing else claims an address for the project that may not resolve.
    for path in [PROJECT / "README.md", *(PROJECT / "notebooks").glob("*.ipynb")]:
        assert "github.com/covid-mobilenet" not in path.read_text(), path


def notebook_cell(source_contains: str) -> str:
    notebook = json.loads((PROJECT / "notebooks" / "mobilenet_finetune.ipynb").read_text())
    return next("".join(cell["source"]) for cell in notebook["cells"]
                if cell["cell_type"] == "code" and source_contains in "".join(cell["source"]))


def test_the_notebooks_visible_model_is_the_packages_own():
    """The head a student reads and may change in the notebook, and its compile call, are the package's: same layers,
    same initial weights, same optimizer, loss and metrics (what run_experiment builds)."""
    import ast

    import keras
    import numpy as np
    import tensorflow as tf

    from covid_mobilenet.model.architecture import build_head, build_model, compile_model

    namespace = {"keras": keras}
    exec(compile(notebook_cell("def study_head("), "head cell", "exec"), namespace)
    settings = dict(image_size=32, hidden_layers=2, dense_units=8, dropout=0.5, weights=None, train_base=True, seed=7)
    shown, package = (build_model(4, **settings, head=head) for head in (namespace["study_head"], None))
    assert [layer.get_config() for layer in shown.layers[3:]] == [layer.get_config() for layer in package.layers[3:]]
    assert all(np.array_equal(a, b) for a, b in zip(shown.get_weights(), package.get_weights()))
    features = {key: settings[key] for key in ("hidden_layers", "dense_units", "dropout", "seed")}
    heads = [build_head((1, 1, 1024), 4, **features, head=head) for head in (namespace["study_head"], None)]
    assert all(np.array_equal(a, b) for a, b in zip(heads[0].get_weights(), heads[1].get_weights())), "fast mode too"

    compile_cell = ast.parse(notebook_cell("model.compile("))
    compile_block = next(node for node in compile_cell.body if isinstance(node, ast.With))
    runtime = type("Runtime", (), {"strategy": tf.distribute.get_strategy()})()
    exec(compile(ast.Module([compile_block], []), "compile cell", "exec"),
         {"keras": keras, "model": shown, "runtime": runtime, "learning_rate": 3e-5, "jit_compile": False})
    compile_model(package, 3e-5)
    assert type(shown.optimizer) is type(package.optimizer) is keras.optimizers.Adam
    unnamed = [{**optimizer.get_config(), "name": None} for optimizer in (shown.optimizer, package.optimizer)]
    assert unnamed[0] == unnamed[1], "the same Adam (Keras numbers the second one's name)"
    assert type(shown.loss) is type(package.loss) and shown.loss.get_config() == package.loss.get_config()
    configs = [{key: value for key, value in model.get_compile_config().items() if key != "optimizer"}
               for model in (shown, package)]
    assert configs[0] == configs[1], "loss, metrics, XLA and the rest of compile's arguments"
