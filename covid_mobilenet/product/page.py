"""What the web app (``product/app.py``) shows, apart from the web framework: which run it serves, that run's
overview, the checks every uploaded file passes first, and each image's answer with its Grad-CAM overlay.

An image's answer is ``predict``'s row for it: the same decoding (``predict.decode``, DICOM rendered as
``data/dicom.py`` does), the same probabilities and unfamiliarity (``TrainedModel.outputs``) and the same table
(``predict.run_table``: calibrated probabilities, the answer, ``uncertain`` or ``unfamiliar``, the operating
points' decisions), so the page and the command cannot disagree. Before anything is decoded, each file is
checked without decoding it: its size, that it is a whole PNG or JPEG by its content (the training decoder's rules,
``data.image_files``) or a single-frame grayscale DICOM whose pixels an installed plugin decodes, and its pixel
count from its header, so a broken or huge file costs nothing and is named with the reason. Nothing from a DICOM
header but its view is shown.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..analysis.calibration_report import calibration_table
from ..analysis.results import RunNotFound, best_run, chosen_run, finished_runs
from ..common.files import figure_pixels
from ..common.paths import PROJECT_ROOT
from ..common.run_layout import METRICS_FILE
from ..analysis.unfamiliar import BLIND
from ..data.dicom import header_problem
from ..data.image_files import decodable_bytes
from .model_card import INTENDED_USE, shortcut_lines, unfamiliar_lines
from .inputs import NOT_AN_IMAGE, decode, input_kind
from .predict import UNCERTAIN, UNFAMILIAR, TrainedModel, gradcam_figures, region_warning, run_table

MAX_FILE_MB = 50  # per file; the server refuses a larger upload before it is stored
MAX_PIXELS = 40_000_000  # per image, read from its header: a 6,000 x 6,000 film passes, a decompression bomb does not
MAX_IMAGES = 32  # per request; the rest of a larger upload is named and left out
NOTICE = ("**Research and teaching only.** " + INTENDED_USE[1].replace("**", "")
          + " Its probabilities hold, at best, for images like its own test split.")
DEMO_BANNER = ("**Demo model, synthetic data.** This model was trained on the project's generated demo images, not on "
               "chest X-rays: its answers on a real film mean nothing. Train on the real data set with "
               "`python run_all.py`; the app then serves the best real run.")


def run_to_serve(results_dir: Path, run: Path | None = None) -> tuple[Path, bool]:
    """(run folder, trained on the demo data?): ``run`` when given; else the best finished real run in
    ``results_dir``; else the best demo run (``results_dir/demo``, then its fast-mode runs). ``RunNotFound`` says
    how to make one."""
    if run is None:
        try:
            run = best_run(results_dir)
        except RunNotFound:
            demo = [found for folder in (results_dir / "demo", results_dir / "demo" / "fast")
                    for found in finished_runs(folder, allow_demo=True)]
            if not demo:
                raise RunNotFound(f"No finished run with a saved model under {results_dir}, real or demo. Train one: "
                                  "`python run_all.py --demo` (about five minutes) or `python run_all.py` on the real data; "
                                  "or name a run folder with --run results/<experiment>/seed-<seed>.") from None
            run = chosen_run(demo)
    metrics_file = Path(run) / METRICS_FILE
    if not metrics_file.is_file():
        raise RunNotFound(f"{run} holds no {METRICS_FILE}: name a finished run's folder, results/<experiment>/seed-<seed>.")
    return Path(run), bool(json.loads(metrics_file.read_text())["dataset"].get("demo"))


def _region_line(input_region: str) -> str | None:
    """The page's warning for a run trained on a region (``predict.region_warning``), or None."""
    warning = region_warning(input_region)
    return None if warning is None else f"**Warning: this model was {warning}.**"


def _shown(path: Path) -> Path:
    """A path inside the project relative to it (results/...), any other as it is."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        return Path(path)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def run_overview(metrics: dict, run: Path) -> str:
    """The run on the page: configuration, seed, split, test accuracy with its interval, the shortcut checks'
    headline figures and the calibration, in Markdown."""
    params, dataset, test = metrics["params"], metrics["dataset"], metrics["test"]
    interval = test.get("intervals", {}).get("accuracy")
    accuracy = _percent(test["accuracy"]) + (f" (95% interval {_percent(interval['low'])} to {_percent(interval['high'])}, "
                                             f"{interval['method']})" if interval else "")
    lines = [
        f"**Run** `{_shown(run)}`: configuration **{metrics['experiment']}** (backbone "
        f"{'fine-tuned' if params.get('train_base') else 'frozen'}, {params['hidden_layers']} x Dense({params['dense_units']}), "
        f"learning rate {params['learning_rate']:g}, {metrics['epochs_run']} epochs, {params['image_size']} px), seed "
        f"{params['seed']}, split `{dataset['split_sha256'][:12]}` ({'synthetic demo set' if dataset.get('demo') else 'COVID-19 Radiography Database'}, "
        f"{dataset['total_images']:,} images), made {metrics.get('finished_at', 'at an unknown time')}.",
        "",
        f"**Test accuracy** {accuracy} on {sum(dataset['counts']['test'].values()):,} test images"
        + (f"; validation accuracy {_percent(metrics['val']['accuracy'])}, on which the served run is chosen (test "
           "images choose nothing)." if "accuracy" in metrics.get("val", {}) else "."),
    ]
    warning = _region_line(params.get("input_region", "full"))
    if warning:
        lines += ["", warning]
    shortcuts = shortcut_lines(metrics)
    if shortcuts:
        lines += ["", "**What it looks at** (shortcut checks): " + shortcuts[0], *shortcuts[1:]]
    lines += ["", "**Unfamiliar images**: " + " ".join(line.removeprefix("- ") for line in unfamiliar_lines(metrics)[:3])]
    calibration = metrics.get("calibration")
    lines += ["", "**Probabilities**: calibrated by temperature scaling on the validation images; the operating point "
                  "and the abstain threshold chosen there, reported on test (95% intervals).", "",
              calibration_table(calibration)] if calibration else [
        "", "**Probabilities**: this run has no calibration record: the page shows the model's raw softmax, usually "
            "overconfident."]
    return "\n".join(lines)


def check_upload(path: Path, *, max_pixels: int = MAX_PIXELS, max_mb: float = MAX_FILE_MB) -> str | None:
    """Why the file cannot be answered (too large, not a whole PNG or JPEG nor a readable grayscale DICOM, too many
    pixels), or None; nothing is decoded but the header."""
    size = path.stat().st_size
    if size > max_mb * 1e6:
        return f"{size / 1e6:.1f} MB, more than the limit of {max_mb:g} MB per file"
    kind = input_kind(path)
    if kind is None:
        return NOT_AN_IMAGE
    if kind == "DICOM":
        return header_problem(path, max_pixels=max_pixels)
    readable, why = decodable_bytes(path.read_bytes())
    if why:
        return why
    try:
        with Image.open(io.BytesIO(readable)) as picture:
            width, height = picture.size
    except Image.DecompressionBombError:
        return f"more pixels than the limit of {max_pixels / 1e6:.0f} million (decompression bomb?); resize it first"
    except Exception as exc:  # anything Pillow cannot read from the header: all the same to the user
        return f"cannot be read as an image ({type(exc).__name__}: {str(exc)[:120]})"
    if width * height > max_pixels:
        return f"{width} x {height} pixels, more than the limit of {max_pixels / 1e6:.0f} million; resize it first"
    return None


@dataclass
class Answers:
    """One request's answers: Markdown for the page, Grad-CAM overlays (RGB pixels, caption), predict's rows."""

    markdown: str
    overlays: list[tuple[np.ndarray, str]] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def match_masks(images: list[Path], masks: list[Path]) -> tuple[list[Path | None], list[str]]:
    """Each image's mask: the uploaded mask of the same stem (``x.png`` for ``x.jpg``). Two images of one stem, or
    two masks of one stem, are ambiguous: none of them gets a mask, and each is named; so is every mask no image
    takes."""
    image_stems = [Path(image).stem for image in images]
    by_stem: dict[str, list[Path]] = {}
    for mask in masks:
        by_stem.setdefault(Path(mask).stem, []).append(Path(mask))
    matched, notes = [], []
    for image, stem in zip(images, image_stems):
        candidates = by_stem.get(stem, [])
        if not candidates:
            matched.append(None)
        elif image_stems.count(stem) > 1:
            matched.append(None)
            notes.append(f"{Path(image).name}: no mask used: {image_stems.count(stem)} images are named {stem}.*, so "
                         f"{', '.join(m.name for m in candidates)} cannot be told apart; give each image its own name")
        elif len(candidates) > 1:
            matched.append(None)
            notes.append(f"{Path(image).name}: no mask used: {len(candidates)} masks are named {stem}.*; upload one")
        else:
            matched.append(candidates[0])
    notes += [f"mask {mask.name} not used: no uploaded image has the same file name"
              for stem, found in by_stem.items() if stem not in image_stems for mask in found]
    return matched, notes


def _lung_masks(images: list[Path], masks: list[Path], image_size: int) -> tuple[list, list[str]]:
    """Each image's lung mask (bool, at the model's side) when a mask of the same file name was uploaded; notes."""
    import tensorflow as tf

    from ..data.pipeline import load_mask

    matched, notes = match_masks(images, masks)
    lungs = []
    for mask in matched:
        problem = None if mask is None else check_upload(mask)
        if mask is not None and problem is None:
            try:
                lungs.append(load_mask(tf.constant(str(mask)), image_size).numpy())
                continue
            except (tf.errors.OpError, ValueError) as exc:
                problem = f"cannot be decoded ({str(exc).strip().splitlines()[0][:120]})"
        if problem:
            notes.append(f"mask {mask.name} not used: {problem}")
        lungs.append(None)
    return lungs, notes


def discard_uploads(files: list[Path], scratch: Path, keep: set[str] | None) -> int:
    """Delete a request's uploaded files once it is answered (those inside ``scratch``, the server's folder, and not
    in ``keep``: files a request still waiting in the queue names, since the server stores one copy per content),
    with their folders when emptied; how many were deleted. ``keep`` None: the queue could not be read, so any file
    may still be needed and none is deleted."""
    if keep is None:
        return 0
    deleted = 0
    scratch = Path(scratch).resolve()
    for file in map(Path, files):
        try:
            resolved = file.resolve()
            if scratch not in resolved.parents or str(file) in keep or str(resolved) in keep:
                continue
            resolved.unlink()
            deleted += 1
            if not any(resolved.parent.iterdir()):
                resolved.parent.rmdir()
        except FileNotFoundError:
            continue
    return deleted


def _image_lines(row: pd.Series, trained: TrainedModel, has_mask: bool) -> list[str]:
    """One image's answer in words, and its probabilities as a table."""
    predicted, calibration = row["predicted"], trained.calibration
    lines = [f"### {Path(row['path']).name}", ""] + ([f"**Warning: this file is {row['warning']}.**", ""]
                                                    if row.get("warning") else [])
    if row.get("unfamiliar") == "yes":
        lines += [f"**Answer: unfamiliar. This image is unlike the images the model was trained on** (score "
                  f"{row['unfamiliarity']:.1f}, above the run's threshold {trained.guard.threshold:.1f}, which 95% of its "
                  "validation images stay under). Its class and probabilities below are not an answer: a model is often "
                  "confidently wrong on such images.", ""]
    lines += [f"**Prediction: {predicted} ({_percent(row[f'p_{predicted}'])})**", ""]
    if calibration is None:
        lines.append(f"The highest of the model's raw softmax probabilities ({row['probabilities']}; this run has no "
                     "calibration, so no abstaining and no operating point).")
    else:
        abstain = calibration["abstain"]
        if row["answer"] == UNCERTAIN:
            lines.append(f"**Answer: uncertain.** The calibrated confidence is below the run's abstain threshold "
                         f"({_percent(abstain['threshold'])})." if abstain["reached"] else
                         "**Answer: uncertain.** No confidence threshold reached the run's target accuracy on validation, "
                         "so it answers no image.")
        elif row["answer"] != UNFAMILIAR:  # an unfamiliar image's answer is said above
            lines.append(f"**Answer: {row['answer']}**: the calibrated confidence is at or above the run's abstain threshold "
                         f"({_percent(abstain['threshold'])}, which reached {abstain['target_accuracy']:g} accuracy on validation).")
        for column in [c for c in row.index if " at sensitivity " in c]:
            name, target = column.split(" at sensitivity ")
            threshold = calibration["operating_points"][name]["target_sensitivity"]["threshold"]
            lines.append(f"- {name} at sensitivity {target} (threshold {threshold:.3f}, chosen on validation): "
                         f"**{row[column]}**")
    if row.get("unfamiliar") == "no":
        lines.append(f"- Like the training images (unfamiliarity {row['unfamiliarity']:.1f}, under the run's threshold "
                     f"{trained.guard.threshold:.1f}); the guard is blind to some shifts: {BLIND}.")
    lines += [f"- DICOM view (ViewPosition): {row['view']}"] if row.get("view") else []
    lines += ["", f"| Class | Probability ({row['probabilities']}) |", "| :-- | --: |"]
    lines += [f"| {name} | {row[f'p_{name}']:.4f} |" for name in trained.class_names]
    lines += ["", "Lung outline: from the uploaded mask." if has_mask else
              "No lung mask uploaded with it (upload one with the same file name to see the lungs outlined)."]
    return lines


def answer(trained: TrainedModel, files: list[Path], masks: list[Path] = (), *, gradcam=None,
           max_images: int = MAX_IMAGES) -> Answers:
    """``predict``'s answer for each uploaded image, in words, with its Grad-CAM overlay; every file left out is
    named with the reason."""
    files = [Path(f) for f in files]
    skipped = [(f.name, f"more than {max_images} images in one request; send it again on its own")
               for f in files[max_images:]]
    checked = [(f, check_upload(f)) for f in files[:max_images]]
    skipped += [(f.name, why) for f, why in checked if why]
    decoded = decode([f for f, why in checked if not why], trained.image_size)
    skipped += [(Path(path).name, why) for path, why in decoded.failed]
    table = run_table(trained, decoded)
    lungs, notes = _lung_masks(decoded.paths, [Path(m) for m in masks], trained.image_size)
    warning = _region_line(trained.input_region)
    lines = [] if warning is None else [warning, ""]
    if trained.guard is None:
        lines += ["**This run has no unfamiliar-image guard** (it was made before runs had one): nothing tells an "
                  "image unlike its training images apart, and the model answers those too.", ""]
    if skipped or notes:
        lines += ["**Not answered:**", *[f"- {name}: {why}" for name, why in skipped], *[f"- {note}" for note in notes], ""]
    if not decoded.paths:
        lines.append("No image could be read." if files else "Upload one or more PNG, JPEG or DICOM images, then press Predict.")
    overlays = []
    figures = gradcam_figures(trained, decoded.pixels, decoded.paths, table, lungs, gradcam)
    for (_, row), figure, lung in zip(table.iterrows(), figures, lungs):
        lines += _image_lines(row, trained, lung is not None) + [""]
        caption = UNFAMILIAR if row.get("unfamiliar") == "yes" else row["predicted"]
        overlays.append((figure_pixels(figure), f"{Path(row['path']).name}: {caption}"))
    return Answers("\n".join(lines), overlays, table)
