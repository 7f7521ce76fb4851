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
    assert external.main(["--run", str(run), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "evaluate: --data-dir" in capsys.readouterr().err


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
