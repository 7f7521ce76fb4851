import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import pytest

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


def run_all(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """run_all.py in a subprocess; a --demo sweep without its own --config gets tiny_backbone_config()."""
    if "--demo" in args and "--config" not in args:
        args = (*args, "--config", str(tiny_backbone_config()))
    return subprocess.run(
        [sys.executable, "run_all.py", *args], cwd=PROJECT, capture_output=True, text=True, timeout=timeout, **kwargs
    )


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


@pytest.fixture(scope="session")
def finished_run(tiny_root, tmp_path_factory):
    """One notebook run from a weights file (a saved random backbone: any file of the right shapes loads),
    shared by the notebook's tests and the product's (predict, export): (folder, parameters)."""
    import papermill

    from covid_mobilenet.common.paths import EXPERIMENT_NOTEBOOK
    from covid_mobilenet.model.architecture import build_backbone

    folder = tmp_path_factory.mktemp("run")
    weights = folder / "random_backbone.weights.h5"
    build_backbone(64, None).save_weights(weights)
    params = tiny_params(folder, tiny_root, experiment="mn_resultset3", epochs=3, image_size=64, weights=str(weights))
    papermill.execute_notebook(str(EXPERIMENT_NOTEBOOK), str(folder / "executed.ipynb"), parameters=params,
                               kernel_name="python3", progress_bar=False)
    return folder, params
