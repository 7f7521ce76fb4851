"""MODEL_CARD.md: what a trained model is, how it was made, how well it does, and what it is not for; and the
export's table, which the card and the README show.

Generated from the run's ``metrics.json`` and its ``export.json``, never written by hand, so
every number in it can be traced to a file.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..analysis.calibration_report import calibration_lines
from ..analysis.unfamiliar import BLIND, SEES
from ..common.files import write_atomic
from ..data.masks import REGION_LABELS

INTENDED_USE = [
    "Research and teaching: how MobileNet fine-tuning behaves on the COVID-19 Radiography Database, how its "
    "configurations compare, what it looks at, and what shipping it small costs.",
    "**Not a medical device. Not for diagnosis, triage, screening or any decision about a patient.** It was "
    "neither designed nor validated for that, and nobody should use it so.",
]
LIMITATIONS = [
    "One data set, assembled from several public collections whose sources are nearly tied to the labels "
    "(Lung_Opacity only from RSNA, Viral Pneumonia only from one paediatric Kaggle set, COVID from other "
    "collections): a model can score by recognising the source. See the shortcut checks below; they are "
    "evidence, not proof.",
    "The test split comes from the same collections as the training split: its accuracy says nothing about "
    "images from another hospital, scanner or population. There is no external validation.",
    "Class shares follow the data set (about half Normal), not any clinical population: the probabilities are "
    "calibrated (temperature scaling) on this data set's validation split, not to any clinical population, and "
    "the operating points and abstain threshold hold, at best, for images like its test split.",
    "Quantized exports were measured on this test split only; their agreement with the Keras model may differ "
    "on other images.",
]


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _interval(block: dict | None) -> str:
    return "" if not block else f" [{100 * block['low']:.1f}, {100 * block['high']:.1f}]"


def _f1_interval(block: dict | None) -> str:
    return "" if not block else f" [{block['low']:.3f}, {block['high']:.3f}]"


def model_card(metrics: dict, export: dict | None) -> str:
    """The card's Markdown; ``export`` None: a run not exported yet (the web app shows its card so)."""
    params, dataset, test = metrics["params"], metrics["dataset"], metrics["test"]
    intervals = test.get("intervals", {})
    demo = bool(dataset.get("demo"))
    lines = [f"# Model card: {metrics['experiment']} (seed {params['seed']})", ""]
    if demo:
        lines += ["**Trained on the synthetic demo set: these numbers say nothing about chest X-rays.**", ""]
    lines += [
        "## Model", "",
        f"- Architecture: `{metrics['model']['name']}`: Keras MobileNet without its top, then Flatten, "
        f"{params['hidden_layers']} x (Dense({params['dense_units']}, relu), Dropout({params['dropout']})), then a "
        f"softmax over {len(dataset['class_names'])} classes; {metrics['model']['parameters']:,} parameters.",
        f"- Input: raw pixels, {params['image_size']}x{params['image_size']}x3, values 0..255 (the scaling to [-1, 1] is "
        "inside the model); images are decoded and resized as `covid_mobilenet.data.pipeline.load_image` does, DICOM "
        "films rendered to 8-bit grayscale first (`covid_mobilenet.data.dicom`).",
        f"- Output: one probability per class, in this order: {', '.join(dataset['class_names'])}.",
        f"- Training: backbone weights `{params['weights']}`, "
        f"{'fine-tuned' if params['train_base'] else 'frozen'}; Adam, learning rate {params['learning_rate']:g}, "
        f"batch {params['batch_size']}, {metrics['epochs_run']} epochs, precision {metrics.get('runtime', {}).get('precision', params['precision'])}, "
        f"input region {REGION_LABELS[params.get('input_region', 'full')]}; seed {params['seed']}, split seed {params['split_seed']}.",
        f"- Made {metrics.get('finished_at', '–')} with TensorFlow {metrics['environment'].get('tensorflow')}, Keras "
        f"{metrics['environment'].get('keras')}, code {metrics['environment'].get('git_commit')}.",
        "", "## Data", "",
        f"- {'The synthetic demo set' if demo else 'COVID-19 Radiography Database'} at `{dataset['root']}`: "
        f"{dataset['total_images']:,} images; split `{dataset['split_sha256'][:12]}` (`{dataset['split_file']}`), "
        + ", ".join(f"{name} {sum(counts.values()):,}" for name, counts in dataset["counts"].items()) + ".",
        f"- Skipped files: {len(dataset.get('skipped', []))}.",
        "", "## Test metrics", "",
        f"- Accuracy {_percent(test['accuracy'])}{_interval(intervals.get('accuracy'))}, macro F1 {test['macro_f1']:.3f}"
        f"{_f1_interval(intervals.get('macro_f1'))}, balanced accuracy {_percent(test['balanced_accuracy'])}{_interval(intervals.get('balanced_accuracy'))} "
        "(95% intervals: Wilson for accuracy, a bootstrap over test images for the others).", "",
        "| Class | Sensitivity | Specificity | Precision | Test images |", "| :-- | :-: | :-: | :-: | :-: |",
    ]
    lines += [f"| {name} | {_percent(c['sensitivity'])} | {_percent(c['specificity'])} | {_percent(c['precision'])} | {c['support']} |"
              for name, c in test["per_class"].items()]
    checks = shortcut_lines(metrics)
    if checks:
        lines += ["", "## What it looks at (shortcut checks)", "", *checks]
    by_source = metrics.get("sources", {}).get("by_class_and_source", [])
    if by_source:
        lines += ["", "| Class | Source | Test images | Accuracy |", "| :-- | :-- | :-: | :-: |"]
        lines += [f"| {r['class']} | {r['source']} | {r['images']} | {_percent(r['accuracy'])} |" for r in by_source]
    calibration = metrics.get("calibration")
    lines += ["", "## Probabilities: calibration, operating points, abstaining", ""]
    if calibration:
        folded = (export or {}).get("temperature_scaling", {})
        lines += [f"- {line}" for line in calibration_lines(calibration)]
        lines += ["", "Temperature scaling fitted on validation; the operating points and the abstain threshold chosen on "
                  "validation, on the calibrated probabilities; every figure above from test, with 95% intervals. "
                  + ("The exported LiteRT models include T (a last layer softmax(log p / T)): they output calibrated "
                     "probabilities. `python -m covid_mobilenet.predict --run <run>` prints the same, the answer "
                     "(`uncertain` below the abstain threshold) and the operating points' decisions."
                     if folded.get("folded") else "")]
    else:
        lines += ["This run has no calibration record (it was made before runs were calibrated): its probabilities are the "
                  "model's raw softmax, usually overconfident. Rerun it to calibrate."]
    lines += ["", "## Unfamiliar images", "", *unfamiliar_lines(metrics)]
    lines += ["", "## Exports", ""]
    if export is None:
        lines += ["Not exported yet: `python -m covid_mobilenet.export <run>` writes LiteRT float32, float16 and int8 models, "
                  "measures them on the test split and writes this card beside them.", ""]
    else:
        lines += [
            f"LiteRT flatbuffers beside this card, measured on the {export['test_images']} test images with {export['threads']} "
            f"thread(s) ({export['latency']}, after {export['warmup_calls']} warm-up calls); int8's value ranges measured on "
            f"{representative_images(export)} training images (its "
            "representative data set).", "",
            export_table(export), ""]
    lines += [
        "## Intended use", "", *[f"- {item}" for item in INTENDED_USE],
        "", "## Known limitations", "", *[f"- {item}" for item in LIMITATIONS],
    ]
    return "\n".join(lines) + "\n"


def shortcut_lines(metrics: dict) -> list[str]:
    """The shortcut checks' headline figures in words (paragraphs), or none when the run has no checks."""
    checks = metrics.get("shortcuts")
    if not checks:
        return []
    regions, cam = checks["regions"], checks["gradcam"]
    accuracies = ", ".join(f"{REGION_LABELS[r]} {_percent(regions[r]['accuracy'])}{_interval(regions[r].get('interval'))}"
                           for r in regions)
    attention = ("Grad-CAM found no positive evidence to locate." if cam["ratio"] is None else
                 f"Grad-CAM ({cam['layer']}) puts {_percent(cam['energy_in_lungs'])} of its energy inside the lungs, which "
                 f"cover {_percent(cam['lung_area'])} of the image (ratio {cam['ratio']:.2f}; 1.0 is a uniform map).")
    lines = [f"On the {checks['images_with_mask']} test images with a usable lung mask: accuracy {accuracies}; always "
             f"answering {checks['majority_class']} would score {_percent(checks['majority_rate'])}. {attention}"]
    marker = checks.get("planted_marker")
    if marker:
        lines += ["", f"Planted demo shortcut (`{marker['source']}`, {marker['class']}): {_percent(marker['energy_in_marker'])} of the "
                  f"Grad-CAM energy on its marker's box ({_percent(marker['box_area'])} of the image); with no lungs, "
                  f"{_percent(marker['no_lungs_accuracy_marked'])} of the marked images are still called {marker['class']}"
                  + ("" if marker.get("blurred_lungs_accuracy_marked") is None else
                     f", with the lungs blurred {_percent(marker['blurred_lungs_accuracy_marked'])}") + "."]
    return lines


def unfamiliar_lines(metrics: dict) -> list[str]:
    """The unfamiliar-image guard in words: how it scores, its threshold, what it flagged, what it can and cannot
    see; or why the run has none."""
    guard = metrics.get("unfamiliar")
    if not guard:
        return ["This run has no unfamiliar-image guard (it was made before runs had one): it answers any image with a "
                "class, however unlike its training images. Rerun it to fit one."]
    flagged = guard["test_flagged"]
    interval = flagged.get("interval")
    method = ("the smallest Mahalanobis distance to a class mean (shared covariance, Ledoit-Wolf shrinkage)"
              if guard["method"] == "mahalanobis" else "the distance to the k-th nearest training image")
    lines = [f"- Score: {method}, in the space of the trained model's pooled backbone features ({guard['dimensions']} "
             f"values), fitted on its training images. Threshold {guard['threshold']:.2f}: "
             f"{guard['threshold_rule']}, so about 5% of images like the training ones are flagged.",
             f"- Test images flagged: {flagged['images']} of {flagged['of']} ({_percent(flagged['share'])}"
             f"{_interval(interval)}).",
             "- An image above the threshold is answered `unfamiliar` by `predict` and the web app, never with a class, "
             "whatever its confidence. The LiteRT exports hold the model alone: whoever ships one ships the guard "
             "(`unfamiliar.npz`, `analysis/unfamiliar.py`) with it, or answers every image."]
    shifted = guard.get("shifted")
    if shifted:
        lines.append(f"- {shifted['name']} ({shifted['images']} images, never trained on): AUROC {shifted['auroc']:.3f} "
                     f"against the other test images; {_percent(shifted['share_flagged'])} flagged.")
    lines += [f"- It sees {SEES}.", f"- It cannot see this: {BLIND}."]
    return lines


def write_model_card(path: str | os.PathLike, metrics: dict, export: dict) -> Path:
    return write_atomic(path, model_card(metrics, export))


def export_table(record: dict) -> str:
    """The Markdown table of an export: one row per format."""
    lines = ["| Format | File size | Test accuracy | Agrees with Keras | Median latency (1 image) |",
             "| :-- | --: | :-: | :-: | --: |"]
    for row in record["formats"]:
        lines.append(f"| {row['format']} | {row['bytes'] / 1e6:.2f} MB | {100 * row['accuracy']:.2f}% | "
                     f"{100 * row['agreement_with_keras']:.2f}% | {row['median_latency_ms']:.2f} ms |")
    return "\n".join(lines)


def representative_images(export: dict) -> int:
    """How many training images int8's ranges were measured on (``calibration`` in an export.json made before the
    name meant temperature scaling only)."""
    return (export.get("representative_images") or export["calibration"])["images"]


def readme_section(record: dict) -> str:
    """The README's export table, from a real run's export.json."""
    return "\n".join([
        f"{record['experiment']} (seed {record['seed']}), `{record['run']}`: {record['test_images']:,} test images, "
        f"{record['threads']} thread(s), {record['latency']}; int8's value ranges measured on "
        f"{representative_images(record)} training images. TensorFlow {record['versions']['tensorflow']}, interpreter {record['versions']['interpreter']}.",
        "", export_table(record)])
