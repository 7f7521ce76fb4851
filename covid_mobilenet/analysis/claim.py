"""The CLAIM checklist (Mongan, Moy & Kahn, Radiology: Artificial Intelligence 2020), filled from the run files:
for each item that applies to this project, done, not done, or not possible with this data, and where it shows.

Only what the files show counts as done; what the data set cannot give (patient identifiers, a reference standard
per image, an external test set) is said to be not possible, never left out. Free of TensorFlow.
"""
from __future__ import annotations

DONE, NOT_DONE, IMPOSSIBLE, PARTLY = "done", "not done", "not possible with this data", "partly"


def claim_checklist(collected: dict, audit: dict | None, holdout_rows: int, *, demo: bool) -> list[dict]:
    """One row per item: number and topic (CLAIM's), status, and the file or section that shows it."""
    done = [run for runs in collected.values() for run in runs if run.status == "done"]
    metrics = [run.metrics for run in done]
    dataset = metrics[0].get("dataset", {}) if metrics else {}
    duplicates = dataset.get("duplicates")
    calibrated = sum(bool(m.get("calibration")) for m in metrics)
    checked = sum(bool(m.get("shortcuts")) for m in metrics)
    seeds = {run.seed for run in done}

    def row(number, topic, status, where):
        return {"item": number, "topic": topic, "status": status, "where": where}

    return [
        row("7", "Data sources", DONE if audit else PARTLY,
            ("the synthetic demo set" if demo else "the COVID-19 Radiography Database (Kaggle)") + "; sources per class in "
            + (f"audit-{audit['data_sha256'][:12]}.json" if audit else "metrics.json `sources` (test images only)")),
        row("8", "Eligibility: inclusion and exclusion", DONE if metrics else NOT_DONE,
            "every image decoded before training; unusable files skipped and listed (metrics.json `dataset.skipped`)"
            + ("; label conflicts left out" if duplicates and duplicates["conflicts_left_out"] else "")),
        row("9", "Data preprocessing", DONE, "decoded and resized as `data/pipeline.py` load_image; scaling inside the model "
            "(model card: Input)"),
        row("14", "Ground truth: reference standard", IMPOSSIBLE,
            "the label is the class folder of the release; how each image's label was established (RT-PCR, a reader) is "
            "not given per image"),
        row("21", "Data partitions and their disjointness", PARTLY if metrics else NOT_DONE,
            (f"split `{dataset.get('split_file')}` (stratified, seeded, hashed); disjoint at the image level with near-duplicate "
             "groups kept whole; not at the patient level: the data set has no patient identifiers") if metrics else "no run"),
        row("21a", "Near-duplicates across partitions", DONE if duplicates else NOT_DONE,
            f"`{duplicates['file']}`: {duplicates['groups']} groups, {duplicates['groups_across_classes']} across classes"
            if duplicates else "runs made before near-duplicates were grouped"),
        row("22-24", "Model and training details", DONE if metrics else NOT_DONE,
            "metrics.json `params`, `model`, `runtime`; history.csv; the model card"),
        row("26", "Model selection", DONE, "the seven configurations are the study's; the run that predict, the app and "
            "the export serve is chosen on validation accuracy, and its test accuracy reported (test images choose nothing); "
            "the summary's comparisons across configurations come with paired tests and intervals"),
        row("28-29", "Performance metrics and their uncertainty", DONE if metrics else NOT_DONE,
            f"test metrics with 95% intervals; {len(seeds)} training seed(s), paired tests against the baseline (summary)"),
        row("30", "Robustness: shortcut checks", DONE if checked else NOT_DONE,
            f"{checked} run(s) tested with the lungs blacked out, blurred and alone, Grad-CAM, accuracy per source"
            + ("; the source probe" if audit else "") + (f"; {holdout_rows} held-out source run(s)" if holdout_rows else "")),
        row("31", "Calibration", DONE if calibrated else NOT_DONE, f"{calibrated} run(s): temperature scaling, ECE with "
            "intervals, operating points, abstaining (metrics.json `calibration`)"),
        row("32", "External testing", IMPOSSIBLE,
            "every test image comes from the collections the model trained on; leaving one source out "
            "(`run_all.py --holdout-sources`) is the nearest this data allows" + ("" if holdout_rows else " (not run)")),
        row("37", "Failure analysis", DONE if metrics else NOT_DONE,
            "confusion matrix and misclassified examples with Grad-CAM per run; accuracy per class and source"),
        row("41-42", "Code, model and intended use", DONE,
            "this repository; each run's model.keras, LiteRT exports and model card; not for clinical use (stated)"),
    ]


def claim_markdown(rows: list[dict]) -> list[str]:
    lines = ["**Reporting checklist (CLAIM 2020)**, filled from the run files:", "",
             "| CLAIM item | Topic | Status | Where it shows |", "| :-: | :-- | :-- | :-- |"]
    lines += [f"| {r['item']} | {r['topic']} | {r['status']} | {r['where']} |" for r in rows]
    return lines
