"""What a long sweep must survive: bad parameters from any source, truncated results, crashes while
writing, unwritable folders, and credentials that must never leak into outputs.

(Bad data files are tried in test_data.py; interruption mid-training, determinism and leaked
credentials in test_run_all.py and test_training.py; bad parameters through papermill in
test_notebook.py.)
"""
import errno
import json
import os
from pathlib import Path

import pytest

from covid_mobilenet.analysis import summary
from covid_mobilenet.common import files
from covid_mobilenet.common.config import load_config
from covid_mobilenet.common.files import StorageError, ensure_writable, write_atomic
from covid_mobilenet.sweep import plan, preflight
from tests.conftest import folders, run_all_here, write_finished_run


# ------------------------------------------------------------- bad parameters in experiments.json


@pytest.mark.parametrize(
    "settings, fragment",
    [({"lerning_rate": 1e-4}, "Unknown parameter 'lerning_rate' (did you mean 'learning_rate'?)"),
     ({"dense_units": "8"}, "Parameter dense_units must be an integer >= 1, got '8' (str)")],
)
def test_a_bad_configuration_file_stops_the_sweep_before_it_starts(tmp_path, tiny_root, settings, fragment):
    config = load_config()
    config["experiments"]["mn_resultset3"].update(settings)
    config_file = tmp_path / "experiments.json"
    config_file.write_text(json.dumps(config))
    result = run_all_here("--demo", "--config", str(config_file), *folders(tmp_path, tiny_root))
    assert result.returncode == 2
    assert "Experiment mn_resultset3" in result.stderr and fragment in result.stderr
    assert not (tmp_path / "results" / "mn_resultset1").exists(), "nothing ran"


def test_an_unreadable_configuration_file_is_named(tmp_path):
    broken = tmp_path / "experiments.json"
    broken.write_text('{"experiments": {')
    result = run_all_here("--config", str(broken))
    assert result.returncode == 2 and str(broken) in result.stderr and "not valid JSON" in result.stderr


# ------------------------------------------------------------- truncated metrics.json


# A metrics.json cut short is reported and its run alone trains again, to the same numbers: the end of
# tests/test_run_all.py::test_seeds_share_the_split_and_the_summary_reports_their_uncertainty, on a run it trained anyway.


# ------------------------------------------------------------- crashes while writing


def test_a_crash_mid_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"finished": true}\n')

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stands for the process dying between writing and renaming

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, '{"finished": false, "half": ')
    assert target.read_text() == '{"finished": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temporary file left behind"


def test_a_full_disk_gives_an_error_and_destroys_nothing(tmp_path, monkeypatch):
    target = tmp_path / "summary.csv"
    target.write_text("old,complete\n")

    def no_space(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new,half")
    assert target.read_text() == "old,complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_crash_during_the_summary_is_repaired_by_running_it_again(tmp_path, monkeypatch):
    results = tmp_path / "results"
    for name in ("mn_resultset1", "mn_resultset2"):
        write_finished_run(results, name)
    config = load_config()
    reference = summary.write_summary(results, tmp_path / "clean", config=config, demo=True, update_readme=False)
    expected_csv = reference["csv"].read_text()

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nprevious section\n<!-- results:end -->\n")
    original = readme.read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed while drawing the graph

    monkeypatch.setattr(summary, "save_figure", crash)
    with pytest.raises(KeyboardInterrupt):
        summary.write_summary(results, tmp_path / "Graph", config=config, demo=False, update_readme=True, readme=readme)
    assert readme.read_text() == original, "the README is untouched until its new section is complete"
    monkeypatch.undo()

    summary.write_summary(results, tmp_path / "Graph", config=config, demo=True, update_readme=False)
    assert (results / "summary.csv").read_text() == expected_csv
    assert (tmp_path / "Graph" / summary.COMPARISON_GRAPH).is_file()


# ------------------------------------------------------------- unwritable results folder


def test_an_unwritable_results_folder_stops_the_sweep_before_it_starts(tmp_path, tiny_root, monkeypatch):
    results = tmp_path / "results"
    (results / "mn_resultset1").mkdir(parents=True)
    (results / "mn_resultset1" / "metrics.json").write_text('{"kept": true}')
    real_mkstemp = files.tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == results:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    mode = plan.make_mode(load_config(), demo=True, results_dir=results, graph_dir=tmp_path / "Graph", data_dir=tiny_root)
    jobs = plan.plan(load_config(), ["mn_resultset1"], mode, {})
    with pytest.raises(preflight.SweepError, match=f"Cannot write to {results} \\(Read-only file system\\)"):
        preflight.preflight(jobs, mode, say=lambda message: None)
    assert (results / "mn_resultset1" / "metrics.json").read_text() == '{"kept": true}'


def test_ensure_writable_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.tempfile, "mkstemp", full)
    with pytest.raises(StorageError, match=f"Cannot write to {tmp_path}.*free some space"):
        ensure_writable(tmp_path)


def test_a_file_written_by_a_library_is_synced_then_renamed_under_its_own_suffix(tmp_path, monkeypatch):
    """Matplotlib and Keras write files themselves: they get a temporary path that keeps the suffix they insist on,
    and the file is fsynced before it replaces the old one."""
    from matplotlib.figure import Figure

    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(a).name, Path(b).name)), real_replace(a, b))[1])
    files.save_figure(Figure(), tmp_path / "graph.png")
    assert events[0] == "fsync" and events[1][0] == "replace" and events[1][2] == "graph.png"
    assert events[1][1].startswith(".graph.png.") and events[1][1].endswith(".tmp.png")
    with files.atomic_path(tmp_path / "backbone.weights.h5") as temporary:
        assert temporary.name.endswith(".tmp.weights.h5") and temporary.parent == tmp_path
        temporary.write_bytes(b"weights")
    assert (tmp_path / "backbone.weights.h5").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.weights.h5", "graph.png"]


def test_a_crash_inside_a_library_writer_leaves_nothing_behind(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"the previous model")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "model.keras") as temporary:
            temporary.write_bytes(b"half a mod")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    assert (tmp_path / "model.keras").read_bytes() == b"the previous model"
