"""The unfamiliar-image guard measured on one trained run, both methods side by side (``python -m
covid_mobilenet.benchmark --unfamiliar``): how well each tells the run's test images from images it never saw,
what it costs to fit and to store, and what it adds to ``predict``'s time per image.

The images it never saw: real chest films (``--unfamiliar-images``, default the tests' real films: 16 paediatric
Kermany films and, with pydicom-data installed, the adult DICOM film RG1) and generated non-radiographs (two
photographs, a CT slice, a page of text, a blank image, noise: ``non_radiographs``). A few dozen images: the
AUROC says whether they are told apart, not how often on any collection.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import unfamiliar
from ..common.paths import DOCS_DIR, PROJECT_ROOT
from ..common.run_layout import METRICS_FILE, split_file_name
from ..product.predict import decode, image_files, load_trained

REAL_FILMS = PROJECT_ROOT / "tests" / "real_films"
PAGE_MARKERS = ("<!-- unfamiliar:start -->", "<!-- unfamiliar:end -->")  # the guard page's table, from bench.json
GUARD_PAGE = DOCS_DIR / "unfamiliar.md"


def non_radiographs(folder: Path) -> list[Path]:
    """Images no chest-film model was trained on, written into ``folder``: two photographs (scikit-learn's
    sample images), a CT slice (pydicom's ``CT_small.dcm``), a page of text, a blank image and noise."""
    import pydicom
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, photo in zip(("photo_china", "photo_flower"), load_sample_images().images):
        Image.fromarray(photo).save(folder / f"{name}.jpg")
        paths.append(folder / f"{name}.jpg")
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm", folder / "ct_slice.dcm")
    page = Image.new("L", (400, 400), 255)
    draw = ImageDraw.Draw(page)
    for line in range(20):
        draw.text((10, 10 + 19 * line), "The quick brown fox jumps over the lazy dog " * 2, fill=0)
    page.save(folder / "text.png")
    Image.new("L", (300, 300), 0).save(folder / "blank.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)).save(folder / "noise.png")
    return [*paths, folder / "ct_slice.dcm", folder / "text.png", folder / "blank.png", folder / "noise.png"]


def real_films(folder: Path = REAL_FILMS) -> list[Path]:
    """The real films of ``folder`` (by content), and RG1 from pydicom-data when it is installed."""
    films, _ = image_files([str(folder)])
    try:
        import data_store  # pydicom-data

        films.append(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    except ImportError:
        pass
    return films


def measure_unfamiliar(run: Path | None, films_folder: Path = REAL_FILMS) -> dict:
    """Both methods fitted on the run's training images, scored on its test images, on real films and on
    non-radiographs; the fitting time and file size of each; predict's time per image with and without the guard."""
    if run is None:
        return {"skipped": "no finished run with a saved model: run `python run_all.py --demo` (or the real sweep) first"}
    import json

    from ..model.pooled import PooledOutputs

    metrics = json.loads((Path(run) / METRICS_FILE).read_text())
    trained = load_trained(run)
    split = pd.read_csv(Path(run).parent.parent / split_file_name(metrics["dataset"]["split_sha256"]))
    root = Path(metrics["dataset"]["root"])
    pooled = PooledOutputs(trained.model)
    features, labels = {}, None
    for subset in ("train", "val", "test"):
        rows = split[split["split"] == subset]
        decoded = decode([root / path for path in rows["path"]], trained.image_size)
        features[subset] = pooled(decoded.pixels)[1]
        labels = rows["label"].to_numpy() if subset == "train" else labels
    with tempfile.TemporaryDirectory() as scratch:
        others = {"real films": real_films(films_folder), "non-radiographs": non_radiographs(Path(scratch))}
        unseen, answered = {}, {}
        for name, paths in others.items():
            probabilities, unseen[name] = pooled(decode(paths, trained.image_size).pixels)
            answered[name] = answers_without_guard(trained, paths, probabilities)
        timing = predict_time(trained, decode([root / p for p in split.loc[split["split"] == "test", "path"]],
                                              trained.image_size).pixels)
        timing["at_224_px"] = predict_time_at_full_size()
        methods = {}
        for method in unfamiliar.METHODS:
            started = time.perf_counter()
            guard = unfamiliar.fit(features["train"], labels, features["val"], method)
            fitted_in = time.perf_counter() - started
            test = guard.scores(features["test"])
            size = guard.save(Path(scratch) / f"{method}.npz").stat().st_size
            methods[method] = {
                "fit_seconds": fitted_in, "file_bytes": size, "test_flagged": float((test > guard.threshold).mean()),
                **{name: {"images": len(scores), "flagged": float((guard.scores(scores) > guard.threshold).mean()),
                          "auroc_vs_test": unfamiliar.separation(test, guard.scores(scores))}
                   for name, scores in unseen.items()}}
    return {"run": str(run), "demo": bool(metrics["dataset"].get("demo")), "train_images": len(features["train"]),
            "test_images": len(features["test"]), "dimensions": int(features["train"].shape[1]),
            "chosen": unfamiliar.DEFAULT_METHOD, "methods": methods, "predict": timing, "without_guard": answered,
            "unseen": {name: [p.name for p in paths] for name, paths in others.items()}}


def answers_without_guard(trained, paths: list[Path], probabilities) -> dict:
    """What the run would answer without its guard: how many images get a class (not ``uncertain``), the commonest
    class and the range of the calibrated confidence of those answered."""
    from ..product.predict import UNCERTAIN, prediction_table

    rows = prediction_table(paths, probabilities, trained.class_names, trained.calibration)
    if trained.calibration is None or not len(rows):
        return {"images": len(rows)}
    answered = rows[rows["answer"] != UNCERTAIN]
    confidence = answered.filter(like="p_").max(axis=1)
    return {"images": len(rows), "answered": len(answered),
            "commonest": answered["answer"].value_counts().index[0] if len(answered) else None,
            "commonest_count": int(answered["answer"].value_counts().iloc[0]) if len(answered) else 0,
            "confidence": [float(confidence.min()), float(confidence.max())] if len(answered) else None}


def predict_time(trained, pixels, repeats: int = 3) -> dict:
    """Seconds per image of predict's model pass, without the guard (the model's softmax) and with it (the same
    pass giving the pooled features, then the score), side by side on the same images; the best of ``repeats``."""
    from ..product.predict import class_probabilities

    def best(call) -> float:
        call()  # the first call traces
        return min(_timed(call) for _ in range(repeats)) / len(pixels)

    without = best(lambda: class_probabilities(trained, pixels))
    with_guard = best(lambda: trained.outputs(pixels))
    return {"images": len(pixels), "without_guard_ms": 1e3 * without, "with_guard_ms": 1e3 * with_guard,
            "ratio": with_guard / without}


def predict_time_at_full_size(image_size: int = 224, images: int = 64) -> dict:
    """``predict_time`` for the study's model at the study's image size (untrained weights, a guard fitted on its
    features of generated pictures): what the guard adds where the backbone's pass costs most."""
    from ..model.architecture import build_model
    from ..model.pooled import PooledOutputs
    from ..product.predict import TrainedModel

    model = build_model(4, image_size=image_size, hidden_layers=1, dense_units=8, dropout=0.5, weights=None,
                        train_base=False, seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, (images, image_size, image_size, 3), dtype=np.uint8)
    features = PooledOutputs(model)(pixels)[1]
    guard = unfamiliar.fit(features, np.arange(images) % 4, features)
    return predict_time(TrainedModel(model, ["a", "b", "c", "d"], image_size, "untrained", guard=guard), pixels)


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def table(figures: dict) -> str:
    """The figures as printed."""
    if "skipped" in figures:
        return f"unfamiliar-image guard: skipped ({figures['skipped']})"
    lines = [f"unfamiliar-image guard on {figures['run']}{' (demo)' if figures['demo'] else ''}: "
             f"{figures['train_images']} training, {figures['test_images']} test images, {figures['dimensions']} features",
             f"{'method':<12} {'test flagged':>12} {'fit s':>6} {'file MB':>8}  AUROC vs test (flagged): "
             + ", ".join(f"{name} ({len(paths)})" for name, paths in figures["unseen"].items())]
    for method, m in figures["methods"].items():
        unseen = ", ".join(f"{m[name]['auroc_vs_test']:.3f} ({100 * m[name]['flagged']:.0f}%)" for name in figures["unseen"])
        lines.append(f"{method:<12} {100 * m['test_flagged']:>11.1f}% {m['fit_seconds']:>6.2f} "
                     f"{m['file_bytes'] / 1e6:>8.2f}  {unseen}")
    timing = figures["predict"]
    lines.append(f"predict, per image: {timing['without_guard_ms']:.2f} ms without the guard, "
                 f"{timing['with_guard_ms']:.2f} ms with it (x{timing['ratio']:.2f}), {timing['images']} images")
    return "\n".join(lines)


def page_block(figures: dict) -> str:
    """The guard page's table of its two scores, from bench.json's ``unfamiliar`` (``--unfamiliar`` writes it)."""
    unseen = figures["unseen"]
    run = Path(figures["run"])
    lines = [f"Measured by `python -m covid_mobilenet.benchmark --unfamiliar` on {'the demo' if figures['demo'] else 'a real'} "
             f"run `{run.parent.name}/{run.name}` ({figures['train_images']} training and {figures['test_images']} test "
             f"images{', synthetic: a measurement of the guard, not a result on chest X-rays' if figures['demo'] else ''}), "
             f"against {len(unseen['real films'])} real films and {len(unseen['non-radiographs'])} non-radiographs "
             f"({', '.join(p.rsplit('.', 1)[0] for p in unseen['non-radiographs'])}), on {figures['machine']['device']}.", "",
             "| Score | Test images flagged | Real films flagged | AUROC test vs real films | Non-radiographs flagged | "
             "AUROC test vs non-radiographs | Fitting | File |", "| :-- | --: | --: | --: | --: | --: | --: | --: |"]
    for method, m in figures["methods"].items():
        real, others = m["real films"], m["non-radiographs"]
        lines.append(f"| {method}{' (chosen)' if method == figures['chosen'] else ''} | {100 * m['test_flagged']:.1f}% | "
                     f"{100 * real['flagged']:.0f}% | {real['auroc_vs_test']:.3f} | {100 * others['flagged']:.0f}% | "
                     f"{others['auroc_vs_test']:.3f} | {m['fit_seconds']:.2f} s | {m['file_bytes'] / 1e6:.2f} MB |")
    said = figures.get("without_guard", {}).get("real films", {})
    if said.get("answered"):
        lines += ["", f"Without the guard, this run would answer {said['answered']} of the {said['images']} real films with a "
                  f"class ({said['commonest_count']} of them {said['commonest']}), at a calibrated confidence of "
                  f"{said['confidence'][0]:.2f} to {said['confidence'][1]:.4f}: confidently wrong, as calibration cannot see."]
    timing = figures["predict"]
    lines += ["", f"`predict`'s model pass per image, on the same {timing['images']} test images: "
              f"{timing['without_guard_ms']:.2f} ms without the guard (the model's softmax alone), "
              f"{timing['with_guard_ms']:.2f} ms with it (one pass for the probabilities and the pooled features, then the "
              f"score): x{timing['ratio']:.2f}."
              + ("" if "at_224_px" not in timing else
                 f" At 224 px (the study's model, untrained, {timing['at_224_px']['images']} generated images): "
                 f"{timing['at_224_px']['without_guard_ms']:.1f} against {timing['at_224_px']['with_guard_ms']:.1f} ms, "
                 f"x{timing['at_224_px']['ratio']:.2f}.")]
    return "\n".join(lines)
