"""The benchmark's command on a tiny set: every figure it promises is measured and written."""
import json
import math

import pytest

from covid_mobilenet.bench import cli, quantization, sweeps
from covid_mobilenet.common.config import load_config
from tests.conftest import conflict_images

pytestmark = pytest.mark.slow  # every test here trains


def test_the_benchmark_measures_and_writes_every_figure(tmp_path, monkeypatch, capsys):
    """Trains: the fast-sweep figure times the notebook's real steps, end to end against the feature cache."""
    config = load_config()
    one = {"mn_resultset4": config["experiments"]["mn_resultset4"]}
    monkeypatch.setattr(sweeps, "load_config", lambda: {**config, "experiments": one})  # one configuration, not seven
    runs, trained, real_run_experiment = [], {}, sweeps.run_experiment

    def recorded(params, **kwargs):
        run = real_run_experiment(params, **kwargs)
        runs.append((run.params["fast"], run.params["epochs"], run.params["train_base"], run.metrics["epochs_run"]))
        trained[run.params["fast"]] = run
        return run

    monkeypatch.setattr(sweeps, "run_experiment", recorded)
    # the int8 comparison needs a trained run (test_product covers measure_quantization on one): none here
    monkeypatch.setattr(quantization, "quantization_run", lambda: None)
    output = tmp_path / "bench.json"
    output.write_text(json.dumps({"duplicates": {"recall_all": 1.0}, "unfamiliar": {"auroc": 1.0}, "pipeline_speedup": -1}))  # an earlier file
    assert cli.main(["--images", "100", "--image-size", "32", "--steps", "1", "--epochs", "1",
                     "--data-dir", str(tmp_path / "data"), "--output", str(output)]) == 0

    bench = json.loads(output.read_text())
    assert bench["duplicates"] == {"recall_all": 1.0} and bench["unfamiliar"] == {"auroc": 1.0}, \
        "the near-duplicate and guard figures, measured apart, are kept"
    for key in ("pipeline_speedup", "training_vs_ceiling", "fast_sweep_speedup", "peak_rss_gib"):
        assert math.isfinite(bench[key]) and bench[key] > 0, key
    assert bench["pipeline"]["images"] == 100
    assert len(bench["pipeline"]["baseline"]["epochs"]) == len(bench["pipeline"]["project"]["epochs"]) == 3
    assert bench["pipeline_speedup"] == bench["pipeline"]["project"]["later_epochs"] / bench["pipeline"]["baseline"]["later_epochs"]
    assert bench["fast_sweep"]["configurations"] == 1 and bench["fast_sweep"]["epochs"] == 1
    # the notebook's steps ran to the end, end to end and then through the cache, each one epoch
    assert runs == [(False, 1, False, 1), (True, 1, False, 1)]
    assert bench["fast_sweep_speedup"] == bench["fast_sweep"]["end_to_end_seconds"] / bench["fast_sweep"]["cached_seconds"]
    # each side's time holds its run's training, and the cached side computed the backbone's features itself
    assert bench["fast_sweep"]["end_to_end_seconds"] > trained[False].metrics["train_seconds"] > 0
    assert bench["fast_sweep"]["cached_seconds"] > trained[True].metrics["train_seconds"] > 0
    assert trained[True].data.features.computed_here and trained[False].data.features is None
    assert (trained[True].paths["metrics"]).parent.name == "seed-42", "the run's files were written, as a notebook's are"
    assert bench["precision"]["float32"]["images_per_second"] > 0
    assert {"cpu", "cpu_count", "gpus", "tensorflow"} <= set(bench["machine"])
    assert bench["quantization"]["skipped"].startswith("no finished run") and "int8_latency_ratio" not in bench
    assert bench["settings"]["run"] is None
    printed = capsys.readouterr().out
    assert "pipeline_speedup" in printed and "fast_sweep_speedup" in printed and str(output) in printed


def test_the_full_size_sweep_runs_cold_then_warm_and_reads_its_runs(tiny_root, tmp_path):
    """Trains: the --fast sweep through run_all.py as --full-size runs it (one configuration here, on 100 images at
    32 px), with an empty feature cache and again on the cache it left. (Two configurations sharing one cache entry:
    tests/test_run_all.py::test_fast_sweep_runs_the_backbone_once_for_all_configurations.)"""
    result = sweeps.measure_full_size(tiny_root, 32, only=["mn_resultset1"])
    assert result["images"] == 100 - conflict_images(tiny_root) and result["image_size"] == 32 and result["epochs"] == sweeps.FULL_SIZE_EPOCHS
    cold, warm = result["cold"], result["warm"]
    assert cold["runs"] == warm["runs"] == 1 and cold["backbone_seconds"] > 0 and warm["backbone_seconds"] == 0, \
        "the warm sweep computes no backbone features"
    assert 0 < result["peak_rss_gib"] < 24 and cold["wall_seconds"] > cold["head_training_seconds"] > 0
    assert "--set weights=None" in result["command"] and f"--data-dir {tiny_root}" in result["command"]


def test_the_duplicates_benchmark_finds_every_known_copy_and_no_false_match(tmp_path, monkeypatch, capsys):
    """No training: --duplicates on small sets (80 films for the known pairs, 100 for the timing)."""
    from functools import partial

    from covid_mobilenet.bench import duplicates

    monkeypatch.setattr(duplicates, "known_pairs", partial(duplicates.known_pairs, images=80))
    monkeypatch.setattr(cli, "FULL_SIZE_IMAGES", 100)
    output = tmp_path / "bench.json"
    output.write_text(json.dumps({"pipeline_speedup": 55.8}))
    assert cli.main(["--duplicates", "--data-dir", str(tmp_path / "data"), "--output", str(output)]) == 0
    bench = json.loads(output.read_text())
    assert bench["pipeline_speedup"] == 55.8, "the other figures are kept"
    figures = bench["duplicates"]
    assert figures["copies"] == 5 * figures["films"] and set(figures["recall"]) == set(duplicates.TRANSFORMS)
    assert figures["recall_all"] == 1.0 and figures["false_matches"] == 0 and figures["distinct_pairs"] > 0
    full = figures["full_size"]
    assert full["images"] == 100 and full["found"] == full["planted"] > 0 and full["false_match_groups"] == 0
    assert full["first_seconds"] > full["cached_seconds"] >= 0
    assert "planted copies found" in capsys.readouterr().out


def test_the_full_size_sweep_alone_is_added_beside_the_reference_speed(tmp_path, monkeypatch):
    """--full-size-only: the sweep's figures (measure_full_size, tested above) go into the output file with this
    machine's reference speed, the other figures kept."""
    measured = []
    monkeypatch.setattr(sweeps, "measure_full_size", lambda root, image_size: measured.append((root, image_size)) or {
        "images": 100, "cold": {"wall_seconds": 60.0}, "warm": {"wall_seconds": 30.0}})
    monkeypatch.setattr(cli, "ensure_data", lambda root, images: root)
    monkeypatch.setattr(cli, "reference_speed", lambda args: 16.5)
    output = tmp_path / "bench.json"
    output.write_text(json.dumps({"pipeline_speedup": 40.0}))
    assert cli.main(["--full-size-only", "--image-size", "64", "--data-dir", str(tmp_path), "--output", str(output)]) == 0
    bench = json.loads(output.read_text())
    assert measured == [(tmp_path / "full", 64)]
    assert bench["pipeline_speedup"] == 40.0 and bench["full_size"]["reference_speed"] == 16.5
    assert bench["full_size"]["cold"] == {"wall_seconds": 60.0} and "cpu" in bench["full_size"]["machine"]
