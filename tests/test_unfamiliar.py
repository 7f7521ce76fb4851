"""The unfamiliar-image guard: its scores against scikit-learn's, its threshold on validation, saved and loaded
with the model; and in use: predict and the page answer ``unfamiliar`` for real films, photos, a CT slice, text
and a blank image that a model trained on generated films has never seen, and never leak a DICOM's patient."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from covid_mobilenet.analysis import unfamiliar
from covid_mobilenet.bench.unfamiliar import non_radiographs

from .test_dicom import KERMANY, PLANTED_ID, PLANTED_NAME, film_file, rg1


def clusters(rng, n: int, shift: float = 0.0, dimensions: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of correlated Gaussian features (ReLU-like, non-negative), moved by ``shift``."""
    mixing = np.random.default_rng(7).normal(size=(dimensions, dimensions)) / np.sqrt(dimensions)
    labels = np.arange(n) % 3
    centres = np.random.default_rng(8).normal(scale=3, size=(3, dimensions))
    return np.abs(centres[labels] + rng.normal(size=(n, dimensions)) @ mixing + shift), labels


@pytest.mark.parametrize("method", unfamiliar.METHODS)
def test_the_threshold_flags_five_percent_of_familiar_images_and_a_shift_is_told_apart(method):
    rng = np.random.default_rng(0)
    train, labels = clusters(rng, 600)
    guard = unfamiliar.fit(train, labels, clusters(rng, 400)[0], method)
    familiar, shifted = guard.scores(clusters(rng, 2000)[0]), guard.scores(clusters(rng, 300, shift=2.5)[0])
    assert 0.02 < (familiar > guard.threshold).mean() < 0.09, "about 5% of images like the training ones"
    assert unfamiliar.separation(familiar, shifted) > 0.95
    assert (shifted > guard.threshold).mean() > 0.8


def test_the_mahalanobis_score_is_scikit_learns_with_one_shared_shrunk_covariance():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    train, labels = clusters(rng, 300)
    guard = unfamiliar.fit(train, labels, train[:50], "mahalanobis")
    means = np.stack([train[labels == c].mean(axis=0) for c in range(3)])
    shared = LedoitWolf(assume_centered=True).fit(train - means[labels])
    images = clusters(rng, 20, shift=1.0)[0]
    expected = np.sqrt(np.min([shared.mahalanobis(images - mean) for mean in means], axis=0))
    assert np.allclose(guard.scores(images), expected, rtol=1e-4)
    assert guard.arrays["precision"].shape == (40, 40), "its size is the features', whatever the images"


def test_the_knn_score_is_the_distance_to_the_kth_nearest_normalised_training_feature():
    rng = np.random.default_rng(2)
    train, labels = clusters(rng, 100)
    guard = unfamiliar.fit(train, labels, train[:20], "knn")
    image = clusters(rng, 1)[0]
    normalised = train / np.linalg.norm(train, axis=1, keepdims=True)
    distances = np.sort(np.linalg.norm(normalised - image / np.linalg.norm(image), axis=1))
    assert guard.scores(image)[0] == pytest.approx(distances[unfamiliar.KNN_K - 1], rel=1e-3)  # the bank is float16


def test_a_saved_guard_loads_to_the_same_scores_and_bad_input_is_named(tmp_path):
    rng = np.random.default_rng(3)
    train, labels = clusters(rng, 200)
    for method in unfamiliar.METHODS:
        guard = unfamiliar.fit(train, labels, train[:30], method)
        loaded = unfamiliar.Guard.load(guard.save(tmp_path / f"{method}.npz"))
        assert loaded.method == method and loaded.threshold == guard.threshold
        assert np.array_equal(loaded.scores(train[:5]), guard.scores(train[:5]))
    with pytest.raises(ValueError, match="40 values per image"):
        guard.scores(train[:, :10])
    with pytest.raises(ValueError, match="choose one of mahalanobis, knn"):
        unfamiliar.fit(train, labels, train, "odin")


def test_the_guard_pages_table_is_the_one_benchmark_json_holds():
    import json

    from covid_mobilenet.bench.unfamiliar import GUARD_PAGE, PAGE_MARKERS, page_block
    from covid_mobilenet.common.paths import BENCH_FILE

    text = GUARD_PAGE.read_text()
    shown = text[text.index(PAGE_MARKERS[0]) + len(PAGE_MARKERS[0]):text.index(PAGE_MARKERS[1])].strip()
    assert shown == page_block(json.loads(BENCH_FILE.read_text())["unfamiliar"]), \
        "rerun `python -m covid_mobilenet.benchmark --unfamiliar`: it writes both"


def test_the_record_counts_test_images_flagged_with_an_interval_and_a_shifted_sets_auroc():
    rng = np.random.default_rng(4)
    train, labels = clusters(rng, 300)
    guard = unfamiliar.fit(train, labels, clusters(rng, 100)[0])
    test, moved = guard.scores(clusters(rng, 200)[0]), guard.scores(clusters(rng, 50, shift=3)[0])
    record = unfamiliar.summary(guard, test, {"name": "held out", "scores": moved, "familiar_scores": test}, seconds=0.5)
    flagged = record["test_flagged"]
    assert flagged["images"] == int((test > guard.threshold).sum()) and flagged["of"] == 200
    assert flagged["interval"]["low"] <= flagged["share"] <= flagged["interval"]["high"]
    assert record["shifted"]["auroc"] > 0.95 and record["shifted"]["images"] == 50 and record["fit_seconds"] == 0.5


@pytest.mark.slow
def test_a_trained_run_records_and_saves_its_guard_which_flags_what_it_never_saw(trained_run, tmp_path):
    import pandas as pd

    from covid_mobilenet.product import predict

    run, metrics = trained_run
    record = metrics["unfamiliar"]
    assert record["method"] == "mahalanobis" and record["dimensions"] == 1024
    assert (run / "unfamiliar.npz").is_file() and (run / "unfamiliar.npz").stat().st_size < 6e6
    trained = predict.load_trained(run)
    assert trained.guard.threshold == pytest.approx(record["threshold"])
    # the run's own test images, through predict: flagged about as often as the record says, near 5%
    split = pd.read_csv(run.parent.parent / f"split-{metrics['dataset']['split_sha256'][:12]}.csv")
    test = split[split["split"] == "test"]
    root = Path(metrics["dataset"]["root"])
    own = predict.run_table(trained, predict.decode([root / p for p in test["path"]], trained.image_size))
    assert (own["unfamiliar"] == "yes").sum() == record["test_flagged"]["images"]
    # Validation and test images are exchangeable, so the test images above the threshold (validation's order
    # statistic k of n) follow a beta-binomial law; on this tiny set it is wide, on the demo's 119 it is about 5%.
    from scipy.stats import betabinom

    n_val = sum(metrics["dataset"]["counts"]["val"].values())
    k = int(np.ceil(0.95 * (n_val - 1))) + 1
    assert record["test_flagged"]["images"] <= betabinom(len(test), n_val - k + 1, k).ppf(0.999), "beyond the 5%"
    real = predict.run_table(trained, predict.decode(KERMANY + [rg1("UNCR")], trained.image_size))
    others = predict.run_table(trained, predict.decode(non_radiographs(tmp_path / "others"), trained.image_size))
    assert (real["unfamiliar"] == "yes").mean() >= 0.9 and (others["unfamiliar"] == "yes").all()
    assert (real.loc[real["unfamiliar"] == "yes", "answer"] == predict.UNFAMILIAR).all()
    assert unfamiliar.separation(own["unfamiliarity"], real["unfamiliarity"]) > 0.95


@pytest.mark.slow
def test_predict_reads_dicom_alike_in_both_encodings_and_leaks_no_patient_data(trained_run, tmp_path, capsys):
    from covid_mobilenet.product import page, predict

    run, _ = trained_run
    folder = tmp_path / "inbox"
    folder.mkdir()
    shutil.copy(rg1("UNCR"), folder / "uncompressed.dcm")
    shutil.copy(rg1("J2KR"), folder / "jpeg2000.dcm")
    film_file(folder, "planted.dcm", np.arange(256 * 256).reshape(256, 256) % 4096, ViewPosition="LL")
    (folder / "readme.txt").write_text("a text file")
    out = tmp_path / "out"
    status = predict.main([str(folder), "--run", str(run), "--csv", str(out / "rows.csv"), "--rendered",
                           str(out / "rendered"), "--gradcam", str(out / "gradcam")])
    said = capsys.readouterr()
    assert status == 1, "a file was skipped"
    assert f"skipped {folder / 'readme.txt'}: {predict.NOT_AN_IMAGE}" in said.err
    assert "planted.dcm is a lateral view (ViewPosition LL)" in said.err
    import pandas as pd

    rows = pd.read_csv(out / "rows.csv").set_index(pd.read_csv(out / "rows.csv")["path"].map(lambda p: Path(p).name))
    probabilities = [c for c in rows.columns if c.startswith("p_")]
    assert np.abs(rows.loc["uncompressed.dcm", probabilities].to_numpy(float)
                  - rows.loc["jpeg2000.dcm", probabilities].to_numpy(float)).max() <= 0.01
    assert rows.loc["uncompressed.dcm", "view"] == "PA" and rows.loc["planted.dcm", "view"] == "LL"
    assert {"unfamiliar", "unfamiliarity", "answer", "warning"} <= set(rows.columns)
    assert (out / "rendered" / "uncompressed.png").read_bytes() == (out / "rendered" / "jpeg2000.png").read_bytes()
    shown = page.answer(predict.load_trained(run), sorted(folder.iterdir()))
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    for secret in (PLANTED_NAME, PLANTED_NAME.split("^")[0], PLANTED_ID, "CompressedSamples", "9RG1"):  # RG1's own too
        assert secret not in said.out + said.err and secret not in shown.markdown
        assert secret.encode() not in written
        assert secret not in shown.table.to_csv()
    assert "readme.txt: " + predict.NOT_AN_IMAGE in shown.markdown
    assert "Warning: this file is a lateral view" in shown.markdown
