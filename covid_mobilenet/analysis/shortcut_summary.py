"""The summary's part on what the models look at: the shortcut checks of every run, side by side.

Reads the ``shortcuts`` and ``sources`` records of each run's ``metrics.json`` (``run/shortcut_checks.py``):

- per configuration (mean over its seeds): test accuracy on the full images, with no lungs and
  with the lungs only, the majority-class rate, and the Grad-CAM energy inside the lungs;
- per class and image source: test accuracy of the baseline configuration;
- the training-time protocol (Sourget et al. 2024, ``run_all.py --regions``): the baseline trained on
  each input region and tested on every region, a 3x3 train-by-test accuracy matrix.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..common.files import save_figure, write_csv
from ..common.run_layout import region_experiment, seed_folder, seeds_in
from ..data.masks import REGION_LABELS, REGIONS, TEST_REGIONS
from ..data.sources import short_source
from . import uncertainty

SHORTCUTS_CSV = "shortcuts.csv"
SOURCES_CSV = "sources.csv"
REGIONS_CSV = "regions.csv"
REGIONS_GRAPH = "Trained_and_tested_on_each_region.png"
REGIONS_START = "<!-- regions:start -->"  # the README's section for the training-time protocol
REGIONS_END = "<!-- regions:end -->"

HOW_TO_READ_SHORTCUTS = (
    "How to read it: every column is measured on the test images that have a usable lung mask. \"No lungs\" blacks "
    "the lungs out, \"lungs only\" blacks out everything else, and the model is the one trained on full images. A model "
    "that reads the lungs should fall to about the majority rate with no lungs; one that stays far above it is reading "
    "something else (the source, text markers, the body's shape). The interval is Wilson's over the test images (one "
    "seed) or a t-interval over seeds; the p-value is a one-sided binomial test of the no-lungs accuracy against the "
    "majority rate (the largest over seeds), and * marks it below 0.05. \"Energy in lungs\" is the share of the Grad-CAM "
    "heatmap (for the predicted class) inside the lung mask, against the mask's share of the image; their ratio is 1.0 "
    "for a map spread evenly. Grad-CAM is coarse (7x7 at 224 pixels) and a heatmap is evidence, not proof; blacking out "
    "a region also makes images unlike any the model was trained on, which lowers accuracy by itself, and such a model "
    "often answers one class for every blacked-out image, which hides a marker outside the lungs. \"Lungs blurred\" "
    "replaces the lungs by a heavy blur of themselves instead (edge feathered): the image stays close to a training film "
    "while the lungs' detail is gone, so a model that reads a local marker keeps answering the marked source's class."
)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else None


def shortcut_table(collected: dict) -> pd.DataFrame:
    """One row per configuration: its seeds' mean accuracy on each region, majority rate and Grad-CAM energy."""
    rows = []
    for name, runs in collected.items():
        checks = [run.metrics["shortcuts"] for run in runs if run.status == "done" and run.metrics.get("shortcuts")]
        row = {"Model": name, "Seeds": len(checks), "No lungs CI low": None, "No lungs CI high": None,
               "Images with mask": checks[0]["images_with_mask"] if checks else None,
               "Test images": checks[0]["test_images"] if checks else None}
        for region in TEST_REGIONS:  # lungs_blurred: runs made before that check lack it
            row[f"Accuracy {REGION_LABELS[region]}"] = _mean([c["regions"][region]["accuracy"] for c in checks if region in c["regions"]])
        no_lungs = [c["regions"]["no_lungs"] for c in checks]
        if len(no_lungs) == 1:  # one seed: the interval over test images; several: the t-interval over seeds
            row["No lungs CI low"], row["No lungs CI high"] = no_lungs[0]["interval"]["low"], no_lungs[0]["interval"]["high"]
        elif no_lungs:
            interval = uncertainty.t_interval([r["accuracy"] for r in no_lungs])
            row["No lungs CI low"], row["No lungs CI high"] = max(interval["low"], 0.0), min(interval["high"], 1.0)
        # the largest over seeds: above the majority rate at every seed, or not shown
        row["No lungs above majority p"] = max((r["above_majority_p"] for r in no_lungs), default=None)
        row["Majority rate"] = _mean([c["majority_rate"] for c in checks])
        row["Energy in lungs"] = _mean([c["gradcam"]["energy_in_lungs"] for c in checks])
        row["Lung area"] = _mean([c["gradcam"]["lung_area"] for c in checks])
        row["Energy ratio"] = _mean([c["gradcam"]["ratio"] for c in checks])
        row["Grad-CAM layer"] = checks[0]["gradcam"]["layer"] if checks else None
        if any("planted_marker" in c for c in checks):
            row["Energy on marker"] = _mean([c["planted_marker"]["energy_in_marker"] for c in checks if "planted_marker" in c])
            row["Marker area"] = _mean([c["planted_marker"]["box_area"] for c in checks if "planted_marker" in c])
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{100 * value:.1f}%"


def shortcut_markdown(table: pd.DataFrame) -> str:
    marker = "Energy on marker" in table
    columns = ["Model", "Seeds", "Full images", "No lungs (95% CI)", "No lungs above majority: p", "Lungs blurred", "Lungs only",
               "Majority rate", "Energy in lungs (lung area)", "Ratio"]
    columns += ["Energy on planted marker (its area)"] if marker else []
    lines = ["| " + " | ".join(columns) + " |", "| :-- | " + " | ".join([":-:"] * (len(columns) - 1)) + " |"]
    for row in table.to_dict("records"):
        if not row["Seeds"]:
            lines.append(f"| {row['Model']} | 0 | " + " | ".join(["–"] * (len(columns) - 2)) + " |")
            continue
        no_lungs = _percent(row["Accuracy no lungs"]) + ("" if row.get("No lungs CI low") is None else
                                                         f" [{100 * row['No lungs CI low']:.1f}, {100 * row['No lungs CI high']:.1f}]")
        p_value = row.get("No lungs above majority p")
        cells = [row["Model"], str(row["Seeds"]), _percent(row["Accuracy full image"]), no_lungs,
                 "–" if p_value is None else f"{p_value:.3g}" + ("\\*" if p_value < 0.05 else ""),
                 _percent(row.get("Accuracy lungs blurred")), _percent(row["Accuracy lungs only"]), _percent(row["Majority rate"]),
                 f"{_percent(row['Energy in lungs'])} ({_percent(row['Lung area'])})",
                 "–" if row["Energy ratio"] is None else f"{row['Energy ratio']:.2f}"]
        if marker:
            cells.append(f"{_percent(row.get('Energy on marker'))} ({_percent(row.get('Marker area'))})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sources_table(collected: dict) -> pd.DataFrame:
    """One row per configuration, class and source: test images and accuracy (mean over seeds)."""
    rows = []
    for name, runs in collected.items():
        done = [run for run in runs if run.status == "done" and run.metrics.get("sources")]
        entries = pd.DataFrame([entry for run in done for entry in run.metrics["sources"]["by_class_and_source"]])
        if entries.empty:
            continue
        for (label, source), group in entries.groupby(["class", "source"], sort=True):
            rows.append({"Model": name, "Class": label, "Source": source, "Test images": int(group["images"].iloc[0]),
                         "Accuracy": float(group["accuracy"].mean()), "Seeds": len(group)})
    return pd.DataFrame(rows, columns=["Model", "Class", "Source", "Test images", "Accuracy", "Seeds"])


def sources_markdown(table: pd.DataFrame, model: str) -> str:
    rows = table[table["Model"] == model]
    lines = ["| Class | Source | Test images | Accuracy |", "| :-- | :-- | :-: | :-: |"]
    lines += [f"| {r['Class']} | {short_source(r['Source'])} | {r['Test images']} | {_percent(r['Accuracy'])} |"
              for r in rows.to_dict("records")]
    return "\n".join(lines)


def marker_lines(collected: dict, baseline: str) -> list[str]:
    """The demo's planted shortcut, as the baseline's runs see it (only when the data set declares one)."""
    markers = [run.metrics["shortcuts"]["planted_marker"] for run in collected.get(baseline, [])
               if run.status == "done" and "planted_marker" in run.metrics.get("shortcuts", {})]
    if not markers:
        return []
    first = markers[0]

    def mean(key: str) -> str:
        return _percent(_mean([m[key] for m in markers]))

    return [
        f"**The planted shortcut** (demo only): every image of `{first['source']}` carries a marker outside the lungs and is "
        f"{first['class']}. {baseline}, mean over {len(markers)} seed(s), on {first['images']} marked and "
        f"{first['same_class_unmarked_images']} unmarked {first['class']} test images: accuracy {mean('accuracy_marked')} on the "
        f"marked against {mean('accuracy_same_class_unmarked')} on the unmarked; with no lungs, {mean('no_lungs_accuracy_marked')} "
        f"of the marked are still called {first['class']}, against {mean('no_lungs_accuracy_same_class_unmarked')} of the "
        f"unmarked" + (f"; with the lungs blurred, {mean('blurred_lungs_accuracy_marked')} of the marked against "
                       f"{mean('blurred_lungs_accuracy_same_class_unmarked')} of the unmarked"
                       if all("blurred_lungs_accuracy_marked" in m for m in markers) else "")
        + f". Grad-CAM puts {mean('energy_in_marker')} of its energy on the marker's box, which covers "
        f"{_percent(first['box_area'])} of the image ({mean('energy_in_marker_other_sources')} on the same box in the other "
        "sources' images).", "",
    ]


def source_problems(collected: dict) -> list[str]:
    """What the metadata spreadsheets could not tell (the same for every run of the same data: listed once)."""
    seen = []
    for runs in collected.values():
        for run in runs:
            for problem in (run.metrics or {}).get("sources", {}).get("problems", []) if run.status == "done" else []:
                if problem not in seen:
                    seen.append(problem)
    return seen


def region_runs(results_dir: str | os.PathLike, baseline: str, seeds: list[int] | None, read_result) -> dict:
    """The runs of the training-time protocol: for each region, the baseline trained on it (one per seed)."""
    runs = {}
    for region in REGIONS:
        folder = Path(results_dir) / region_experiment(baseline, region)
        found = seeds if seeds is not None else seeds_in(folder)
        results = [read_result(folder / seed_folder(seed)) for seed in found]
        runs[region] = [r for r in results if r.status == "done"
                        and r.metrics.get("params", {}).get("input_region", "full") == region and r.metrics.get("shortcuts")]
    return runs


def region_matrix(runs: dict) -> pd.DataFrame:
    """Rows: the region trained on; columns: the region tested on; mean test accuracy over seeds (NaN: not run)."""
    matrix = pd.DataFrame(np.nan, index=[REGION_LABELS[r] for r in REGIONS], columns=[REGION_LABELS[r] for r in REGIONS])
    for trained, done in runs.items():
        for tested in REGIONS:
            value = _mean([run.metrics["shortcuts"]["regions"][tested]["accuracy"] for run in done])
            matrix.loc[REGION_LABELS[trained], REGION_LABELS[tested]] = np.nan if value is None else value
    matrix.index.name = "trained on"
    return matrix


def region_markdown(matrix: pd.DataFrame, runs: dict) -> str:
    lines = ["| trained on \\ tested on | " + " | ".join(matrix.columns) + " | seeds |", "| :-- | " + " | ".join([":-:"] * (len(matrix.columns) + 1)) + " |"]
    for (label, row), region in zip(matrix.iterrows(), REGIONS):
        cells = [_percent(None if np.isnan(v) else v) for v in row]
        lines.append(f"| **{label}** | " + " | ".join(cells) + f" | {len(runs[region])} |")
    return "\n".join(lines)


def region_figure(matrix: pd.DataFrame, title: str, majority: float | None) -> Figure:
    figure = Figure(figsize=(5.8, 4.6))
    axes = figure.subplots()
    values = matrix.to_numpy(dtype=float) * 100
    image = axes.imshow(np.nan_to_num(values, nan=0.0), cmap="viridis", vmin=0, vmax=100)
    figure.colorbar(image, ax=axes, label="test accuracy (%)")
    axes.set_xticks(range(len(matrix.columns)), matrix.columns)
    axes.set_yticks(range(len(matrix.index)), matrix.index)
    axes.set(xlabel="tested on", ylabel="trained on",
             title=title + ("" if majority is None else f"\n(majority rate {100 * majority:.1f}%)"))
    for (i, j), value in np.ndenumerate(values):
        axes.text(j, i, "not run" if np.isnan(value) else f"{value:.1f}", ha="center", va="center",
                  color="black" if not np.isnan(value) and value > 60 else "white")
    return figure


def write_shortcut_summary(results_dir: Path, graph_dir: Path, collected: dict, baseline: str, *, seeds, read_result,
                           title: str) -> tuple[list[str], list[str], dict[str, Path]]:
    """The summary's lines on shortcuts, the README's region section, and the files written."""
    table = shortcut_table(collected)
    by_source = sources_table(collected)
    paths = {"shortcuts": write_csv(results_dir / SHORTCUTS_CSV, table), "sources": write_csv(results_dir / SOURCES_CSV, by_source)}
    lines = []
    if table["Seeds"].fillna(0).sum():
        lines += ["### What the models look at", "", shortcut_markdown(table), "", HOW_TO_READ_SHORTCUTS, ""]
    if (by_source["Model"] == baseline).any():
        lines += [f"Test accuracy of {baseline} per class and image source (from the data set's `<Class>.metadata.xlsx`; "
                  "where the sources are tied to the classes, a model can score by recognising the source):", "",
                  sources_markdown(by_source, baseline), ""]
    lines += marker_lines(collected, baseline)
    problems = source_problems(collected)
    if problems:
        lines += ["Image sources not known: " + "; ".join(problems) + ".", ""]
    runs = region_runs(results_dir, baseline, seeds, read_result)
    matrix = region_matrix(runs)
    majority = _mean([run.metrics["shortcuts"]["majority_rate"] for done in runs.values() for run in done])
    region_lines = []
    if any(runs[r] for r in REGIONS if r != "full"):
        paths["regions"] = write_csv(results_dir / REGIONS_CSV, matrix.reset_index())
        paths["regions_graph"] = save_figure(region_figure(matrix, f"{title}: {baseline}", majority), graph_dir / REGIONS_GRAPH)
        region_lines = [
            f"{baseline} trained on each input region (`run_all.py --regions`, the protocol of Sourget et al. 2024) and tested "
            "on every region; mean test accuracy over seeds, on the test images with a usable lung mask"
            + ("" if majority is None else f"; the majority rate is {_percent(majority)}") + ".", "",
            region_markdown(matrix, runs), "",
            "How to read it: a model trained and tested with no lungs that stays far above the majority rate has found "
            "the class outside the lungs, so the labels can be predicted without looking at the lungs. The diagonal is each "
            "model on the images it was trained on; off the diagonal, images unlike its training images.", "",
        ]
        lines += ["### Trained on each region", "", *region_lines]
    return lines, region_lines, paths
