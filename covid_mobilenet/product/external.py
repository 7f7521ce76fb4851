"""A trained run evaluated on another collection: what survives outside its own split.

    python -m covid_mobilenet.evaluate --run results/<experiment>/seed-<seed> --data-dir DIR [--name NAME]
                                       [--labels CSV] [--class-map FROM=TO ...]

The collection (``data/external.py``) is read as ``predict`` reads images (DICOM rendered, the same decoding), and
every image gets ``predict``'s row: the run's calibrated probabilities, its answer, its operating points and its
unfamiliar-image guard, all chosen on the run's own validation split and never refitted here. So the figures say
whether what the run promised on its internal test split holds on this collection. Written to
``<run>/external/<name>/``: ``metrics.json``, ``predictions.csv``, ``reliability.png`` and ``overlap.csv`` (the
collection's near-copies of the run's own images, with their split; the figures are given with and without them).

A class the run does not know is listed with what the model called its images, and left out of every figure.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis.calibration import CALIBRATED_PREFIX, scores_with_intervals, temperature_scale
from ..analysis.calibration_report import reliability_figure
from ..analysis.decisions import decision_figures
from ..analysis.metrics import classification_report
from ..analysis.uncertainty import single_run_intervals, wilson_interval
from ..analysis.uncertainty import above_majority
from ..common.files import file_sha256, save_figure, write_csv, write_json
from ..common.paths import resolve_path
from ..common.run_layout import METRICS_FILE, MODEL_FILE, external_dir, split_file_name
from ..data.external import Collection, collection_sha256, overlap
from ..data.masks import USABLE, check_mask
from .inputs import decode
from .predict import PredictError, load_trained, prediction_table

SHORTCUT_REGIONS = ("no_lungs", "lungs_blurred", "lungs")  # beside the full images, on those with a usable mask


def evaluate_run(run: Path, collection: Collection, name: str, *, batch_size: int = 32,
                 collection_hash: str | None = None) -> dict:
    """The run's figures on the collection, written to ``<run>/external/<name>/``; metrics.json's record."""
    started = time.perf_counter()
    run = Path(run)
    if not (run / METRICS_FILE).is_file():
        raise PredictError(f"--run {run}: no {METRICS_FILE}; name a finished run's folder, results/<experiment>/seed-<seed>")
    metrics = json.loads((run / METRICS_FILE).read_text())
    trained = load_trained(run)
    names = trained.class_names
    images = collection.images
    decoded = decode([Path(p) for p in images["path"]], trained.image_size)
    raw, unfamiliarity = trained.outputs(decoded.pixels, batch_size)
    threshold = None if trained.guard is None else trained.guard.threshold
    table = prediction_table(decoded.paths, raw, names, trained.calibration, raw=True, unfamiliarity=unfamiliarity,
                             guard_threshold=threshold, films=decoded.films)
    rows = images.set_index("path").loc[[str(p) for p in decoded.paths]]
    table.insert(1, "true", rows["label"].to_numpy())
    table.insert(2, "source", rows["source"].to_numpy())
    calibrated = temperature_scale(raw, trained.calibration["temperature"]) if trained.calibration else raw
    for c, class_name in enumerate(names):
        table[f"{CALIBRATED_PREFIX}p_{class_name}"] = calibrated[:, c]
    dataset = metrics["dataset"]
    split = pd.read_csv(run.parent.parent / split_file_name(dataset["split_sha256"]))  # results/<experiment>/seed-<n>
    copies = overlap(Path(dataset["root"]), split, [Path(p) for p in table["path"]],
                     resolve_path(metrics["params"]["feature_dir"]))  # the run's own fingerprint cache
    table["overlaps_run"] = table["path"].isin(set(copies["external"]))

    known = table["true"].isin(names).to_numpy()
    mask_of = rows["mask"].to_numpy()
    shortcuts = region_checks(trained, decoded.pixels, table, mask_of, known, batch_size)
    record = {"name": name, "run": str(run), "experiment": metrics["experiment"], "seed": metrics["params"]["seed"],
              "collection": str(collection.root), "collection_sha256": collection_hash or collection_sha256(collection),
              "model_sha256": file_sha256(run / MODEL_FILE), "images": int(len(images)), "read": int(len(table)),
              "left_out": [{"path": p, "why": w} for p, w in [*collection.left_out, *decoded.failed]],
              "unknown_classes": unknown_classes(table[~known]),
              "class_map": {g: l for g, l in zip(images["given_label"], images["label"]) if g != l},
              "all": figures(table[known], raw[known], calibrated[known], names, trained),
              "overlap": {"pairs": int(len(copies)), "external_images": int(table["overlaps_run"].sum()),
                          "by_split": {s: int(n) for s, n in copies.groupby("split")["external"].nunique().items()}},
              "internal_test": {"accuracy": metrics["test"]["accuracy"],
                                "interval": metrics["test"].get("intervals", {}).get("accuracy")}}
    if shortcuts is not None:
        record["all"]["shortcuts"] = shortcuts
    clean = known & ~table["overlaps_run"].to_numpy()
    record["without_overlap"] = figures(table[clean], raw[clean], calibrated[clean], names, trained) \
        if record["overlap"]["external_images"] else "no image of the collection overlaps the run's data set"
    record["seconds"] = time.perf_counter() - started
    folder = external_dir(run, name)
    write_csv(folder / "overlap.csv", copies)
    write_csv(folder / "predictions.csv", table)
    if known.any():
        save_figure(reliability_figure(table[known].assign(split="test"), names, f"{name}: {metrics['experiment']} "
                                       f"(seed {metrics['params']['seed']})"), folder / "reliability.png")
    write_json(folder / METRICS_FILE, record)  # last: its presence means the evaluation finished
    return record


def region_checks(trained, pixels: np.ndarray, table: pd.DataFrame, mask_of: np.ndarray, known: np.ndarray,
                  batch_size: int) -> dict | None:
    """The run's shortcut checks on the collection's images of known classes that have a usable lung mask: accuracy
    with the lungs blacked out, blurred and kept alone beside the full images and the majority-class rate (see
    run/shortcut_checks.py); each image's answer per region goes into ``table`` (``predicted_<region>``). None
    without masks."""
    import tensorflow as tf

    from ..data.pipeline import AUTOTUNE, apply_region, load_mask

    has_mask = np.array([isinstance(m, str) and check_mask(Path(m)) in USABLE for m in mask_of]) & known
    masked = np.flatnonzero(has_mask)
    if not len(masked):
        return None
    names, size = trained.class_names, trained.image_size
    truth = table["true"].to_numpy()[masked]
    majority = pd.Series(truth).value_counts(normalize=True)
    pairs = tf.data.Dataset.from_tensor_slices((pixels[masked], [str(mask_of[i]) for i in masked]))
    regions = {"full": above_majority(int((table["predicted"].to_numpy()[masked] == truth).sum()), len(masked),
                                      float(majority.iloc[0]))}
    for region in SHORTCUT_REGIONS:
        shown = pairs.map(lambda image, mask, region=region: apply_region(image, load_mask(mask, size), region),
                          num_parallel_calls=AUTOTUNE).batch(batch_size)
        probabilities = np.asarray(trained.model.predict(shown, verbose=0), np.float64)
        predicted = np.array(names)[probabilities.argmax(axis=1)]
        table.loc[table.index[masked], f"predicted_{region}"] = predicted
        regions[region] = above_majority(int((predicted == truth).sum()), len(masked), float(majority.iloc[0]))
    return {"images_with_mask": int(len(masked)), "majority_class": str(majority.index[0]),
            "majority_rate": float(majority.iloc[0]), "regions": regions}


def unknown_classes(rows: pd.DataFrame) -> dict:
    """Each class the run does not know: its images and what the model called them."""
    return {label: {"images": int(len(group)), "predicted": group["predicted"].value_counts().to_dict()}
            for label, group in rows.groupby("true")}


def figures(rows: pd.DataFrame, raw: np.ndarray, calibrated: np.ndarray, names: list[str], trained) -> dict:
    """Accuracy, balanced accuracy and macro F1 with intervals, the confusion matrix, the run's operating points and
    abstain threshold as they hold here, calibration scores with the run's temperature, unfamiliar share, per source."""
    if not len(rows):
        return {"images": 0, "note": "no image of a class the run knows"}
    labels = np.array([names.index(label) for label in rows["true"]])
    report = classification_report(labels, raw, names)
    result = {"images": int(len(rows)), "accuracy": report["accuracy"], "balanced_accuracy": report["balanced_accuracy"],
              "macro_f1": report["macro_f1"], "intervals": single_run_intervals(labels, raw.argmax(axis=1), len(names)),
              "per_class": report["per_class"], "confusion_matrix": report["confusion_matrix"],
              "confusion_matrix_rows": report["confusion_matrix_rows"]}
    calibration = trained.calibration
    if calibration:
        result["calibration"] = scores_with_intervals(labels, raw, calibrated)
        result["operating_points"] = {
            name: {"threshold": point["target_sensitivity"]["threshold"], "target": point["target_sensitivity"]["target"],
                   **decision_figures(labels == names.index(name),
                                      calibrated[:, names.index(name)] >= point["target_sensitivity"]["threshold"])}
            for name, point in calibration["operating_points"].items() if "target_sensitivity" in point}
        abstain = calibration["abstain"]
        if abstain["reached"]:
            answered = calibrated.max(axis=1) >= abstain["threshold"]
            right = int((calibrated.argmax(axis=1) == labels)[answered].sum())
            result["abstain"] = {"threshold": abstain["threshold"], "coverage": float(answered.mean()),
                                 "internal_test_coverage": abstain["test_coverage"],
                                 "accuracy": right / int(answered.sum()) if answered.any() else None,
                                 "interval": wilson_interval(right, int(answered.sum())) if answered.any() else None}
    if "unfamiliar" in rows:
        flagged = int((rows["unfamiliar"] == "yes").sum())
        result["unfamiliar"] = {"images": flagged, "share": flagged / len(rows), **wilson_interval(flagged, len(rows))}
    correct = raw.argmax(axis=1) == labels
    result["by_source"] = [{"source": source, "images": int(len(at)), "accuracy": float(correct[at].mean()),
                            **wilson_interval(int(correct[at].sum()), len(at))}
                           for source, at in ((s, np.flatnonzero(rows["source"].to_numpy() == s))
                                              for s in sorted(rows["source"].unique()))]
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from ..data.external import ExternalError, check_name, parse_class_map, read_collection

    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, action="append",
                        help="a finished run's folder, results/<experiment>/seed-<seed> (repeatable: each is evaluated)")
    parser.add_argument("--data-dir", type=Path, required=True, help="the other collection: one folder per class "
                                                                     "(<Class>/images/ or <Class>/), or with --labels")
    parser.add_argument("--name", help="the evaluation's folder name under <run>/external/ (default: the folder's name)")
    parser.add_argument("--labels", type=Path, help="a CSV of path,label[,source][,mask], paths relative to --data-dir")
    parser.add_argument("--class-map", action="append", metavar="FROM=TO", help="rename a class of the collection to "
                                                                               "the run's (repeatable)")
    args = parser.parse_args(argv)
    try:
        collection = read_collection(args.data_dir, args.labels, parse_class_map(args.class_map))
        name = args.name or Path(args.data_dir).resolve().name
        check_name(name)
        missing = [str(run) for run in args.run if not (Path(run) / METRICS_FILE).is_file()]
        if missing:
            raise ExternalError(f"--run {', '.join(missing)}: no {METRICS_FILE}; name a finished run's folder, "
                                "results/<experiment>/seed-<seed>")
    except ExternalError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2
    for item in collection.left_out:
        print(f"left out {item[0]}: {item[1]}", file=sys.stderr)
    digest, failed = collection_sha256(collection), 0
    for run in args.run:
        try:
            record = evaluate_run(run, collection, name, collection_hash=digest)
        except (ExternalError, PredictError, OSError, ValueError) as exc:  # one run's trouble does not stop the others
            print(f"evaluate: {run}: {exc}", file=sys.stderr)
            failed += 1
            continue
        for item in record["left_out"][len(collection.left_out):]:
            print(f"left out {item['path']}: {item['why']}", file=sys.stderr)
        print(f"{run}: {summary_line(record)}")
        print(f"wrote {external_dir(run, name)}", file=sys.stderr)
    return 1 if failed else 0


def summary_line(record: dict) -> str:
    """The evaluation in one line: accuracy here against the run's internal test accuracy, overlap, unfamiliar share."""
    every = record["all"]
    if not every.get("images"):
        return f"{record['name']}: no image of a class the run knows ({record['read']} read)"
    interval = every["intervals"]["accuracy"]
    line = (f"{record['name']}: accuracy {every['accuracy']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}] on "
            f"{every['images']} images of known classes, against {record['internal_test']['accuracy']:.3f} on the run's "
            f"own test split")
    if "unfamiliar" in every:
        line += f"; {100 * every['unfamiliar']['share']:.0f}% flagged unfamiliar"
    return line + f"; {record['overlap']['external_images']} image(s) overlap the run's data set"
