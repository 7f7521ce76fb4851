"""A trained run on another collection (``data/external.py``, ``product/external.py``): the collection read in the
data set's layout or from a CSV, classes renamed, bad input refused before any work, planted copies of the run's
images all found and none invented, and the run's figures written with and without them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.data.demo import generate_demo_dataset
from covid_mobilenet.data.duplicates import near_copy
from covid_mobilenet.data.external import ExternalError, overlap, parse_class_map, read_collection

from .test_dicom import film_file, rg1


def collection(folder: Path, images: int = 40, seed: int = 11) -> Path:
    """Another "hospital": a generated set in the data set's layout, of another seed than any run's."""
    return generate_demo_dataset(folder, images=images, seed=seed)


def test_a_collection_is_read_in_the_layout_with_masks_and_every_other_file_named(tmp_path):
    root = collection(tmp_path / "other")
    (root / "COVID" / "images" / "notes.txt").write_text("not an image")
    old_layout = root / "Pneumothorax"  # a class the run does not know, images directly in its folder
    old_layout.mkdir()
    shutil.copy(next((root / "Normal" / "images").iterdir()), old_layout / "film without a suffix")
    found = read_collection(root)
    images = found.images
    assert set(images["label"]) == {"COVID", "Lung_Opacity", "Normal", "Viral Pneumonia", "Pneumothorax"}
    assert found.left_out == [(str(root / "COVID" / "images" / "notes.txt"), "neither a PNG, a JPEG nor a DICOM file by "
                                                                           "its content")]
    covid = images[images["label"] == "COVID"].iloc[0]
    assert Path(covid["mask"]).parent.name == "masks" and Path(covid["mask"]).stem == Path(covid["path"]).stem
    assert covid["source"].startswith("demo-"), "the sources come from the collection's own spreadsheets"
    assert images.loc[images["label"] == "Pneumothorax", "mask"].isna().all()


def test_a_labels_csv_and_a_class_map_read_another_layout_and_bad_input_is_refused_first(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i, value in enumerate((30, 90, 150)):
        Image.fromarray(np.full((40, 40), value, np.uint8)).save(root / f"{i}.png")
    film_file(root, "3.dcm", np.arange(40 * 40).reshape(40, 40) % 4000)
    (root / "labels.csv").write_text("path,label,source\n0.png,covid,clinic A\n1.png,normal,clinic A\n"
                                     "2.png,normal,\n3.dcm,pneumonia,clinic B\n")
    found = read_collection(root, root / "labels.csv", parse_class_map(["covid=COVID", "normal=Normal"]))
    assert found.images["label"].tolist() == ["COVID", "Normal", "Normal", "pneumonia"]
    assert found.images["given_label"].tolist() == ["covid", "normal", "normal", "pneumonia"]
    assert found.images["source"].tolist() == ["clinic A", "clinic A", "not given", "clinic B"]
    with pytest.raises(ExternalError, match="--class-map 'covid': write FROM=TO"):
        parse_class_map(["covid"])
    with pytest.raises(ExternalError, match=r"--class-map names \['pneumothorax'\]"):
        read_collection(root, root / "labels.csv", {"pneumothorax": "Normal"})
    with pytest.raises(ExternalError, match="no such folder"):
        read_collection(tmp_path / "nowhere")
    (root / "bad.csv").write_text("file,class\n0.png,covid\n")
    with pytest.raises(ExternalError, match=r"bad.csv: no column \['path', 'label'\]"):
        read_collection(root, root / "bad.csv")
    (root / "absent.csv").write_text("path,label\n0.png,covid\nmissing.png,covid\n")
    with pytest.raises(ExternalError, match=r"1 path\(s\) are not files under .* \['missing.png'\]"):
        read_collection(root, root / "absent.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExternalError, match="no PNG, JPEG or DICOM image found"):
        read_collection(tmp_path / "empty")


def test_every_planted_copy_of_a_run_image_is_found_with_its_split_and_none_is_invented(tmp_path):
    ours = collection(tmp_path / "ours", images=80, seed=3)
    paths = sorted(p.relative_to(ours).as_posix() for p in ours.glob("*/images/*.png"))
    split = pd.DataFrame({"path": paths, "split": ["train", "val", "test", "train"] * (len(paths) // 4) +
                          ["train"] * (len(paths) % 4)})
    other = collection(tmp_path / "other", images=40, seed=11)
    rng = np.random.default_rng(0)
    planted = {}
    for i, kind in enumerate(("jpeg", "resize", "brightness", "crop", "noise")):
        original = split.iloc[7 * i]
        copy = other / "Normal" / "images" / f"copy-{kind}.png"
        near_copy(Image.open(ours / original["path"]), kind, rng).save(copy)
        planted[str(copy)] = (original["path"], original["split"])
    dicom_original = split.iloc[40]
    pixels = np.asarray(Image.open(ours / dicom_original["path"]).convert("L"), np.uint16) * 16  # a 12-bit film
    planted[str(film_file(other / "COVID" / "images", "copy.dcm", pixels))] = (dicom_original["path"],
                                                                               dicom_original["split"])
    externals = read_collection(other).images["path"].map(Path).tolist()
    found = overlap(ours, split, externals, tmp_path / "cache")
    assert {row.external: (row.run_image, row.split) for row in found.itertuples()} == planted
    assert (found["similarity"] >= 0.987).all()


@pytest.mark.slow
def test_a_run_on_another_collection_writes_its_figures_with_and_without_the_overlap(trained_run, tmp_path, capsys):
    from covid_mobilenet.product import external

    run, metrics = trained_run
    other = collection(tmp_path / "hospital-2", images=60, seed=21)
    split = pd.read_csv(run.parent.parent / f"split-{metrics['dataset']['split_sha256'][:12]}.csv")
    trained_on = split[split["split"] == "train"].iloc[0]
    shutil.copy(Path(metrics["dataset"]["root"]) / trained_on["path"], other / "COVID" / "images" / "copied.png")
    shutil.copy(rg1("UNCR"), other / "Normal" / "images" / "rg1.dcm")
    (other / "Pneumothorax" / "images").mkdir(parents=True)
    shutil.copy(next((other / "Normal" / "images").glob("*.png")), other / "Pneumothorax" / "images" / "p.png")
    assert external.main(["--run", str(run), "--data-dir", str(other), "--name", "hospital-2",
                          "--class-map", "Pneumothorax=Pneumothorax"]) == 0
    said = capsys.readouterr()
    assert "hospital-2: accuracy" in said.out and "1 image(s) overlap the run's data set" in said.out
    folder = run / "external" / "hospital-2"
    record = json.loads((folder / "metrics.json").read_text())
    assert record["overlap"] == {"pairs": 1, "external_images": 1, "by_split": {"train": 1}}
    assert record["unknown_classes"]["Pneumothorax"]["images"] == 1
    every, clean = record["all"], record["without_overlap"]
    known = record["read"] - 1
    assert every["images"] == known and clean["images"] == known - 1
    assert every["intervals"]["accuracy"]["low"] <= every["accuracy"] <= every["intervals"]["accuracy"]["high"]
    assert set(every["calibration"]) >= {"ece", "brier", "nll"} and "COVID" in every["operating_points"]
    assert 0 <= every["unfamiliar"]["share"] <= 1 and every["by_source"]
    rows = pd.read_csv(folder / "predictions.csv")
    assert {"path", "true", "predicted", "answer", "unfamiliar", "overlaps_run"} <= set(rows.columns)
    assert rows.loc[rows["path"].str.endswith("rg1.dcm"), "view"].tolist() == ["PA"]
    overlaps = pd.read_csv(folder / "overlap.csv")
    assert overlaps["run_image"].tolist() == [trained_on["path"]] and (folder / "reliability.png").is_file()
    # The shortcut checks on the images with a lung mask (the generated ones; not the copy, the DICOM film or the
    # unknown class): each region's accuracy beside the majority rate, each image's answer per region.
    shortcuts = every["shortcuts"]
    assert shortcuts["images_with_mask"] == 60 and set(shortcuts["regions"]) == {"full", "no_lungs", "lungs_blurred",
                                                                                 "lungs"}
    assert all(r["images"] == 60 and 0 <= r["accuracy"] <= 1 for r in shortcuts["regions"].values())
    assert rows["predicted_no_lungs"].notna().sum() == 60
    assert shortcuts["regions"]["full"]["correct"] == (rows.dropna(subset=["predicted_no_lungs"]).eval("true == predicted")).sum()
    assert external.main(["--run", str(run), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "evaluate: --data-dir" in capsys.readouterr().err

    # run_all.py --external: nothing changed, nothing recomputed; a changed image or model makes it stale.
    from covid_mobilenet.analysis.external_summary import external_table
    from covid_mobilenet.analysis.results import read_result
    from covid_mobilenet.common.run_layout import evaluation_is_current
    from covid_mobilenet.data.external import collection_sha256
    from covid_mobilenet.sweep.external import ExternalSet, evaluate_external

    digest = collection_sha256(read_collection(other))
    assert record["collection_sha256"] == digest and evaluation_is_current(run, "hospital-2", digest)
    again = evaluate_external([ExternalSet("hospital-2", other)], [run, tmp_path / "not-a-run"])
    assert [(o.status, o.detail) for o in again] == [("skipped", "1 run(s) already evaluated on this collection")]
    with open(other / "COVID" / "images" / "copied.png", "ab") as changed:
        changed.write(b"\0")
    assert not evaluation_is_current(run, "hospital-2", collection_sha256(read_collection(other)))
    record_file = folder / "metrics.json"
    record_file.write_text(json.dumps({**record, "collection_sha256": collection_sha256(read_collection(other)),
                                       "model_sha256": "0" * 64}))  # as a model trained again would leave it
    assert not evaluation_is_current(run, "hospital-2", collection_sha256(read_collection(other)))
    # The summary reads what evaluate wrote: internal and external side by side.
    row = external_table({"mn_resultset3": [read_result(run)]}, "hospital-2").iloc[0]
    assert row["External accuracy"] == every["accuracy"] and row["Internal accuracy"] == metrics["test"]["accuracy"]
    assert row["No lungs external accuracy"] == shortcuts["regions"]["no_lungs"]["accuracy"]


def test_the_second_demo_hospital_is_another_scanner_without_the_marker_in_the_layout(tmp_path):
    from covid_mobilenet.data.demo_hospital import CLASS_MIX, RECORD, SOURCE, generate_second_hospital

    root = generate_second_hospital(tmp_path / "hospital-2", images=40, seed=5)
    found = read_collection(root)
    assert set(found.images["label"]) == set(CLASS_MIX) and (found.images["source"] == SOURCE).all()
    assert found.images["mask"].notna().all() and not found.left_out
    record = json.loads((root / RECORD).read_text())
    assert record["planted_marker"] is None and record["scanner"]["gamma"] != 1
    again = generate_second_hospital(tmp_path / "again", images=40, seed=5)
    first = sorted(p.relative_to(root) for p in root.glob("*/images/*.png"))
    assert all((root / p).read_bytes() == (again / p).read_bytes() for p in first), "the same seed, the same films"


def evaluated(run: Path, name: str, correct, *, overlapping: int = 0, demo: bool = True) -> dict:
    """``<run>/external/<name>/`` as ``evaluate`` writes it, its figures computed by the product's own ``figures``
    from external predictions where image i is right when ``correct[i]`` (the classes in turn, 10% flagged)."""
    from types import SimpleNamespace

    from covid_mobilenet.analysis.calibration import temperature_scale
    from covid_mobilenet.product.external import figures

    from .conftest import CLASSES

    metrics = json.loads((run / "metrics.json").read_text())
    correct = np.asarray(correct)
    truth = [CLASSES[i % 4] for i in range(len(correct))]
    guess = [t if ok else CLASSES[(CLASSES.index(t) + 1) % 4] for t, ok in zip(truth, correct)]
    raw = np.array([[0.7 if g == c else 0.1 for c in CLASSES] for g in guess])
    rows = pd.DataFrame({"path": [f"/h2/{t}/images/{t}-{i}.png" for i, t in enumerate(truth)], "true": truth,
                         "predicted": guess, "source": "h2", "unfamiliar": ["yes" if i % 10 == 0 else "no"
                                                                            for i in range(len(truth))]})
    calibrated = temperature_scale(raw, metrics["calibration"]["temperature"])
    every = figures(rows, raw, calibrated, CLASSES, SimpleNamespace(calibration=metrics["calibration"]))
    clean = figures(rows[overlapping:], raw[overlapping:], calibrated[overlapping:], CLASSES,
                    SimpleNamespace(calibration=metrics["calibration"])) if overlapping else "no image overlaps"
    record = {"name": name, "run": str(run), "collection": "/h2", "images": len(rows), "read": len(rows),
              "unknown_classes": {}, "overlap": {"pairs": overlapping, "external_images": overlapping, "by_split": {}},
              "all": every, "without_overlap": clean}
    folder = run / "external" / name
    folder.mkdir(parents=True)
    rows.to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(record))
    return record


def test_the_summary_sets_each_run_outside_its_split_beside_inside_and_judges_the_claims_again(tmp_path):
    from statsmodels.stats.proportion import confint_proportions_2indep

    from covid_mobilenet.analysis import summary
    from covid_mobilenet.common.config import load_config

    from .conftest import write_finished_run

    results, config = tmp_path / "results", load_config()
    inside = np.arange(40) % 5 != 0  # 32 of 40 right on the internal test split, for both
    base = write_finished_run(results, "mn_resultset1", correct=inside, demo=False)
    wider = write_finished_run(results, "mn_resultset2", correct=inside, demo=False, dense_units=16)
    evaluated(base, "h2", np.arange(200) % 10 != 0, overlapping=3)  # 180 of 200 right outside
    evaluated(wider, "h2", np.arange(200) % 2 == 0)  # 100 of 200: worse outside, on the same images
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n<!-- external:start -->\nold\n<!-- external:end -->\n")
    paths = summary.write_summary(results, tmp_path / "Graph", config=config, demo=False, update_readme=True, readme=readme)

    table = pd.read_csv(paths["external_h2"]).set_index("Model")
    low, high = confint_proportions_2indep(100, 200, 32, 40, method="newcomb", compare="diff")
    row = table.loc["mn_resultset2"]
    assert (row["Internal accuracy"], row["External accuracy"], row["External images"]) == (0.8, 0.5, 200)
    assert np.isclose(row["Difference"], -0.3) and np.isclose(row["Difference low"], low) and \
        np.isclose(row["Difference high"], high)
    assert table.loc["mn_resultset1", "Overlap images"] == 3
    assert np.isclose(table.loc["mn_resultset1", "External accuracy without overlap"], 178 / 197)  # image 0 was wrong
    assert table.loc["mn_resultset1", "Unfamiliar external"] == 0.1 and table.loc["mn_resultset1", "ECE external"] >= 0
    assert paths["external_h2_graph"].is_file()
    text = readme.read_text()
    section = text.split("<!-- external:start -->")[1]
    assert "old" not in section and "On another collection: `h2`" in section
    assert "| **mn_resultset1** | 42 | 80.00% [" in section and "| -30.0 [" in section
    # Internally the two tie; outside, mn_resultset2 is worse on the same 200 images: the claim that it is better is
    # contradicted there (McNemar on the external predictions, Holm), and the internal verdict stays "not shown".
    claims = section.split("The study's claims, judged by paired comparisons with mn_resultset1 on the same images "
                           "of `h2`:")[1]
    assert "A larger dense layer (16 units) is better than 8.* **Contradicted**: mn_resultset2 minus mn_resultset1: " \
           "-40.0 points" in claims
    assert "On another collection" not in text.split("<!-- external:start -->")[0], "once, in its own section"
    within, outside = paths["markdown"].read_text().split("## Outside the split: other collections")
    assert "A larger dense layer (16 units) is better than 8.* **Not shown (the runs cannot tell)**" in within
    assert "](../Graph/external-h2.png)" in outside, "summary.md links the figure from results/"

    # Demo evaluations never fill the README's section.
    demo_results = tmp_path / "demo"
    evaluated(write_finished_run(demo_results, "mn_resultset1", correct=inside), "h2", np.arange(40) % 2 == 0)
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n<!-- external:start -->\nold\n<!-- external:end -->\n")
    summary.write_summary(demo_results, tmp_path / "Graph", config=config, demo=False, update_readme=True, readme=readme)
    assert "No run has been evaluated on another collection of real films" in readme.read_text()


def test_run_all_reads_external_as_dir_or_dir_equals_name_and_refuses_a_bad_one_before_training(tmp_path, tiny_root):
    from covid_mobilenet.common.config import load_config
    from covid_mobilenet.sweep import plan
    from covid_mobilenet.sweep.external import DEMO_COLLECTION, ExternalSet, demo_collection_dir, parse_external

    from .conftest import folders, run_all_here

    config = load_config()
    real, demo = (plan.make_mode(config, demo=d, data_dir=str(tmp_path / "data" / "set")) for d in (False, True))
    assert parse_external([str(tmp_path / "b"), f"{tmp_path / 'c'}=clinic-c", f"{tmp_path / 'd=e'}=de"], real) == [
        ExternalSet("b", tmp_path / "b"), ExternalSet("clinic-c", tmp_path / "c"), ExternalSet("de", tmp_path / "d=e")]
    assert parse_external([""], demo) == [ExternalSet(DEMO_COLLECTION, demo_collection_dir(demo))]
    assert demo_collection_dir(demo) == tmp_path / "data" / DEMO_COLLECTION
    with pytest.raises(ExternalError, match="--external without a folder is the demo's"):
        parse_external([""], real)
    with pytest.raises(ExternalError, match=r"the name\(s\) \['x'\] are given to more than one"):
        parse_external([f"{tmp_path}/a=x", f"{tmp_path}/b=x"], real)
    with pytest.raises(ExternalError, match="--name 'bad name'"):
        parse_external([f"{tmp_path}/a=bad name"], real)

    done = run_all_here("--demo", *folders(tmp_path, tiny_root), "--external", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "--data-dir" in done.stderr and "nowhere: no such folder" in done.stderr
    assert not (tmp_path / "results").exists(), "refused before anything trained or was written"


@pytest.mark.slow
def test_the_demo_sweep_with_external_evaluates_each_run_once_on_a_generated_hospital(own_sweep, tiny_root):
    from .conftest import ONLY_SWEPT, SWEPT, TINY, folders, run_all

    first = run_all("--demo", *folders(own_sweep, tiny_root), *TINY, *ONLY_SWEPT, "--summary-only", "--external")
    assert first.returncode == 0, first.stdout + first.stderr
    hospital = tiny_root.parent / "hospital-2"
    assert "Generating the demo's second hospital" in first.stdout and (hospital / "hospital.json").is_file()
    assert f"{len(SWEPT)} run(s) evaluated, 0 already were" in first.stdout
    copies = json.loads((hospital / "hospital.json").read_text())["copies"]
    assert len(copies) == 6 and {c["how"] for c in copies} == {"jpeg", "resize", "brightness", "crop", "noise"}
    for name in SWEPT:
        folder = own_sweep / "results" / name / "seed-42" / "external" / "hospital-2"
        record = json.loads((folder / "metrics.json").read_text())
        assert record["images"] == 206 and record["all"]["shortcuts"]["images_with_mask"] == 206
        # every film the hospital copied from the demo set is found, with the image it copies, and nothing else
        found = pd.read_csv(folder / "overlap.csv")
        assert sorted(zip(found["external"], found["run_image"])) == sorted(
            (str(hospital / c["file"]), c["copy_of"]) for c in copies)
        assert record["overlap"]["external_images"] == 6 and record["without_overlap"]["images"] == 200
    table = pd.read_csv(own_sweep / "results" / "external-hospital-2.csv")
    assert table["Model"].tolist() == SWEPT and table["Difference low"].le(table["Difference"]).all()
    summary_text = (own_sweep / "results" / "summary.md").read_text()
    assert "## Outside the split: other collections" in summary_text and "On another collection: `hospital-2`" in summary_text
    # Run again (what run_all.py does after a sweep): nothing changed, nothing evaluated.
    from covid_mobilenet.sweep.external import ExternalSet, evaluate_external

    again = evaluate_external([ExternalSet("hospital-2", hospital)],
                              [own_sweep / "results" / name / "seed-42" for name in SWEPT])
    assert [(o.status, o.detail) for o in again] == [("skipped", f"{len(SWEPT)} run(s) already evaluated on this collection")]
