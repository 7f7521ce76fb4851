"""The summary's part on the data set itself: near-duplicates and label conflicts, the source probe, what the
baseline loses on a source it never saw (``run_all.py --holdout-sources``), and the CLAIM checklist.

Reads run files only: each run's ``dataset.duplicates`` and ``dataset.holdout_source``, ``audit-<data hash>.json``
(``run/audit.py``) and ``holdout-sources.json`` (the plan ``run_all.py`` wrote). Free of TensorFlow.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..common.files import file_sha256, save_figure, write_csv
from ..common.paths import resolve_path
from ..common.run_layout import HOLDOUT_PLAN_FILE, METRICS_FILE
from ..data.sources import short_source
from .source_probe import POOLINGS, probe_lines, which_found
from .uncertainty import wilson_interval

HOLDOUT_CSV = "holdout_sources.csv"
HOLDOUT_GRAPH = "Held_out_sources.png"
HOLDOUT_START = "<!-- holdout:start -->"  # the README's section, filled from real runs only
HOLDOUT_END = "<!-- holdout:end -->"
HOW_TO_READ_HOLDOUT = (
    "How to read it: each row is the baseline trained without one source's images of one class, then tested on all of "
    "them (\"held out\") and on the same class's test images from its other sources (\"seen sources\"), both with Wilson "
    "95% intervals. A model that learned the disease should do about as well on the held-out source; a large drop means "
    "it leaned on what that collection looks like. A class with a single source cannot be tested this way: inside this "
    "data set nothing separates its label from its source.")


AUDIT_VERSION = 1  # raised when the audit computes something else: every record of an older one is made again


def audit_inputs(metrics: dict) -> dict | None:
    """What a finished run's audit depends on: the images, the split, the image size and the backbone's weights (and
    the audit's own version); None for a run that does not record them."""
    params, dataset = metrics["params"], metrics["dataset"]
    data = (dataset.get("duplicates") or {}).get("data_sha256")
    if not data or "split_sha256" not in dataset:
        return None
    weights = params["weights"]
    if weights is None:
        weights_id = f"random{params['seed']}"
    elif weights == "imagenet":
        weights_id = "imagenet"
    else:
        try:
            weights_id = "file " + file_sha256(resolve_path(weights))
        except OSError:
            return None
    return {"version": AUDIT_VERSION, "data_sha256": data, "split_sha256": dataset["split_sha256"],
            "image_size": params["image_size"], "weights": weights_id}


def current_audit(run: Path, results_dir: Path) -> Path | None:
    """The audit record in ``results_dir`` made from the same inputs as ``run``'s, if there is one: a sweep whose data,
    split and backbone did not change need not audit them again."""
    try:
        inputs = audit_inputs(json.loads((Path(run) / METRICS_FILE).read_text()))
        if inputs is None:
            return None
        path = Path(results_dir) / f"audit-{inputs['data_sha256'][:12]}.json"
        return path if json.loads(path.read_text()).get("inputs") == inputs else None
    except (OSError, ValueError, KeyError):
        return None


def _first_done(collected: dict):
    return next((run for runs in collected.values() for run in runs if run.status == "done"), None)


def duplicates_lines(collected: dict) -> list[str]:
    """The near-duplicate counts of the runs' data (one line)."""
    run = _first_done(collected)
    record = (run.metrics.get("dataset", {}).get("duplicates") if run else None)
    if not record:
        return []
    crossed = record.get("would_have_crossed_splits")
    thresholds = record["thresholds"]
    return [
        f"**Near-duplicates** (`{record['file']}`): {record['groups']} groups of {record['images']} images (exact copies and "
        f"re-encoded, resized, brightened, cropped or noisy ones: pHash within {thresholds['hash_distance_bits']} bits, "
        f"confirmed by thumbnails correlating at {thresholds['pixel_similarity']:g} or more), {record['groups_with_near_copies']} "
        f"of them with a copy that is not byte-identical; each group sits in one split"
        + ("" if crossed is None else f" (grouping by file content alone would have cut {crossed} across splits)")
        + f". {record['groups_across_classes']} group(s) across classes (label conflicts, {record['images_in_conflicts']} images): "
        + ("left out of training and testing." if record["conflicts_left_out"] else "kept (keep_label_conflicts=True)."),
    ]


def read_audit(results_dir: Path, collected: dict) -> dict | None:
    """The audit of the runs' data (``audit-<data hash>.json``, the hash as in their duplicates file), if made."""
    run = _first_done(collected)
    record = (run.metrics.get("dataset", {}).get("duplicates") if run else None) or {}
    name = (f"audit-{record['data_sha256'][:12]}.json" if "data_sha256" in record else  # older runs: the file's hash
            record.get("file", "").replace("duplicates-", "audit-").replace(".csv", ".json"))
    path = Path(results_dir) / name
    return json.loads(path.read_text()) if name and path.is_file() else None


def holdout_table(results_dir: Path, baseline: str, read_result) -> pd.DataFrame:
    """One row per held-out (class, source) and seed: accuracy on the held-out images and on the class's other
    sources' test images, each with its Wilson interval."""
    rows = []
    for folder in sorted(Path(results_dir).glob(f"{baseline}-holdout-*/seed-*")):
        run = read_result(folder)
        held = (run.metrics or {}).get("dataset", {}).get("holdout_source") if run.status == "done" else None
        if not held:
            continue
        entries = run.metrics.get("sources", {}).get("by_class_and_source", [])
        same = [e for e in entries if e["class"] == held["class"] and e["source"] == held["source"]]
        others = [e for e in entries if e["class"] == held["class"] and e["source"] != held["source"]]
        out_n, out_right = sum(e["images"] for e in same), sum(e["correct"] for e in same)
        in_n, in_right = sum(e["images"] for e in others), sum(e["correct"] for e in others)
        nothing = {"low": None, "high": None}
        out_ci = wilson_interval(out_right, out_n) if out_n else nothing
        in_ci = wilson_interval(in_right, in_n) if in_n else nothing
        rows.append({"Class": held["class"], "Source": held["source"], "Seed": run.seed, "Held-out images": out_n,
                     "Held-out accuracy": out_right / out_n if out_n else None, "Held-out low": out_ci["low"],
                     "Held-out high": out_ci["high"], "Seen-source test images": in_n,
                     "Seen-source accuracy": in_right / in_n if in_n else None, "Seen-source low": in_ci["low"],
                     "Seen-source high": in_ci["high"], "Run": str(folder)})
    return pd.DataFrame(rows)


def holdout_figure(table: pd.DataFrame, title: str) -> Figure:
    figure = Figure(figsize=(8, 0.55 * len(table) + 1.5))
    ax = figure.subplots()
    labels = [f"{r['Class']} / {short_source(r['Source'], 32)}" for r in table.to_dict("records")]
    y = np.arange(len(table))
    for offset, kind, color in ((-0.18, "Held-out", "tab:red"), (0.18, "Seen-source", "tab:blue")):
        values = table[f"{kind} accuracy"].astype(float).fillna(0)
        errors = [(values - table[f"{kind} low"].astype(float)).fillna(0).clip(lower=0),
                  (table[f"{kind} high"].astype(float) - values).fillna(0).clip(lower=0)]
        ax.barh(y + offset, values, height=0.34, color=color, xerr=errors, capsize=3,
                label="held-out source" if kind == "Held-out" else "the class's other sources (test split)")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (95% Wilson interval)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{title}: the baseline on a source it never saw", fontsize=10)
    figure.tight_layout()
    return figure


def holdout_lines(table: pd.DataFrame, plan: dict | None) -> list[str]:
    lines = []
    if not table.empty:
        lines += ["| Class | Held-out source | Seed | Held out: accuracy [95% CI] (images) | Seen sources: accuracy [95% CI] (images) |",
                  "| :-- | :-- | :-: | :-: | :-: |"]
        for r in table.to_dict("records"):
            cells = []
            for kind in ("Held-out", "Seen-source"):
                images = r["Held-out images" if kind == "Held-out" else "Seen-source test images"]
                value = r[f"{kind} accuracy"]
                cells.append("–" if value is None or not images or pd.isna(value) else
                             f"{100 * value:.1f}% [{100 * r[f'{kind} low']:.1f}, {100 * r[f'{kind} high']:.1f}] ({images})")
            lines.append(f"| {r['Class']} | {short_source(r['Source'])} | {r['Seed']} | {cells[0]} | {cells[1]} |")
    for item in (plan or {}).get("untestable", []):
        lines.append(f"\n{item['class']} is not testable ({', '.join(map(short_source, item['sources']))}): {item['reason']}.")
    if lines and (plan or {}).get("copies"):
        lines += ["", f"Near-duplicates: {plan['copies']}."]
    return lines + (["", HOW_TO_READ_HOLDOUT] if lines else [])


def write_holdout(results_dir: Path, graph_dir: Path, baseline: str, read_result, title: str) -> tuple[list[str], dict]:
    """The held-out-source table (CSV, figure, Markdown lines), when the results folder has such runs."""
    table = holdout_table(results_dir, baseline, read_result)
    plan_file = Path(results_dir) / HOLDOUT_PLAN_FILE
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    if table.empty and plan is None:
        return [], {}
    paths = {"holdout": write_csv(Path(results_dir) / HOLDOUT_CSV, table)}
    if not table.empty:
        paths["holdout_graph"] = save_figure(holdout_figure(table, title), Path(graph_dir) / HOLDOUT_GRAPH)
    return holdout_lines(table, plan), paths


def probe_section(audit: dict | None) -> list[str]:
    if not audit:
        return []
    features, probe = audit["features"], audit["source_probe"]
    lines = [f"**Can the images tell their source?** A logistic regression on the frozen backbone's features "
             f"({features['image_size']} px, {features['pooled']}), per class, cross-validated:", ""]
    if set(probe) != set(POOLINGS):  # an audit made before the maximum was probed
        return lines + probe_lines(probe)
    for pooling, words in POOLINGS.items():
        lines += [f"Features {words}:", "", *probe_lines(probe[pooling]), ""]
    if features.get("positions") == 1:
        return lines + [f"At {features['image_size']} px the maps have a single position, so the two poolings are the same "
                        "features: a local mark can only be told apart from the whole image at 64 px (2 x 2 positions) and "
                        "above, 7 x 7 at the study's 224 px."]
    return lines + ["Which found what:", "", *which_found(probe)]
