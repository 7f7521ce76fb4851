import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from functools import cache
from pathlib import Path

import pytest
# submitit's import runs logging.config.dictConfig, which closes every logging handler there is, pytest's capture
# of the running test included: imported once here, before any test, run_all.main can run in-process.
import submitit  # noqa: F401

from covid_mobilenet.data.demo import generate_demo_dataset

DEMO_IMAGES = 240


@pytest.fixture(scope="session")
def demo_master(tmp_path_factory) -> Path:
    """A demo set generated once per test session; copy it before changing it."""
    return generate_demo_dataset(tmp_path_factory.mktemp("demo") / "COVID-19_Radiography_Dataset", images=DEMO_IMAGES, seed=7)


@pytest.fixture
def demo_root(demo_master, tmp_path) -> Path:
    """A private copy of the demo set that a test may change."""
    root = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(demo_master, root)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A small demo set for notebook runs: 100 images, enough for every class in every split."""
    return generate_demo_dataset(tmp_path_factory.mktemp("tiny") / "COVID-19_Radiography_Dataset", images=100, seed=1)


def conflict_images(root: Path) -> int:
    """How many images of a generated set are label conflicts (a planted copy under another class, and its original),
    which every run leaves out of training and testing (data/grouping.py)."""
    from covid_mobilenet.data.grouping import group_images
    from covid_mobilenet.data.scan import scan_dataset

    return len(group_images(root, scan_dataset(root).images, None).conflicts)


def tiny_params(tmp_path: Path, data_dir: Path, **overrides) -> dict:
    """Notebook parameters for a run of seconds: small images, two epochs, no ImageNet weights."""
    return {
        "data_dir": str(data_dir),
        "results_dir": str(tmp_path / "results"),
        "graph_dir": str(tmp_path / "Graph"),
        "image_size": 32,
        "batch_size": 16,
        "epochs": 2,
        "learning_rate": 1e-3,
        "weights": None,
        **overrides,
    }


PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
NAMES = [f"mn_resultset{n}" for n in range(1, 8)]
# The demo sweep of the tests runs four of the seven (one, two and three hidden layers; two dense
# sizes): the other three differ only in numbers, and the suite must stay under ten minutes.
SWEPT = ["mn_resultset1", "mn_resultset2", "mn_resultset4", "mn_resultset5"]
ONLY_SWEPT = ["--only", ",".join(SWEPT)]
TINY = ["--image-size", "32", "--epochs", "2", "--set", "batch_size=32"]  # a sweep of seconds per experiment


# The demo's backbone, pretrained on a few pictures for one epoch: the sweeps of the tests check the
# mechanics, not accuracy (tests/test_demo_backbone.py covers the backbone itself).
TEST_BACKBONE = {"images": 96, "epochs": 1, "batch_size": 32, "learning_rate": 0.003, "seed": 0}


@cache
def tiny_backbone_config() -> Path:
    """experiments.json with TEST_BACKBONE as the demo's backbone, in a folder of its own."""
    config = json.loads((PROJECT / "experiments.json").read_text())
    config["demo"]["backbone"] = TEST_BACKBONE
    path = Path(tempfile.mkdtemp(prefix="covid-mobilenet-config-")) / "experiments.json"
    path.write_text(json.dumps(config))
    return path


def with_test_backbone(args: tuple) -> tuple:
    """run_all.py's arguments, with --config tiny_backbone_config() added to a --demo sweep that names none."""
    return (*args, "--config", str(tiny_backbone_config())) if "--demo" in args and "--config" not in args else args


def run_all(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """run_all.py in a subprocess; a --demo sweep without its own --config gets tiny_backbone_config()."""
    return subprocess.run(
        [sys.executable, "run_all.py", *with_test_backbone(args)], cwd=PROJECT, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def run_all_here(*args) -> subprocess.CompletedProcess:
    """run_all.main(argv) in this process, for what trains nothing (refusals, dry runs): no interpreter to start.
    A --demo sweep without its own --config gets tiny_backbone_config(), as with run_all()."""
    import run_all as driver

    args = with_test_backbone(args)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = driver.main(list(args))
        except SystemExit as exit_:  # argparse's refusals
            code = exit_.code
    return subprocess.CompletedProcess(["run_all.py", *args], code, out.getvalue(), err.getvalue())


def folders(tmp: Path, data: Path) -> list[str]:
    return ["--results-dir", str(tmp / "results"), "--graph-dir", str(tmp / "Graph"), "--data-dir", str(data)]


def comparable(metrics: dict) -> dict:
    """What must not depend on interruptions or on the process: everything but times, places and versions."""
    return {
        "params": {k: v for k, v in metrics["params"].items() if k not in ("results_dir", "graph_dir")},
        "dataset": metrics["dataset"],
        **{key: metrics[key] for key in ("model", "train", "val", "test", "epochs_run")},
    }


@pytest.fixture(scope="session")
def demo_sweep(tiny_root, tmp_path_factory):
    """One uninterrupted demo sweep (of SWEPT) on tiny data: (folder, completed process, seconds, README bytes before)."""
    tmp = tmp_path_factory.mktemp("sweep")
    readme_before = README.read_bytes()
    started = time.perf_counter()
    first = run_all("--demo", *folders(tmp, tiny_root), *TINY, *ONLY_SWEPT)
    return tmp, first, time.perf_counter() - started, readme_before


def kernel_site(folder: Path, files: dict[str, str]) -> dict[str, str]:
    """Python files (``{relative path: source}``) in ``folder``, put first on the PYTHONPATH of the processes this
    test starts (notebook kernels): a ``sitecustomize.py`` runs in every one of them, a package shadows the real one."""
    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(source)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


# Kaggle credentials planted in the environment of the shared notebook run, which finds its data through the Kaggle
# path (a stand-in kagglehub that checks them): none may reach any output.
KAGGLE_SECRETS = {"KAGGLE_USERNAME": "leaky-user-5f2c9a", "KAGGLE_KEY": "0123456789abcdef-fake-key-7d41"}
FAKE_KAGGLEHUB = """
import json, os


def dataset_download(handle, *args, **kwargs):
    \"\"\"kagglehub's download, offline: it takes the credentials from the environment, and returns a folder.\"\"\"
    credentials = [os.environ.get(name) for name in ("KAGGLE_USERNAME", "KAGGLE_KEY")]
    if not all(credentials):
        raise RuntimeError("no Kaggle credentials in the environment")
    with open(os.environ["FAKE_KAGGLEHUB_CALLS"], "a") as calls:
        calls.write(json.dumps({"handle": handle, "credentials": len(credentials)}) + "\\n")
    return os.environ["FAKE_KAGGLEHUB_DATASET"]
"""


@pytest.fixture
def own_sweep(demo_sweep, tmp_path) -> Path:
    """A private copy of the shared demo sweep's folder, for a test that changes its results: as if the sweep had run
    there (each metrics.json records the copy's folders), so a rerun skips what is finished. Same layout: results/, Graph/."""
    source = demo_sweep[0]
    for folder in ("results", "Graph"):
        shutil.copytree(source / folder, tmp_path / folder)
    for metrics_file in (tmp_path / "results").glob("*/seed-*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        metrics["params"].update(results_dir=str(tmp_path / "results"), graph_dir=str(tmp_path / "Graph"))
        metrics_file.write_text(json.dumps(metrics, indent=2))
    return tmp_path


@pytest.fixture(scope="session")
def finished_run(tiny_root, tmp_path_factory):
    """One notebook run from a weights file (a saved random backbone: any file of the right shapes loads), whose
    data comes through the Kaggle path (``data_dir=None``, credentials in the environment, kagglehub standing in),
    shared by the notebook's tests and the product's (predict, export): (folder, parameters)."""
    import papermill

    from covid_mobilenet.common.paths import EXPERIMENT_NOTEBOOK
    from covid_mobilenet.data.layout import DEFAULT_DATA_DIR
    from covid_mobilenet.model.architecture import build_backbone

    folder = tmp_path_factory.mktemp("run")
    weights = folder / "random_backbone.weights.h5"
    build_backbone(64, None).save_weights(weights)
    kaggle = not DEFAULT_DATA_DIR.exists()  # a data set in data/ is used before Kaggle is asked
    params = {**tiny_params(folder, tiny_root, experiment="mn_resultset3", epochs=3, image_size=64, weights=str(weights)),
              **({"data_dir": None} if kaggle else {})}
    environment = {**KAGGLE_SECRETS, **kernel_site(folder / "site", {"kagglehub/__init__.py": FAKE_KAGGLEHUB}),
                   "FAKE_KAGGLEHUB_CALLS": str(folder / "kagglehub-calls.jsonl"), "FAKE_KAGGLEHUB_DATASET": str(tiny_root)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        papermill.execute_notebook(str(EXPERIMENT_NOTEBOOK), str(folder / "executed.ipynb"), parameters=params,
                                   kernel_name="python3", progress_bar=False)
    return folder, params


@pytest.fixture(scope="session")
def trained_run(finished_run):
    """The notebook's finished run on the tiny set: (run folder, its metrics), for the product's tests."""
    run = finished_run[0] / "results" / "mn_resultset3" / "seed-42"
    return run, json.loads((run / "metrics.json").read_text())


CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def write_finished_run(results: Path, name: str, seed: int = 42, *, correct=None, demo: bool = True,
                       hidden_layers: int = 1, dense_units: int = 8, learning_rate: float = 1e-4,
                       val_accuracy: float = 0.75) -> Path:
    """A finished run's folder written by hand, as the notebook leaves it for the analyses: ``metrics.json`` (its
    test and calibration blocks computed by the project's own analyses from the predictions) and ``predictions.csv``
    (40 validation rows, then the test rows). Test image i
    is right when ``correct[i]``; for the summary's tests, which need no training."""
    import numpy as np
    import pandas as pd

    from covid_mobilenet.analysis.calibration import calibrate
    from covid_mobilenet.analysis.metrics import classification_report, labels_and_probabilities
    from covid_mobilenet.analysis.uncertainty import single_run_intervals, wilson_interval

    correct = np.asarray(correct if correct is not None else np.arange(40) % 5 != 0)

    def predictions(split: str, correct: np.ndarray, first: int) -> pd.DataFrame:
        truth = [CLASSES[i % 4] for i in range(len(correct))]
        guess = [t if ok else CLASSES[(CLASSES.index(t) + 1) % 4] for t, ok in zip(truth, correct)]
        rows = pd.DataFrame({"path": [f"{t}/images/{t}-{first + i}.png" for i, t in enumerate(truth)], "split": split,
                             "true": truth, "predicted": guess})
        for name_ in CLASSES:
            rows[f"p_{name_}"] = [0.7 if g == name_ else 0.1 for g in guess]
        return rows

    rows = predictions("test", correct, 0)
    val = predictions("val", np.arange(40) % 4 != 0, len(correct))
    calibration, table = calibrate(pd.concat([val, rows], ignore_index=True), CLASSES)
    labels, probabilities = labels_and_probabilities(rows, CLASSES)
    test = classification_report(labels, probabilities, CLASSES)
    test["intervals"] = single_run_intervals(labels, probabilities.argmax(axis=1), 4)
    n, right = len(correct), int(correct.sum())
    region = {"accuracy": right / n, "correct": right, "images": n, "interval": wilson_interval(right, n), "above_majority_p": 0.5}
    counts = {split: {c: (n // 4 if split == "test" else 2 * n // 4) for c in CLASSES} for split in ("train", "val", "test")}
    metrics = {
        "experiment": name,
        "params": {"experiment": name, "seed": seed, "split_seed": 42, "hidden_layers": hidden_layers, "dense_units": dense_units,
                   "learning_rate": learning_rate, "dropout": 0.5, "epochs": 2, "image_size": 32, "input_region": "full"},
        "dataset": {"root": "/data/COVID-19_Radiography_Dataset", "demo": demo, "class_names": CLASSES, "counts": counts,
                    "total_images": sum(sum(c.values()) for c in counts.values()), "split_sha256": "ab" * 32,
                    "split_file": "split-abababababab.csv"},
        "val": {"accuracy": val_accuracy, "loss": 0.7}, "test": test, "epochs_run": 2, "train_seconds": 12.5, "predictions_file": "predictions.csv",
        "shortcuts": {"input_region": "full", "test_images": n, "images_with_mask": n,
                      "regions": {"full": region, "lungs": region, "no_lungs": {**region, "accuracy": 0.3}},
                      "majority_rate": 0.25, "majority_class": "COVID",
                      "gradcam": {"layer": "conv_pw_13_relu", "map_size": [7, 7], "energy_in_lungs": 0.6, "lung_area": 0.3, "ratio": 2.0}},
        "sources": {"by_class_and_source": [{"class": c, "source": f"source-{c}", "images": n // 4, "correct": right // 4,
                                             "accuracy": right / n} for c in CLASSES], "images": n, "unknown_source": 0, "problems": []},
        "environment": {"device": "CPU: test", "git_commit": "0" * 40},
        "calibration": calibration,
    }
    folder = results / name / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


# The suite runs in two pytest-xdist workers (pyproject.toml: `-n 2 --dist loadgroup`): most of a notebook run is
# one busy core (a kernel starting, TensorFlow tracing), so two at once use the machine's two. The tests that share a
# fixture that trains (session- or module-scoped) run in one worker, so that fixture is built once, as in a serial
# run; the Slurm tests share one cluster queue. Marked as each test is collected, before xdist reads the marks.
# (pytest 9.2 stores node ids where pytest-xdist 3.8's loadgroup cannot tag them: requirements-dev.txt keeps 9.1.)
SHARED_GROUPS = {  # fixture: group. The Slurm tests compare their sweep with the local demo sweep: one group for both
    "demo_sweep": "sweeps", "own_sweep": "sweeps", "slurm": "sweeps", "slurm_sweep": "sweeps",
    "finished_run": "finished_run", "trained_run": "finished_run", "pretrained": "demo_backbone",
    "backbone_file": "features", "broken_masks": "broken_masks",
}


def pytest_itemcollected(item):
    fixtures = getattr(item, "fixturenames", ())
    groups = [group for fixture, group in SHARED_GROUPS.items() if fixture in fixtures]
    if item.get_closest_marker("slurm"):
        groups.insert(0, "sweeps")
    if groups:  # the first: a test in two groups would build the other's fixture again (none is, today)
        item.add_marker(pytest.mark.xdist_group(groups[0]))
