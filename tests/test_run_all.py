"""run_all.py end to end on tiny generated data, and the summary on partial results."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.analysis import summary, tables
from covid_mobilenet.analysis import text as summary_text
from covid_mobilenet.analysis.text import format_duration
from covid_mobilenet.common.config import load_config
from covid_mobilenet.common.readme import replace_readme_section

from tests.conftest import (NAMES, ONLY_SWEPT, PROJECT, README, SWEPT, TINY, comparable, folders, run_all, run_all_here,
                            tiny_backbone_config, write_finished_run)


@pytest.mark.slow
def test_demo_sweep_leaves_every_output(demo_sweep):
    """The shared demo sweep: what run_all.py --demo leaves."""
    tmp, first, seconds, readme_before = demo_sweep
    assert first.returncode == 0, first.stdout + first.stderr
    results, graphs = tmp / "results", tmp / "Graph"
    for name in SWEPT:
        executed = nbformat.read(results / name / "seed-42" / f"{name}.ipynb", as_version=4)
        code = [cell for cell in executed.cells if cell.cell_type == "code"]
        assert all(cell.execution_count for cell in code), f"{name}: every cell ran"
        assert not [o for cell in code for o in cell.outputs if o.output_type == "error"], f"{name}: no cell failed"
        assert executed.metadata.papermill.parameters["experiment"] == name
        metrics = json.loads((results / name / "seed-42" / "metrics.json").read_text())
        assert metrics["experiment"] == name and metrics["params"]["seed"] == 42 and 0 <= metrics["test"]["accuracy"] <= 1
        assert metrics["dataset"]["demo"] is True and metrics["epochs_run"] == 2
        assert Image.open(graphs / f"{name[-1]}-seed-42.png").size[0] > 500, "the training curves: two panels"
    assert Image.open(graphs / "The_result_of_MobileNet_fine_tuning.png").size[0] > 500
    table = pd.read_csv(results / "summary.csv")
    assert table["Model"].tolist() == NAMES and table.loc[table["Status"] == "done", "Model"].tolist() == SWEPT
    text = (results / "summary.md").read_text()
    assert text.startswith("# Demo (synthetic data)") and "Demo run on synthetic images" in text
    assert all(f"**{name}**" in text for name in NAMES) and "How to read it" in text
    summary_notebook = nbformat.read(results / "summary.ipynb", as_version=4)
    assert summary_notebook.metadata.papermill.parameters["demo"] is True
    assert all(cell.execution_count for cell in summary_notebook.cells if cell.cell_type == "code")
    assert README.read_bytes() == readme_before, "demo mode never touches the README"
    assert all(f"{name}/seed-42" in first.stdout for name in SWEPT)
    # the audit runs after the runs, or in the slot the last run leaves free once the first run has finished
    said = re.search(rf"total \d+ s: (demo backbone \d+ s, )?{len(SWEPT)} runs \(2 at once\) \d+ s, (audit \d+ s, )?summary "
                     r"\d+ s, (audit \(beside the last runs\) \d+ s, )?the rest \(checks, start-up\) \d+ s", first.stdout)
    assert said and bool(said[2]) != bool(said[3]), "where the demo's time went, the audit once"
    timing = json.loads((results / "timing.json").read_text())  # what `benchmark --demo-timing` records
    assert timing["demo"] and not timing["fast"] and timing["runs"] == timing["configurations"] == len(SWEPT)
    assert timing["backbone_pretrained"] == bool(said[1]) and 0 < timing["runs_seconds"] < timing["total_seconds"]
    assert list(timing["phases"])[-3:] == ([f"{len(SWEPT)} runs (2 at once)", "audit", "summary"] if said[2] else
                                           [f"{len(SWEPT)} runs (2 at once)", "summary", "audit (beside the last runs)"])
    assert len(re.findall(r"^audit\s+ran ", first.stdout, re.M)) == 1, "the audit ran, once"


@pytest.mark.slow
def test_table_numbers_come_from_metrics(demo_sweep):
    """The shared demo sweep: its summary against its runs' records."""
    tmp = demo_sweep[0]
    table = pd.read_csv(tmp / "results" / "summary.csv")
    assert table["Model"].tolist() == NAMES  # every configuration has a row; those not run say so
    assert table.loc[table["Status"] == "done", "Model"].tolist() == SWEPT
    assert set(table.loc[table["Status"] != "done", "Status"]) == {"missing"}
    for row in table[table["Status"] == "done"].to_dict("records"):
        metrics = json.loads((tmp / "results" / row["Model"] / "seed-42" / "metrics.json").read_text())
        assert row["Test accuracy"] == metrics["test"]["accuracy"]
        assert row["Training time"] == format_duration(metrics["train_seconds"])
        assert row["Training seconds"] == metrics["train_seconds"]
        assert row["Epochs"] == metrics["epochs_run"] == 2
        study = load_config()["experiments"][row["Model"]]["learning_rate"]
        assert metrics["params"]["learning_rate"] == pytest.approx(study * 10)  # the demo's learning_rate_factor
        assert "/cache/demo_backbone/mobilenet_32px_" in metrics["params"]["weights"]
        assert row["Study test accuracy"] == load_config()["experiments"][row["Model"]]["reference"]["test_accuracy"]
    hidden = dict(zip(table["Model"], table["Hidden Layer"]))
    assert hidden["mn_resultset4"] == 2 and hidden["mn_resultset5"] == 3


@pytest.mark.slow
def test_second_run_trains_nothing(own_sweep, tiny_root):
    """Starts the summary's kernel on a copy of the shared sweep: a rerun that trains nothing still summarises."""
    tmp = own_sweep
    stamps = {name: (tmp / "results" / name / "seed-42" / "metrics.json").stat().st_mtime_ns for name in SWEPT}
    started = time.perf_counter()
    second = run_all("--demo", *folders(tmp, tiny_root), *TINY, *ONLY_SWEPT)
    assert second.returncode == 0, second.stderr
    assert time.perf_counter() - started < 60
    assert second.stdout.count("skipped") >= len(SWEPT)
    assert stamps == {name: (tmp / "results" / name / "seed-42" / "metrics.json").stat().st_mtime_ns for name in SWEPT}


@pytest.mark.slow
def test_changed_parameters_rerun_and_keep_the_old_result(own_sweep, tiny_root):
    """Trains: a run whose parameters changed must train again."""
    tmp = own_sweep
    rerun = run_all("--demo", *folders(tmp, tiny_root), *TINY[:2], "--epochs", "3", "--set", "batch_size=32", "--only", "mn_resultset5")
    assert rerun.returncode == 0, rerun.stderr
    assert "parameters changed (epochs 2 -> 3)" in rerun.stdout
    folder = tmp / "results" / "mn_resultset5" / "seed-42"
    assert json.loads((folder / "metrics.json").read_text())["epochs_run"] == 3
    assert json.loads((folder / "metrics.previous.json").read_text())["epochs_run"] == 2


@pytest.mark.slow
def test_a_failing_configuration_is_reported_and_the_others_complete(tmp_path, tiny_root):
    # A weights file that exists passes every check before the sweep, and fails when MobileNet loads it.
    """Trains: a sweep in which one notebook fails while loading its weights and another finishes."""
    wrong = tmp_path / "wrong.weights.h5"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(wrong)
    config = load_config()
    config["demo"].pop("backbone")  # so that the experiment's own weights count
    config["experiments"] = {
        "mn_resultset1": {**config["experiments"]["mn_resultset1"], "weights": None},
        "mn_resultset2": {**config["experiments"]["mn_resultset2"], "weights": str(wrong)},
    }
    config_file = tmp_path / "experiments.json"
    config_file.write_text(json.dumps(config))
    result = run_all("--demo", "--config", str(config_file), *folders(tmp_path, tiny_root), *TINY)
    assert result.returncode == 1
    notebook = tmp_path / "results" / "mn_resultset2" / "seed-42" / "mn_resultset2.ipynb"
    assert "1 failed" in result.stderr and str(notebook) in result.stderr and "WeightsError" in result.stderr
    assert (tmp_path / "results" / "mn_resultset1" / "seed-42" / "metrics.json").is_file()
    table = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert table.set_index("Model").loc["mn_resultset2", "Status"] == "failed"


@pytest.mark.slow
def test_killed_mid_training_resumes_and_ends_as_an_uninterrupted_sweep(demo_sweep, tmp_path, tiny_root):
    # (That finished experiments are skipped on a rerun is test_second_run_trains_nothing.)
    """Trains: a sweep killed mid-training, resumed, and compared with the shared uninterrupted one."""
    args = [sys.executable, "run_all.py", "--demo", *folders(tmp_path, tiny_root), *TINY, "--only", "mn_resultset2",
            "--config", str(tiny_backbone_config())]
    process = subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "results" / "mn_resultset2" / "seed-42"
    first_epoch_saved = run / "backup" / "keras" / "training_metadata.json"
    deadline = time.monotonic() + 300
    while not first_epoch_saved.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert first_epoch_saved.exists(), "the experiment never finished its first epoch"
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its notebook kernel, without warning
    process.wait()
    assert not (run / "metrics.json").exists()

    again = run_all(*args[2:])
    assert again.returncode == 0, again.stderr
    assert "mn_resultset2/seed-42: interrupted earlier; resuming from its backup" in again.stdout
    assert not (run / "backup").exists()

    # Same seed, same numbers: the interrupted-and-resumed run equals the uninterrupted one.
    resumed = json.loads((run / "metrics.json").read_text())
    uninterrupted = json.loads((demo_sweep[0] / "results" / "mn_resultset2" / "seed-42" / "metrics.json").read_text())
    assert comparable(resumed) == comparable(uninterrupted)
    columns = ["Model", "Test accuracy", "Macro F1", "COVID sensitivity", "Epochs"]
    resumed_row = pd.read_csv(tmp_path / "results" / "summary.csv")[columns].iloc[[1]]
    uninterrupted_row = pd.read_csv(demo_sweep[0] / "results" / "summary.csv")[columns].iloc[[1]]
    pd.testing.assert_frame_equal(resumed_row, uninterrupted_row, check_dtype=False)


def test_bad_parameters_stop_the_sweep_before_it_starts(tmp_path, tiny_root, monkeypatch):
    from covid_mobilenet.model import demo_backbone

    def pretraining(*args, **kwargs):
        raise AssertionError("the demo backbone was pretrained before the checks that stop the sweep")

    monkeypatch.setattr(demo_backbone, "ensure_backbone", pretraining)
    for bad, fragment in (
        (["--set", "learning_rate=abc"], "Parameter learning_rate"),
        (["--set", "lerning_rate=1"], "did you mean 'learning_rate'"),
        (["--set", "val_fraction=0.01"], "val_fraction=0.01"),  # a split that cannot be made
    ):
        result = run_all_here("--demo", *folders(tmp_path, tiny_root), *bad)
        assert result.returncode == 2 and fragment in result.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_summary_on_partial_results(tmp_path):
    results = tmp_path / "results"
    write_finished_run(results, "mn_resultset1")
    (results / "mn_resultset2" / "seed-42").mkdir(parents=True)
    (results / "mn_resultset2" / "seed-42" / "metrics.json").write_text('{"experiment": "mn_resul')  # cut off mid-write
    (results / "mn_resultset3" / "seed-42").mkdir(parents=True)
    (results / "mn_resultset3" / "seed-42" / "mn_resultset3.ipynb").write_text("{}")  # ran, no metrics
    config = load_config()

    paths = summary.write_summary(results, tmp_path / "Graph", config=config, demo=True, update_readme=False)
    table = pd.read_csv(paths["csv"]).set_index("Model")
    assert table["Status"].to_dict() == {
        "mn_resultset1": "done", "mn_resultset2": "unreadable", "mn_resultset3": "failed",
        "mn_resultset4": "missing", "mn_resultset5": "missing", "mn_resultset6": "missing", "mn_resultset7": "missing",
    }
    assert pd.isna(table.loc["mn_resultset4", "Test accuracy"])
    assert (tmp_path / "Graph" / "The_result_of_MobileNet_fine_tuning.png").is_file()

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- results:start -->\nold\n<!-- results:end -->\nafter\n")
    summary.write_summary(results, tmp_path / "Graph", config=config, demo=False, update_readme=True, readme=readme)
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- results:end -->\nafter\n")
    assert "No run on the real data has been recorded" in text, "demo metrics never count as real results"
    with pytest.raises(ValueError, match="never go into the README"):
        summary.write_summary(results, tmp_path / "Graph", config=config, demo=True, update_readme=True, readme=readme)


def test_real_results_fill_the_readme(tmp_path):
    results = tmp_path / "results"
    run = write_finished_run(results, "mn_resultset1", demo=False)  # as a run on the real data records it
    metrics = json.loads((run / "metrics.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n<!-- regions:start -->\n<!-- regions:end -->\n")
    summary.write_summary(results, tmp_path / "Graph", config=load_config(), demo=False, update_readme=True, readme=readme)
    text = readme.read_text()
    assert "No run of the training-time protocol on the real data" in text.split("<!-- regions:start -->")[1]
    assert "What the models look at" in text and "No lungs" in text  # the shortcut checks of the run
    assert "1 of 7 configurations" in text
    assert f"{100 * metrics['test']['accuracy']:.2f}%" in text
    # the data it ran on is named: folder, images per class, split hash, and that it is not the full release
    assert metrics["dataset"]["root"] in text and metrics["dataset"]["split_sha256"][:12] in text
    assert "not the full Kaggle release" in text and "COVID " in text
    assert "Graph/The_result_of_MobileNet_fine_tuning.png" in text


@pytest.mark.slow
def test_fast_sweep_runs_the_backbone_once_for_all_configurations(tiny_root, tmp_path):
    """Trains: two notebooks at once, one computing the features and one waiting for them."""
    readme_before = README.read_bytes()
    chosen = ["mn_resultset1", "mn_resultset4"]
    two_gpus = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}  # none here: TensorFlow falls back to the CPU
    done = run_all("--demo", "--fast", "--jobs", "2", "--only", ",".join(chosen), *folders(tmp_path, tiny_root), *TINY,
                   "--set", f"feature_dir={tmp_path / 'features'}", env=two_gpus)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "frozen-backbone (fast) sweep" in done.stdout
    metrics = {name: json.loads((tmp_path / "results" / name / "seed-42" / "metrics.json").read_text()) for name in chosen}
    # two notebooks start at once: one computes the features, the other waits for them and reads
    assert sorted(m["features"]["computed_here"] for m in metrics.values()) == [False, True]
    entries = {entry.name for entry in (tmp_path / "features").iterdir() if entry.is_dir()}
    split_entries = {name for name in entries if "-shown-" not in name}
    assert {m["features"]["cache"] for m in metrics.values()} == split_entries and len(split_entries) == 1
    # and the shortcut checks' region images, once for both configurations: lungs removed, blurred, alone
    assert sorted(name.split("-shown-")[1].rsplit("-", 1)[0] for name in entries - split_entries) == [
        "lungs", "lungs_blurred", "no_lungs"] and all(name.startswith(next(iter(split_entries))) for name in entries)
    assert all(m["params"]["fast"] and not m["params"]["train_base"] for m in metrics.values())
    assert all(m["model"]["name"].endswith("_head") for m in metrics.values())
    # the saved model takes pixels: the trained head joined to the frozen backbone it was trained on, so on the test
    # images predict answers as the head did on the cached (float16) features, with the run's calibration
    from covid_mobilenet.product import predict

    for name in chosen:
        run = tmp_path / "results" / name / "seed-42"
        head = pd.read_csv(run / "predictions.csv").query("split == 'test'").reset_index(drop=True)
        images = [str(tiny_root / path) for path in head["path"]]
        assert predict.main([*images, "--run", str(run), "--csv", str(tmp_path / f"{name}.csv")]) == 0
        ours = pd.read_csv(tmp_path / f"{name}.csv")
        assert (ours["predicted"] == head["predicted"]).mean() >= 0.95
        calibrated = ours.filter(regex="^p_").to_numpy() - head.filter(regex="^calibrated_p_").to_numpy()
        assert np.abs(calibrated).max() < 0.02, "float16 features: the calibrated probabilities within rounding"
    # --jobs 2 with two GPUs: each of the two parallel workers hands its own GPU to its notebooks
    assert {m["environment"]["cuda_visible_devices"] for m in metrics.values()} == {"0", "1"}
    text = (tmp_path / "results" / "summary.md").read_text()
    assert text.startswith("# Demo (synthetic data), frozen backbone") and "Study test accuracy" not in text
    assert README.read_bytes() == readme_before


def test_fast_results_have_their_own_folders_and_cannot_be_set_by_hand():
    from covid_mobilenet.sweep.plan import make_mode

    config = load_config()
    assert (make_mode(config, demo=False, fast=True).results_dir, make_mode(config, demo=False, fast=True).graph_dir) == ("results/fast", "Graph/fast")
    assert make_mode(config, demo=True, fast=True).results_dir == "results/demo/fast"
    assert make_mode(config, demo=False).results_dir == "results"
    refused = run_all_here("--set", "fast=True")
    assert refused.returncode == 2 and "--fast" in refused.stderr


def test_fast_readme_section_has_its_own_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text())
    section = summary_text.readme_section(tables.summary_table({}, load_config()), {}, [], "g.png", fast=True)
    assert replace_readme_section(readme, section + "\nchanged", (summary.FAST_RESULTS_START, summary.FAST_RESULTS_END))
    text = readme.read_text()
    assert "changed" in text.split(summary.FAST_RESULTS_START)[1].split(summary.FAST_RESULTS_END)[0]
    assert text.split(summary.RESULTS_START)[1].split(summary.RESULTS_END)[0] == README.read_text().split(summary.RESULTS_START)[1].split(summary.RESULTS_END)[0]


@pytest.mark.slow
def test_seeds_share_the_split_and_the_summary_reports_their_uncertainty(own_sweep, tiny_root):
    """Trains seed 43 of two configurations (seed 42 is the shared sweep's), then one lost run again."""
    tmp_path = own_sweep
    chosen = ["mn_resultset1", "mn_resultset2"]
    args = ["--demo", *folders(tmp_path, tiny_root), *TINY, "--only", ",".join(chosen), "--seeds", "2"]
    first = run_all(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 runs (2 configurations x 2 seeds)" in first.stdout
    assert re.search(r"mn_resultset1/seed-42\s+skipped", first.stdout) and re.search(r"mn_resultset2/seed-43\s+ran", first.stdout)
    results = tmp_path / "results"
    metrics = {(name, seed): json.loads((results / name / f"seed-{seed}" / "metrics.json").read_text())
               for name in chosen for seed in (42, 43)}
    assert {m["dataset"]["split_sha256"] for m in metrics.values()} == {metrics["mn_resultset1", 42]["dataset"]["split_sha256"]}
    assert {m["params"]["split_seed"] for m in metrics.values()} == {42}
    assert {(name, m["params"]["seed"]) for (name, _), m in metrics.items()} == set(metrics)
    for (name, seed), m in metrics.items():
        predictions = pd.read_csv(results / name / f"seed-{seed}" / m["predictions_file"])
        test = predictions[predictions["split"] == "test"]
        assert len(test) == sum(m["dataset"]["counts"]["test"].values())
        assert (test["true"] == test["predicted"]).mean() == pytest.approx(m["test"]["accuracy"])
        assert m["test"]["intervals"]["accuracy"]["low"] <= m["test"]["accuracy"] <= m["test"]["intervals"]["accuracy"]["high"]
        assert (results / name / f"seed-{seed}" / "tensorboard" / "hparams").is_dir()
        assert (tmp_path / "Graph" / f"{name[-1]}-seed-{seed}.png").is_file()

    table = pd.read_csv(results / "summary.csv").set_index("Model")
    row = table.loc["mn_resultset2"]
    accuracies = [metrics["mn_resultset2", seed]["test"]["accuracy"] for seed in (42, 43)]
    assert row["Seeds"] == 2 and row["Test accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert "t-interval over 2 seeds" in row["Interval"] and row["Accuracy CI low"] <= row["Test accuracy"] <= row["Accuracy CI high"]
    assert pd.notna(row["Difference"]) and pd.notna(row["McNemar p"]) and pd.notna(row["Holm p"])
    runs = pd.read_csv(results / "runs.csv").dropna(subset=["Test accuracy"])
    assert sorted(zip(runs["Model"], runs["Seed"])) == sorted([*metrics, ("mn_resultset4", 42), ("mn_resultset5", 42)])
    text = (results / "summary.md").read_text()
    assert "vs mn_resultset1 (points)" in text and "How to read it" in text
    assert "The study's claims" in text and "A larger dense layer (16 units) is better than 8." in text

    # a run whose metrics.json was cut short (the machine died mid-write, were writes not atomic) is reported, and is
    # the only one that runs again, to the same numbers (a seed other than the default is reproducible too)
    lost = results / "mn_resultset2" / "seed-43" / "metrics.json"
    lost.write_text(lost.read_text()[:200])
    stamps = {key: (results / key[0] / f"seed-{key[1]}" / "metrics.json").stat().st_mtime_ns
              for key in metrics if key != ("mn_resultset2", 43)}
    again = run_all(*args)
    assert again.returncode == 0, again.stderr
    assert re.search(r"mn_resultset2/seed-43: .*is unreadable.*running it again", again.stdout), again.stdout
    assert again.stdout.count("skipped") >= 3
    assert stamps == {key: (results / key[0] / f"seed-{key[1]}" / "metrics.json").stat().st_mtime_ns for key in stamps}
    assert json.loads(lost.read_text())["test"] == metrics["mn_resultset2", 43]["test"]


def test_seed_options_are_checked_before_anything_runs(tmp_path, tiny_root):
    for extra, fragment in ((["--seeds", "0"], "--seeds 0"), (["--seed-values", "1,1"], "distinct"),
                            (["--set", "seed=3"], "--seeds or --seed-values"), (["--seeds", "2", "--seed-values", "1"], "not both")):
        result = run_all_here("--demo", *folders(tmp_path, tiny_root), *extra)
        assert result.returncode == 2 and fragment in result.stderr, (extra, result.stderr)
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_regions_protocol_trains_the_baseline_on_each_region_and_fills_the_demo_summary(own_sweep, tiny_root):
    """Trains the two region runs (the full-image one is the shared sweep's)."""
    tmp = own_sweep
    readme_before = README.read_bytes()
    done = run_all("--demo", "--regions", *folders(tmp, tiny_root), *TINY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"mn_resultset1/seed-42\s+skipped", done.stdout), "the sweep's own run is the full-image one"
    results = tmp / "results"
    for region in ("lungs", "no_lungs"):
        metrics = json.loads((results / f"mn_resultset1-{region}" / "seed-42" / "metrics.json").read_text())
        assert metrics["params"]["input_region"] == region and metrics["params"]["hidden_layers"] == 1
        assert set(metrics["shortcuts"]["regions"]) == {"full", "lungs", "no_lungs", "lungs_blurred"}
    matrix = pd.read_csv(results / "regions.csv").set_index("trained on")
    assert list(matrix.index) == ["full image", "lungs only", "no lungs"] and list(matrix.columns) == list(matrix.index)
    full_run = json.loads((results / "mn_resultset1" / "seed-42" / "metrics.json").read_text())
    assert matrix.loc["full image", "no lungs"] == pytest.approx(full_run["shortcuts"]["regions"]["no_lungs"]["accuracy"])
    assert (tmp / "Graph" / "Trained_and_tested_on_each_region.png").stat().st_size > 1000
    text = (results / "summary.md").read_text()
    assert "### Trained on each region" in text and "| **no lungs** |" in text
    assert pd.read_csv(results / "summary.csv")["Model"].tolist() == NAMES, "region runs are not configurations"
    assert README.read_bytes() == readme_before, "demo runs never fill the README"
    refused = run_all_here("--set", "input_region=lungs")
    assert refused.returncode == 2 and "--regions" in refused.stderr


@pytest.mark.slow
def test_export_after_a_sweep_ships_the_best_run(own_sweep, tiny_root):
    """Starts the summary's kernel and the export on a copy of the shared sweep."""
    tmp = own_sweep
    done = run_all("--demo", *folders(tmp, tiny_root), *TINY, *ONLY_SWEPT, "--export")
    assert done.returncode == 0, done.stdout + done.stderr
    best = max(SWEPT, key=lambda name: (json.loads((tmp / "results" / name / "seed-42" / "metrics.json").read_text())
                                        ["val"]["accuracy"], -SWEPT.index(name)))  # chosen on validation, never test
    folder = tmp / "results" / best / "seed-42" / "export"
    assert f"best run {tmp / 'results' / best / 'seed-42'}" in done.stdout and "| LiteRT int8 |" in done.stdout
    for name in ("model_float32.tflite", "model_float16.tflite", "model_int8.tflite", "export.json", "MODEL_CARD.md"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "export.json").read_text())["demo"] is True


def test_a_dry_run_says_what_would_stop_the_runs_and_exits_non_zero(tmp_path, tiny_root, monkeypatch):
    """No data, no weights: named, status 2; the demo's missing set and backbone are what it would make, status 0."""
    from covid_mobilenet.model import weights

    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setattr(weights, "keras_cache_dirs", lambda: [tmp_path / "keras"])
    monkeypatch.setattr(weights.socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    missing = run_all_here("--dry-run", "--only", "mn_resultset1", "--data-dir", str(tmp_path / "nowhere"),
                           "--results-dir", str(tmp_path / "results"))
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "1 run would run" in missing.stdout and str(tmp_path / "nowhere") in missing.stderr
    assert "mobilenet_1_0_224_tf_no_top.h5" in missing.stderr and "offline" in missing.stderr
    bad_weights = run_all_here("--dry-run", "--only", "mn_resultset1", "--data-dir", str(tiny_root), "--demo",
                               "--set", f"weights={tmp_path / 'no.h5'}", *folders(tmp_path, tiny_root)[:4])
    assert bad_weights.returncode == 2 and f"names the file {tmp_path / 'no.h5'}, which does not exist" in bad_weights.stderr
    demo = run_all_here("--demo", "--dry-run", "--only", "mn_resultset1", "--results-dir", str(tmp_path / "demo"),
                        "--graph-dir", str(tmp_path / "Graph"), "--data-dir", str(tmp_path / "demo-data"))
    assert demo.returncode == 0, demo.stderr
    assert f"the demo set would be generated in {tmp_path / 'demo-data'}" in demo.stdout
    assert not (tmp_path / "demo-data").exists() and not (tmp_path / "demo").exists(), "a dry run writes nothing"
