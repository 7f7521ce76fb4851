"""The web app (python -m covid_mobilenet.app): which run it serves, what it says about it, the checks on uploads,
its answers against predict's, and the page itself driven in a real Chromium through Playwright."""
import importlib.util
import json
import os
import re
import shutil
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.analysis.results import RunNotFound
from covid_mobilenet.product import app
from covid_mobilenet.product import page as app_page
from covid_mobilenet.product import predict
from covid_mobilenet.product.model_card import model_card
from tests.conftest import PROJECT, write_finished_run

spec = importlib.util.spec_from_file_location("app_screenshot", PROJECT / "scripts" / "app_screenshot.py")
browser = importlib.util.module_from_spec(spec)
spec.loader.exec_module(browser)
REQUIRE_BROWSER = os.environ.get("COVID_MOBILENET_REQUIRE_BROWSER") == "1"  # .ci/run: fail, never skip


def _answering_model(image_size: int, classes: int):
    """A small random model shaped as the study's (pixels in, scaling inside, a nested backbone with MobileNet's
    pointwise-activation names for Grad-CAM, a softmax head) whose answers differ from image to image."""
    import keras

    layers = keras.layers
    pixels = keras.Input((image_size, image_size, 3))
    x = layers.ReLU(name="conv_pw_1_relu")(layers.Conv2D(8, 3, strides=2, padding="same")(pixels))
    x = layers.ReLU(name="conv_pw_2_relu")(layers.Conv2D(16, 3, strides=2, padding="same")(x))
    backbone = keras.Model(pixels, x, name="small_backbone")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = backbone(layers.Rescaling(1 / 127.5, offset=-1)(inputs))
    x = layers.Dense(classes, activation="softmax", name="predictions")(layers.GlobalAveragePooling2D()(x))
    keras.utils.set_random_seed(3)
    model = keras.Model(inputs, x)
    kernel, bias = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel * 20, bias])  # spread the answers
    return model


@pytest.fixture(scope="module")
def answering_run(trained_run, tmp_path_factory):
    """The shared finished run's files with a model whose answers differ from image to image (the notebook's tiny
    run may answer one class for every image), so a page that mixed up its images or rows would fail. Its
    calibration's T is set to 1.5; predict and the page read the same files. (run folder, metrics)"""
    run, metrics = trained_run
    folder = tmp_path_factory.mktemp("answering") / "results" / "mn_resultset3" / "seed-42"
    shutil.copytree(run, folder)
    _answering_model(metrics["params"]["image_size"], len(metrics["dataset"]["class_names"])).save(folder / "model.keras")
    with pytest.raises(predict.PredictError, match="the guard belongs to another model"):
        predict.load_trained(folder)  # the run's guard scores its own model's features, not this one's
    (folder / "unfamiliar.npz").unlink()  # a run made before runs had a guard: the page says so
    metrics = {**metrics, "calibration": {**metrics["calibration"], "temperature": 1.5}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder, metrics


def _with_model(folder: Path) -> Path:
    (folder / "model.keras").write_bytes(b"a saved model")  # finished_runs needs one; nothing loads it here
    return folder


def test_the_app_serves_the_best_real_run_else_the_best_demo_run_else_says_how_to_train(tmp_path):
    results = tmp_path / "results"
    with pytest.raises(RunNotFound, match=r"run_all.py --demo"):
        app_page.run_to_serve(results)
    weak = _with_model(write_finished_run(results / "demo", "mn_resultset1", correct=np.arange(40) % 2 == 0, val_accuracy=0.6))
    fast = _with_model(write_finished_run(results / "demo" / "fast", "mn_resultset2", val_accuracy=0.8))  # the best demo run
    assert app_page.run_to_serve(results) == (fast, True)
    (fast / "model.keras").unlink()
    assert app_page.run_to_serve(results) == (weak, True), "a run without its model cannot be served"
    real = _with_model(write_finished_run(results, "mn_resultset3", demo=False, correct=np.arange(40) % 2 == 0))
    assert app_page.run_to_serve(results) == (real, False), "a real run before any demo run, however good"
    assert app_page.run_to_serve(results, weak) == (weak, True), "--run wins"
    with pytest.raises(RunNotFound, match="metrics.json"):
        app_page.run_to_serve(results, tmp_path)


def test_the_run_overview_gives_the_provenance_accuracy_checks_and_calibration(tmp_path):
    run = write_finished_run(tmp_path, "mn_resultset5", seed=7)
    metrics = json.loads((run / "metrics.json").read_text())
    text = app_page.run_overview(metrics, run)
    interval = metrics["test"]["intervals"]["accuracy"]
    for expected in ["mn_resultset5", "seed 7", "split `abababababab`", "synthetic demo set",
                     f"Test accuracy** {100 * metrics['test']['accuracy']:.1f}% (95% interval {100 * interval['low']:.1f}%",
                     "no lungs 30.00%", "Grad-CAM (conv_pw_13_relu) puts 60.00%",
                     f"| Temperature T (fitted on validation) | {metrics['calibration']['temperature']:.2f} |",
                     "| COVID at sensitivity 0.95: threshold ", "| Uncertain"]:
        assert expected in text, expected
    assert "Not for diagnosis" in app_page.NOTICE and "synthetic data" in app_page.DEMO_BANNER


def test_masks_are_matched_by_file_name_and_every_ambiguous_or_unused_one_is_named(tmp_path):
    """x.png and x.jpg with two masks named x.png (uploads land in folders of their own): one image used to get the
    other's mask, the other none, without a word."""
    paths = {name: tmp_path / name for name in ("a/x.png", "b/x.jpg", "c/x.png", "d/x.png", "e/y.png", "f/y.png",
                                                "g/z.png", "h/orphan.png")}
    images = [paths["a/x.png"], paths["b/x.jpg"], paths["e/y.png"]]
    masks = [paths["c/x.png"], paths["d/x.png"], paths["f/y.png"], paths["h/orphan.png"]]
    matched, notes = app_page.match_masks(images, masks)
    assert matched == [None, None, paths["f/y.png"]]
    assert sum("x.png: no mask used: 2 images are named x.*" in n for n in notes) == 1
    assert sum("x.jpg: no mask used: 2 images are named x.*" in n for n in notes) == 1
    assert "mask orphan.png not used: no uploaded image has the same file name" in notes
    matched, notes = app_page.match_masks([paths["g/z.png"]], [paths["c/x.png"], paths["g/z.png"], paths["d/x.png"]])
    assert matched == [paths["g/z.png"]] and sum("mask x.png not used" in n for n in notes) == 2
    matched, notes = app_page.match_masks([paths["a/x.png"]], [paths["c/x.png"], paths["d/x.png"]])
    assert matched == [None] and notes == ["x.png: no mask used: 2 masks are named x.*; upload one"]


def test_a_request_s_uploads_are_deleted_when_answered_but_those_a_waiting_request_names(tmp_path):
    scratch, elsewhere = tmp_path / "scratch", tmp_path / "mine"
    files = [scratch / f"{'0' * 63}{n}" / f"film-{n}.png" for n in range(3)] + [elsewhere / "film.png"]
    for file in files:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"x")
    assert app_page.discard_uploads(files, scratch, keep={str(files[2])}) == 2
    assert [file.exists() for file in files] == [False, False, True, True], "a waiting request's file and the user's own stay"
    assert sorted(p.name for p in scratch.iterdir()) == [files[2].parent.name], "emptied folders removed"
    assert app_page.discard_uploads(files, scratch, keep=None) == 0 and files[2].exists(), "the queue unread: none"


def test_a_run_trained_on_a_region_is_served_with_a_warning(tmp_path):
    """A --regions run answered whole films through predict and the app without a word."""
    run = write_finished_run(tmp_path, "mn_resultset1-lungs")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "Warning" not in app_page.run_overview(metrics, run)
    metrics["params"]["input_region"] = "lungs"
    assert "**Warning: this model was trained on the lungs alone" in app_page.run_overview(metrics, run)
    trained = predict.TrainedModel(None, ["a", "b"], 32, str(run), None, "no_lungs")
    assert "trained on the lungs blacked out" in trained.region_warning()
    assert predict.TrainedModel(None, ["a", "b"], 32, str(run)).region_warning() is None


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A whole, valid-CRC PNG of 8x8 pixels whose header claims width x height (a decompression bomb's shape)."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_uploads_are_checked_from_their_header_before_anything_is_decoded(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray((np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint16) * 257).save(good)  # 16-bit
    assert app_page.check_upload(good) is None
    (tmp_path / "notes.png").write_text("a text file named like an image")
    assert "neither a PNG, a JPEG nor a DICOM" in app_page.check_upload(tmp_path / "notes.png")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    assert "cut short" in app_page.check_upload(tmp_path / "cut.png")
    assert "9000 x 9000 pixels, more than the limit of 40 million" in app_page.check_upload(
        _png_claiming(tmp_path / "bomb.png", 9000, 9000))
    assert "decompression bomb" in app_page.check_upload(_png_claiming(tmp_path / "bigger.png", 60000, 60000))
    assert app_page.check_upload(_png_claiming(tmp_path / "film.png", 4000, 5000)) is None, "a large film passes"
    assert "more than the limit of 0.0001 MB per file" in app_page.check_upload(good, max_mb=0.0001)


def test_dicom_uploads_are_checked_from_their_header_too(tmp_path):
    from .test_dicom import PYDICOM_FILES, film_file, rg1

    assert app_page.check_upload(rg1("J2KR")) is None, "a compressed film an installed plugin decodes"
    assert "without pixel data" in app_page.check_upload(PYDICOM_FILES / "rtplan.dcm")
    assert "colour DICOM" in app_page.check_upload(PYDICOM_FILES / "SC_rgb_small_odd.dcm")
    claims = film_file(tmp_path, "claims.dcm", np.zeros((8, 8)), Rows=9000, Columns=9000)  # the header alone is read
    assert "9000 x 9000 pixels, more than the limit of 40 million" in app_page.check_upload(claims)


def _test_images(run: Path, metrics: dict, count: int) -> tuple[list[Path], list[Path]]:
    """The run's first test images and their lung masks."""
    root = Path(metrics["dataset"]["root"])
    paths = pd.read_csv(run / "predictions.csv").query("split == 'test'")["path"].head(count)
    return [root / p for p in paths], [root / p.replace("/images/", "/masks/") for p in paths]


def _predict_csv(run: Path, images: list[Path], out: Path) -> pd.DataFrame:
    assert predict.main([*map(str, images), "--run", str(run), "--csv", str(out)]) == 0
    return pd.read_csv(out)


@pytest.mark.slow
def test_the_page_answers_every_image_as_predict_does_and_names_what_it_left_out(answering_run, tmp_path):
    """Uses the shared finished run: its model (a head drawn again), calibration and test images."""
    run, metrics = answering_run
    images, masks = _test_images(run, metrics, 6)
    gray = tmp_path / "gray.jpg"
    Image.open(images[0]).convert("RGB").resize((301, 257)).save(gray, quality=90)
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[1].read_bytes()[:300])
    expected = _predict_csv(run, [*images, gray], tmp_path / "p.csv")
    assert expected["p_COVID"].nunique() == len(expected), "answers that differ from image to image"
    trained = predict.load_trained(run)
    card = model_card(metrics, None)  # not exported yet: the page still shows its card
    assert "Not exported yet" in card and "Not a medical device" in card and "## Exports" in card

    result = app_page.answer(trained, [*images, gray, broken], masks[:2] + [tmp_path / "orphan.png"])
    table = result.table
    assert table["path"].tolist() == [str(p) for p in [*images, gray]]
    for column in expected.columns:
        if column.startswith("p_"):
            assert np.abs(table[column].to_numpy() - expected[column].to_numpy()).max() < 1e-6, column
        elif column != "path":
            assert (table[column] == expected[column]).all(), column
    for (_, row), image in zip(expected.iterrows(), [*images, gray]):
        assert f"### {image.name}\n\n**Prediction: {row.predicted} ({100 * row[f'p_{row.predicted}']:.1f}%)**" in result.markdown
        for name in trained.class_names:
            assert f"| {name} | {row[f'p_{name}']:.4f} |" in result.markdown
    assert "broken.png: PNG cut short" in result.markdown and "orphan.png not used: no uploaded image" in result.markdown
    assert result.markdown.count("Lung outline: from the uploaded mask.") == 2
    assert len(result.overlays) == 7 and all(pixels.ndim == 3 and pixels.shape[2] == 3 for pixels, _ in result.overlays)
    # the outline is drawn (white) on the images that came with a mask: the same image without one differs
    with_mask = app_page.answer(trained, images[:1], masks[:1]).overlays[0][0]
    without = app_page.answer(trained, images[:1]).overlays[0][0]
    assert with_mask.shape == without.shape and (with_mask != without).any()

    limited = app_page.answer(trained, images[:3], max_images=2)
    assert len(limited.table) == 2 and f"{images[2].name}: more than 2 images in one request" in limited.markdown
    assert "Upload one or more" in app_page.answer(trained, []).markdown


def _prediction_lines(text: str) -> dict[str, tuple[str, float]]:
    """{file name: (class, percent)} from the page's answers."""
    found = re.findall(r"^(\S+\.(?:png|jpg))\s*\n+Prediction: (.+?) \((\d+\.\d)%\)", text, flags=re.M)
    return {name: (label, float(percent)) for name, label, percent in found}


def _probabilities_shown(text: str, name: str, classes: list[str]) -> dict[str, float]:
    """{class: probability} from the table under image ``name``'s heading on the page."""
    section = text[text.index(f"{name}\n"):]
    return {c: float(re.search(rf"^{re.escape(c)}\s+(\d\.\d{{4}})$", section, flags=re.M).group(1)) for c in classes}


def _files_under(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@pytest.mark.slow
def test_the_page_in_a_real_browser_answers_as_predict_refuses_a_broken_file_and_keeps_serving(answering_run, tmp_path):
    """Uses the shared finished run (its head drawn again): the app serves it in a subprocess, Chromium (Debian's,
    through Playwright's executable_path) drives the page."""
    executable = browser.chromium()
    if executable is None or importlib.util.find_spec("playwright") is None:
        if REQUIRE_BROWSER:
            pytest.fail("No Chromium or Playwright: .ci/run installs Debian's chromium and requirements-dev.txt playwright")
        pytest.skip("needs Debian's chromium and playwright (requirements-dev.txt)")
    run, metrics = answering_run
    images, masks = _test_images(run, metrics, 3)
    expected = _predict_csv(run, images, tmp_path / "p.csv").set_index(pd.Index([p.name for p in images]))
    assert expected["p_COVID"].nunique() == 3, "answers that differ"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not the rest of a PNG")
    run_files, cwd, temporary = _files_under(run), tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), temporary.mkdir()

    with browser.serving("--run", str(run), "--max-images", "2", cwd=cwd, env={"TMPDIR": str(temporary)}) as (url, process, seconds, log):
        with browser.browser_page(executable) as page:
            page.goto(url)
            assert "Not a medical device" in page.locator("#notice").inner_text()
            assert "Demo model, synthetic data" in page.locator("#demo-banner").inner_text()
            overview = page.locator("#run").inner_text()
            assert metrics["dataset"]["split_sha256"][:12] in overview and "Test accuracy" in overview

            text = browser.predict_on_page(page, images[:2], masks[:2])
            shown = _prediction_lines(text)
            assert page.locator("#gradcam img").count() == 2
            for name, (label, percent) in shown.items():
                row = expected.loc[name]
                assert label == row.predicted and abs(percent - 100 * row[f"p_{row.predicted}"]) <= 0.05 + 1e-9, name
                probabilities = _probabilities_shown(text, name, metrics["dataset"]["class_names"])
                assert all(abs(p - row[f"p_{c}"]) <= 5e-5 + 1e-9 for c, p in probabilities.items()), (name, probabilities)
            assert sorted(shown) == sorted(p.name for p in images[:2])
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

            browser.clear_uploads(page)
            text = browser.predict_on_page(page, [broken])
            assert "broken.png: PNG cut short" in text and "No image could be read" in text
            browser.clear_uploads(page)
            again = _prediction_lines(browser.predict_on_page(page, images[2:]))
            assert again == {images[2].name: (expected.loc[images[2].name].predicted,
                                              round(100 * expected.loc[images[2].name].filter(like="p_").max(), 1))}

        # many at once: 20 requests from as many clients; each is answered or told the queue is full, none is lost
        from gradio_client import Client, handle_file

        # each with three images, one more than --max-images: the same two answered, the third named and deleted
        client = Client(url, verbose=False)
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda _: _submit(client, [handle_file(str(image)) for image in images]), range(20)))
        answered = [o for o in outcomes if f"### {images[0].name}" in o]
        assert answered and all(f"### {images[1].name}" in o and f"{images[2].name}: more than 2 images" in o for o in answered)
        assert all(o in answered or "queue" in o.lower() for o in outcomes), outcomes
        # an upload stored within UPLOAD_GRACE may belong to a request about to join the queue: the next request
        # answered after that deletes it; one more, of the first image alone, then leaves only its own upload (the
        # stored files made older by UPLOAD_GRACE, as if that much time had passed, rather than waiting for it)
        scratch = next(temporary.glob("covid-mobilenet-app-*"))
        aged = time.time() - app.UPLOAD_GRACE - 1
        for path in (p for p in scratch.rglob("*") if p.is_file()):
            os.utime(path, (aged, aged))
        assert f"### {images[0].name}" in _submit(client, [handle_file(str(images[0]))])
        stored = [p for p in scratch.rglob("*") if p.is_file()]
        uploads = [p for p in stored if p.name in {image.name for image in images}]
        print(f"app: ready in {seconds:.1f} s; 20 requests at once: {len(answered)} answered, "
              f"{len(outcomes) - len(answered)} told the queue is full; after one more its folder holds {len(stored)} "
              f"files, {sum(p.stat().st_size for p in stored) / 1e6:.2f} MB ({len(uploads)} uploads)")
        assert [p.name for p in uploads] in ([], [images[0].name]), uploads
        assert process.poll() is None, "still serving"
    assert process.returncode == 0, "".join(log)
    assert (tmp_path / "app.png").stat().st_size > 10_000
    assert _files_under(run) == run_files, "nothing written into the run"
    assert not list(cwd.iterdir()), "nothing written where it was started"
    assert not list(temporary.iterdir()), "its temporary folder (uploads, overlays) removed when it stopped"


def _submit(client, files: list) -> str:
    try:
        markdown, _, _ = client.predict(files, [], api_name="/on_predict")
        return markdown
    except Exception as exc:  # the queue's refusal reaches the client as an error
        return f"{type(exc).__name__}: {exc}"
