"""Data sets that lack what the demo always has: no duplicate at all, exact copies but no near-copy, no label
conflict, no metadata spreadsheet, one source per class, a class without masks. Each runs the sweep's preflight to
the end (its duplicates table written, with its columns even when it has no row) and the audit of a finished run."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from covid_mobilenet.common.config import load_config
from covid_mobilenet.data.demo import DEMO_RECORD, generate_demo_dataset
from covid_mobilenet.sweep.plan import make_mode, plan
from covid_mobilenet.sweep.preflight import preflight

TABLE_COLUMNS = ["group", "path", "class", "kind", "hash_distance", "pixel_similarity", "conflict", "split", "split_sha256"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return generate_demo_dataset(tmp_path_factory.mktemp("empty") / "COVID-19_Radiography_Dataset", images=160, seed=4)


def _remove_copies(root: Path, keep=lambda copy: False) -> None:
    """Delete the demo's planted copies (demo.json) but those ``keep`` keeps, with their masks."""
    for copy in json.loads((root / DEMO_RECORD).read_text())["duplicates"]:
        if not keep(copy):
            (root / copy["path"]).unlink()
            mask = root / copy["path"].replace("/images/", "/masks/")
            mask.unlink(missing_ok=True)


def no_duplicates(root: Path) -> None:
    _remove_copies(root)


def exact_copies_only(root: Path) -> None:
    _remove_copies(root)
    film = sorted((root / "Normal" / "images").glob("*.png"))[0]
    for n in range(2):
        shutil.copyfile(film, film.with_name(f"Normal-exact-{n}.png"))


def no_label_conflict(root: Path) -> None:
    _remove_copies(root, keep=lambda copy: not copy["across_classes"])


def no_metadata(root: Path) -> None:
    _remove_copies(root)
    for sheet in root.glob("*.metadata.xlsx"):
        sheet.unlink()


def one_source_per_class(root: Path) -> None:
    _remove_copies(root)
    for sheet_file in root.glob("*.metadata.xlsx"):
        sheet = pd.read_excel(sheet_file, dtype=str, engine="calamine")
        sheet.assign(URL=f"only-{sheet_file.name.split('.')[0]}").to_excel(sheet_file, index=False)


def a_class_without_masks(root: Path) -> None:
    _remove_copies(root)
    shutil.rmtree(root / "Viral Pneumonia" / "masks")


CASES = [no_duplicates, exact_copies_only, no_label_conflict, no_metadata, one_source_per_class, a_class_without_masks]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_the_preflight_and_the_audit_run_to_the_end(case, generated, tmp_path):
    """The first used to stop in the preflight: ``ValueError: cannot reshape array of size 0`` in grouping."""
    from covid_mobilenet.run.audit import audit

    root = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(generated, root)
    case(root)
    config = load_config()
    mode = make_mode(config, demo=True, results_dir=tmp_path / "results", graph_dir=tmp_path / "Graph", data_dir=root)
    jobs = plan(config, ["mn_resultset1"], mode, {"feature_dir": str(tmp_path / "cache"), "image_size": 32,
                                                   "weights": None, "batch_size": 32})
    said = []
    assert preflight(jobs, mode, say=said.append) == jobs
    tables = list((tmp_path / "results").glob("duplicates-*.csv"))
    assert len(tables) == 1, said
    table = pd.read_csv(tables[0])
    assert list(table.columns) == TABLE_COLUMNS
    if case is exact_copies_only:
        assert list(table["kind"]) == ["first", "exact", "exact"] and not table["conflict"].any()
    elif case is no_label_conflict:
        assert len(table) and not table["conflict"].any() and "near" in set(table["kind"])
    else:
        assert table.empty

    run = tmp_path / "results" / "mn_resultset1" / "seed-42"  # a finished run's record, as the audit reads it
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"params": jobs[0].params, "dataset": {"root": str(root), "demo": True}}))
    record = json.loads(audit(run).read_text())
    duplicates = record["duplicates"]
    assert duplicates["file"] == tables[0].name and duplicates["groups"] == table["group"].nunique()
    assert duplicates["groups_across_classes"] == 0 and duplicates["images_in_conflicts"] == 0
    from covid_mobilenet.analysis.audit_summary import probe_section

    assert record["features"]["positions"] == 1 and "a single position" in probe_section(record)[-1], "32 px: one position"
    for pooling, probe in record["source_probe"].items():  # mean and max over positions
        assert set(probe) == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"}, pooling
        if case in (no_metadata, one_source_per_class):
            assert not any(result["testable"] for result in probe.values()), probe
