"""What a trained model looks at: Grad-CAM inside the lungs, the lungs removed or kept alone, accuracy per source.

Chest X-ray classifiers are known to score by reading shortcuts (the collection an image
came from, text markers, borders) instead of the lungs (DeGrave, Janizek & Lee 2021; Maguolo &
Nanni 2020). For every run, on its test images:

- **attention inside the lungs**: the share of the Grad-CAM energy (for the predicted class)
  inside the lung mask, the mask's share of the image, and their ratio (1.0: no better than
  a uniform map);
- **the shortcut test at evaluation**: accuracy on the full images, with the lungs blacked out
  (``no_lungs``) and with only the lungs kept (``lungs``), beside the majority-class rate, all on
  the images that have a usable mask; a model far above that rate with no lungs reads
  something else (on the full images these are the test predictions; the no-lungs
  probabilities are kept, ``p_no_lungs_<class>``, to see how confident the model is without lungs);
- **the lungs blurred** (``lungs_blurred``): blacking the lungs out makes an image unlike any the model was
  trained on, and such a model often answers one class for all of them, blind to a marker outside the lungs;
  with the lungs replaced by a heavy blur of themselves the image stays close to a training film, so a model
  that reads a local marker still answers the marked source's class;
- **accuracy per class and source**, from the data set's metadata spreadsheets;
- on the demo set, whose description names a planted marker, the Grad-CAM energy on it.

In fast mode (a frozen backbone, its features cached) nothing here passes an image through the backbone twice in a
sweep: the region images' features are cached like the split's (``features.cached_region_features``, shared by
every configuration), the head alone answers them, and Grad-CAM, when it taps the backbone's output (7x7 at 224
pixels), comes from the cached maps and the head's gradients, which is exact for a frozen backbone. Without the cache,
Grad-CAM at the backbone's output comes from the run's predictions pass (``test_cams``, ``steps.split_predictions``):
the same maps and the same gradients, with no second pass over the test images.

A heatmap is evidence, not proof: Grad-CAM is coarse (7x7 at 224 pixels) and shows where the
gradient of one class score is large, not what the model "understood".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure

from ..analysis.calibration import NO_LUNGS_PREFIX
from ..analysis.uncertainty import above_majority
from ..data import masks, sources
from ..data.demo import DEMO_RECORD
from ..data.pipeline import AUTOTUNE, load_mask, region_images
from ..model.gradcam import GradCam, energy_in_mask, overlay_panel, upsample

PANEL_PER_CLASS = 4  # images per class in the panel: up to half misclassified, the rest correct
PANEL_SEED = 0
MAPS_BATCH = 256  # Grad-CAM from cached maps: images at once (4,224 test images of 7x7x1024 maps: 4.9 s in batches of 32)


@dataclass
class CachedInputs:
    """Fast mode: the frozen backbone's cached features, so that no check passes a test image through it again."""

    test: np.ndarray  # the test split's features, rows in the test table's order (the model's input region)
    regions: Callable[[str, list[str], list[str]], np.ndarray]  # (region, image paths, mask paths) -> their features


@dataclass
class ShortcutAnalysis:
    metrics: dict  # for metrics.json: "shortcuts" and "sources"
    table: pd.DataFrame  # one row per test image
    panel: Figure


def analyse(model: keras.Model, root: Path, test: pd.DataFrame, class_names: list[str], *,
            image_size: int, input_region: str, batch_size: int, title: str,
            cached: CachedInputs | None = None, test_cams: tuple[np.ndarray, np.ndarray] | None = None
            ) -> ShortcutAnalysis:
    """Every check of the module docstring on the test predictions ``test`` (path, true, predicted, p_<class>);
    ``cached``: in fast mode, the backbone's cached features, used instead of passes over the images; ``test_cams``:
    the test images' Grad-CAM at the backbone's output and the class of each, from the predictions pass."""
    root = Path(root)
    test = test.reset_index(drop=True)
    checked = masks.check_masks(root, test["path"])
    has_mask = masks.usable(checked).to_numpy()
    table = test[["path", "true", "predicted"]].assign(mask_status=checked["mask_status"].to_numpy())
    origin = sources.read_sources(root, list(test["path"]), list(test["true"]))
    table["source"] = table["path"].map(origin.of)

    paths = [str(root / p) for p in test["path"]]
    mask_paths = [str(root / m) for m in checked["mask"]]
    masked = np.flatnonzero(has_mask)
    majority = table.loc[masked, "true"].value_counts(normalize=True)
    regions = {}
    gradcam = GradCam(model)
    for region in masks.TEST_REGIONS:
        shown, lungs = [paths[i] for i in masked], [mask_paths[i] for i in masked]
        if region == "full" and input_region == "full":  # the test predictions themselves: no second pass
            probabilities = test.loc[masked, [f"p_{name}" for name in class_names]].to_numpy(np.float64)
        elif cached is not None and shown:
            probabilities = gradcam.head_probabilities(cached.regions(region, shown, lungs))
        else:
            probabilities = _predict(model, shown, lungs, image_size, region, batch_size, len(class_names))
        table.loc[masked, f"predicted_{region}"] = [class_names[c] for c in probabilities.argmax(axis=1)]
        if region == "no_lungs":  # kept: how confident the model is without the lungs (analysis/calibration.py)
            for i, name in enumerate(class_names):
                table.loc[masked, f"{NO_LUNGS_PREFIX}{name}"] = probabilities[:, i]
        correct = int((table.loc[masked, f"predicted_{region}"] == table.loc[masked, "true"]).sum())
        regions[region] = above_majority(correct, len(masked), float(majority.iloc[0]) if len(majority) else None)

    marker = _planted_marker(root, image_size)
    heatmaps = _known_heatmaps(gradcam, cached, test_cams)
    energy = _energies(gradcam, masked, [paths[i] for i in masked], [mask_paths[i] for i in masked], image_size,
                       input_region, batch_size, class_names, marker_box=None if marker is None else marker["box_mask"],
                       heatmaps=heatmaps)
    for column, values in energy.items():
        table.loc[masked, column] = values
    shortcuts = {
        "input_region": input_region,
        "test_images": int(len(test)),
        "images_with_mask": int(len(masked)),
        "mask_counts": masks.mask_counts(checked),
        "mask_problems": masks.mask_problems(checked),
        "regions": regions,
        "majority_rate": float(majority.iloc[0]) if len(majority) else None,
        "majority_class": str(majority.index[0]) if len(majority) else None,
        "gradcam": {"layer": gradcam.layer, "map_size": list(gradcam.map_size), **_energy_summary(table.loc[masked], class_names)},
    }
    if marker is not None:
        shortcuts["planted_marker"] = _marker_summary(table.loc[masked], marker)
    metrics = {"shortcuts": shortcuts, "sources": sources.summarise(test, origin)}
    panel = _panel(gradcam, test, paths, mask_paths, has_mask, class_names, image_size, input_region, title, heatmaps)
    return ShortcutAnalysis(metrics, table, panel)


Heatmaps = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # test row numbers -> (heatmaps, class of each)


def _known_heatmaps(gradcam: GradCam, cached: CachedInputs | None, test_cams) -> Heatmaps | None:
    """The test images' heatmaps without a pass over them, where Grad-CAM taps the backbone's output: those the
    predictions pass computed, or from the cached maps; None: only a pass through the backbone gives them."""
    if test_cams is not None:
        return lambda rows: (test_cams[0][rows], test_cams[1][rows])
    if cached is not None and gradcam.taps_backbone_output:
        def from_maps(rows):
            cams, probabilities = gradcam.cams_from_maps(cached.test[rows])
            return cams, probabilities.argmax(axis=1)
        return from_maps
    return None


def _images(paths, mask_paths, image_size, region, batch_size) -> tf.data.Dataset:
    return region_images(paths, image_size=image_size, region=region, mask_paths=mask_paths).batch(batch_size).prefetch(AUTOTUNE)


def _predict(model, paths, mask_paths, image_size, region, batch_size, num_classes) -> np.ndarray:
    """The class probabilities of the images shown as ``region``, one row per image."""
    if not paths:
        return np.zeros((0, num_classes), np.float64)
    return np.asarray(model.predict(_images(paths, mask_paths, image_size, region, batch_size), verbose=0), np.float64)


def _energies(gradcam: GradCam, rows: np.ndarray, paths, mask_paths, image_size, input_region, batch_size, class_names,
              marker_box, heatmaps: Heatmaps | None = None) -> dict[str, list]:
    """Per image (``rows``, test row numbers, with their ``paths`` and ``mask_paths``): the Grad-CAM class, the energy
    share inside the lungs, the lungs' share of the image, and the energy share inside the planted marker's box (demo
    only). The heatmaps are of the images the model was trained on (its input region): ``heatmaps``' when given."""
    out = {"gradcam_class": [], "energy_in_lungs": [], "lung_area": []}
    if marker_box is not None:
        out["energy_in_marker"] = []
    if not paths:
        return out
    lungs = tf.data.Dataset.from_tensor_slices(mask_paths).map(lambda m: load_mask(m, image_size), num_parallel_calls=AUTOTUNE)
    if heatmaps is not None:
        inputs = tf.data.Dataset.from_tensor_slices(np.asarray(rows))
        batch_size = max(batch_size, MAPS_BATCH)  # at most the head runs: larger batches, fewer eager calls
    else:
        inputs = region_images(paths, image_size=image_size, region=input_region, mask_paths=mask_paths)
    batches = tf.data.Dataset.zip((inputs, lungs)).batch(batch_size).prefetch(AUTOTUNE)
    for images, lung_masks in batches:
        cams, classes = _through_backbone(gradcam, images) if heatmaps is None else heatmaps(images.numpy())
        for cam, lung, chosen in zip(upsample(cams, image_size), lung_masks.numpy(), classes):
            out["gradcam_class"].append(class_names[chosen])
            out["energy_in_lungs"].append(energy_in_mask(cam, lung))
            out["lung_area"].append(float(lung.mean()))
            if marker_box is not None:
                out["energy_in_marker"].append(energy_in_mask(cam, marker_box))
    return out


def _through_backbone(gradcam: GradCam, images) -> tuple[np.ndarray, np.ndarray]:
    cams, probabilities = gradcam.cams(images)
    return cams, probabilities.argmax(axis=1)


def _energy_summary(table: pd.DataFrame, class_names: list[str]) -> dict:
    """Means overall and per true class; images whose map has no positive energy (a model whose score does not
    grow with any activation there) are counted, not averaged."""
    def means(rows: pd.DataFrame) -> dict:
        valid = rows.dropna(subset=["energy_in_lungs"])
        return {"images": int(len(valid)), "no_positive_energy": int(len(rows) - len(valid)),
                "energy_in_lungs": _number(valid["energy_in_lungs"].mean()), "lung_area": _number(rows["lung_area"].mean()),
                "ratio": _number((valid["energy_in_lungs"] / valid["lung_area"]).mean())}

    return {**means(table), "per_class": {name: means(table[table["true"] == name]) for name in class_names}}


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _planted_marker(root: Path, image_size: int) -> dict | None:
    """The demo set's planted shortcut (its demo.json says where and on which source), as a box mask."""
    try:
        planted = json.loads((root / DEMO_RECORD).read_text()).get("planted_shortcut")
    except (OSError, ValueError):
        return None
    if not planted:
        return None
    x0, y0, x1, y1 = (round(v * image_size) for v in planted["box"])
    box = np.zeros((image_size, image_size), bool)
    box[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)] = True
    return {**planted, "box_mask": box}


def _marker_summary(table: pd.DataFrame, marker: dict) -> dict:
    """The planted marker: Grad-CAM energy on its box, and accuracy of its class with and without it."""
    marked = table[table["source"] == marker["source"]]
    others = table[table["source"] != marker["source"]]
    same_class = others[others["true"] == marker["class"]]

    def accuracy(rows: pd.DataFrame, column: str) -> float | None:
        return _number((rows[column] == rows["true"]).mean()) if len(rows) else None

    return {
        "source": marker["source"], "class": marker["class"], "box": marker["box"],
        "box_area": float(marker["box_mask"].mean()),
        "images": int(len(marked)), "same_class_unmarked_images": int(len(same_class)),
        "energy_in_marker": _number(marked["energy_in_marker"].mean()),
        "energy_in_marker_other_sources": _number(others["energy_in_marker"].mean()),
        "accuracy_marked": accuracy(marked, "predicted_full"),
        "accuracy_same_class_unmarked": accuracy(same_class, "predicted_full"),
        "no_lungs_accuracy_marked": accuracy(marked, "predicted_no_lungs"),
        "no_lungs_accuracy_same_class_unmarked": accuracy(same_class, "predicted_no_lungs"),
        "blurred_lungs_accuracy_marked": accuracy(marked, "predicted_lungs_blurred"),
        "blurred_lungs_accuracy_same_class_unmarked": accuracy(same_class, "predicted_lungs_blurred"),
    }


def panel_examples(test: pd.DataFrame, class_names: list[str], per_class: int = PANEL_PER_CLASS) -> list[int]:
    """Row numbers of the panel's images: per class, up to half misclassified and the rest correct, drawn with a
    fixed seed from the test rows in path order, so the same run always shows the same images."""
    rng = np.random.default_rng(PANEL_SEED)
    chosen = []
    ordered = test.sort_values("path")
    for name in class_names:
        rows = ordered[ordered["true"] == name]
        wrong = rows.index[rows["predicted"] != name].to_numpy()
        right = rows.index[rows["predicted"] == name].to_numpy()
        take_wrong = rng.choice(wrong, min(len(wrong), per_class // 2), replace=False) if len(wrong) else []
        take_right = rng.choice(right, min(len(right), per_class - len(take_wrong)), replace=False) if len(right) else []
        chosen += sorted(take_wrong, key=lambda i: test.at[i, "path"]) + sorted(take_right, key=lambda i: test.at[i, "path"])
    return [int(i) for i in chosen]


def _panel(gradcam, test, paths, mask_paths, has_mask, class_names, image_size, input_region, title,
           heatmaps: Heatmaps | None = None) -> Figure:
    """The panel of ``panel_examples``, each image as the model saw it (its input region), with its heatmap
    (``heatmaps``', when given)."""
    chosen = panel_examples(test, class_names)
    if input_region != "full":  # a region run's test images all have masks; keep to those, to be safe
        chosen = [i for i in chosen if has_mask[i]]
    lung_files = [mask_paths[i] if has_mask[i] else None for i in chosen]
    images, cams = np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0, image_size, image_size))
    if chosen:
        shown = region_images([paths[i] for i in chosen], image_size=image_size, region=input_region,
                              mask_paths=lung_files if input_region != "full" else None)
        images = np.stack(list(shown.as_numpy_iterator()))
        cams = upsample((_through_backbone(gradcam, images) if heatmaps is None else heatmaps(np.asarray(chosen)))[0],
                        image_size)
    lungs = [None if m is None else load_mask(m, image_size).numpy() for m in lung_files]
    titles = []
    for i in chosen:
        row = test.loc[i]
        mark = "right" if row["true"] == row["predicted"] else "WRONG"
        titles.append(f"{row['true']}\n-> {row['predicted']} ({row[f'p_{row.predicted}']:.2f}, {mark})")
    return overlay_panel(images, cams, titles, lungs, PANEL_PER_CLASS,
                         f"{title}: Grad-CAM ({gradcam.layer}) for the predicted class; white: lung mask")
