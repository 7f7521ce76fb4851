"""Precision and devices: what precision="auto" picks, and training under MirroredStrategy."""
import json
import subprocess
import sys
import textwrap

import pytest

from covid_mobilenet.common import machine
from covid_mobilenet.model import runtime
from tests.conftest import PROJECT


def bench_file(tmp_path, float32, bfloat16, cpu=None, cores=None):
    import os

    path = tmp_path / "bench.json"
    path.write_text(json.dumps({
        "machine": {"cpu": cpu or machine.cpu_name(), "cpu_count": cores or os.cpu_count(), "gpus": []},
        "precision": {"float32": {"images_per_second": float32}, "mixed_bfloat16": {"images_per_second": bfloat16}},
    }))
    return path


def test_auto_precision_follows_the_hardware_and_this_machines_benchmark(tmp_path):
    choose = runtime.choose_precision
    no_bench = tmp_path / "absent.json"
    assert choose("auto", [(8, 0)], set(), no_bench)[0] == "mixed_float16"
    assert choose("auto", [(6, 1)], set(), no_bench)[0] == "float32"  # no tensor cores
    assert choose("auto", [], {"avx2"}, no_bench)[0] == "float32"
    assert choose("auto", [], {"avx512_bf16"}, no_bench)[0] == "float32"  # not measured: no guess
    assert choose("auto", [], {"amx_bf16"}, bench_file(tmp_path, 17.7, 21.0))[0] == "mixed_bfloat16"
    assert choose("auto", [], {"amx_bf16"}, bench_file(tmp_path, 16.9, 14.3))[0] == "float32"
    assert choose("auto", [], {"amx_bf16"}, bench_file(tmp_path, 17.7, 21.0, cpu="another CPU"))[0] == "float32"
    assert choose("mixed_bfloat16", [], set(), no_bench) == ("mixed_bfloat16", "set by the precision parameter")


def test_a_reduced_precision_model_keeps_a_float32_output():
    import keras

    from covid_mobilenet.model.architecture import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(4, image_size=32, hidden_layers=1, dense_units=8, dropout=0.5, weights=None, train_base=True, seed=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("dense_1").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from covid_mobilenet.run.params import notebook_defaults
    from covid_mobilenet.run.steps import run_experiment
    run = run_experiment({**notebook_defaults(), **json.loads(sys.argv[1])}, devices=["/cpu:0", "/cpu:1"])
    data, metrics = run.data, run.metrics
    print("RESULT", json.dumps({
        "checked": metrics["shortcuts"]["regions"]["no_lungs"]["images"], "test_size": data.pipelines.sizes["test"],
        "replicas": run.runtime.replicas, "batch": data.pipelines.batch_size, "steps": data.pipelines.steps_per_epoch,
        "train": data.pipelines.sizes["train"], "variable": type(run.model.trainable_weights[0].value).__name__,
        "losses": run.history["loss"].tolist(), "runtime": metrics["runtime"], "test": metrics["test"]["accuracy"],
        "saved": sorted(name for name, path in run.paths.items() if path.exists()),
    }))
""")


@pytest.mark.slow
def test_training_under_mirrored_strategy_on_two_logical_cpus(tmp_path, tiny_root):
    """Trains: gradients all-reduced over two replicas are the claim."""
    params = {"data_dir": str(tiny_root), "results_dir": str(tmp_path / "results"), "graph_dir": str(tmp_path / "Graph"),
              "experiment": "mirrored", "image_size": 32, "batch_size": 8, "epochs": 2, "learning_rate": 1e-3,
              "weights": None, "dropout": 0.0, "train_base": False, "precision": "float32"}  # the head's gradients are all-reduced all the same
    done = subprocess.run([sys.executable, "-c", MIRRORED, json.dumps(params)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["replicas"] == 2 and result["runtime"]["strategy"] == "MirroredStrategy"
    assert result["batch"] == 16, "batch_size is per replica: the global batch is scaled by the replicas"
    assert result["steps"] == -(-result["train"] // 16)
    assert "Mirrored" in result["variable"]
    assert len(result["losses"]) == 2 and all(loss == loss for loss in result["losses"])  # finite
    assert result["checked"] == result["test_size"], "the shortcut checks (Grad-CAM, regions) run under the strategy too"
    assert (tmp_path / "results" / "mirrored" / "seed-42" / "metrics.json").is_file()
    assert {"model", "predictions", "metrics"} <= set(result["saved"]), "the run's files, written under the strategy"

