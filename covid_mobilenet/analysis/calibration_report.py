"""A run's calibration said in words and drawn: the lines the notebook, the summary and the model card print,
the reliability figure and the risk-coverage figure. Reads the ``calibration`` record of ``metrics.json`` and the
calibrated columns of ``predictions.csv`` (``analysis/calibration.py``). Free of TensorFlow."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve

from .calibration import CALIBRATED_PREFIX, ECE_BINS, reliability
from .decisions import risk_coverage
from .metrics import labels_and_probabilities
from .uncertainty import t_interval


def _interval(figure: dict) -> str:
    return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"


def _percent(proportion: dict) -> str:
    if proportion.get("value") is None:
        return "n/a (no images)"
    return f"{100 * proportion['value']:.1f}% [{100 * proportion['low']:.1f}, {100 * proportion['high']:.1f}]"


def calibration_table(record: dict) -> str:
    """The calibration of one run as a small Markdown table (the app's run panel): the temperature, the test scores
    before and after scaling, each operating point and the abstain threshold with what they give on test."""
    test = record["test"]
    rows = [("Temperature T (fitted on validation)", f"{record['temperature']:.2f}", f"{record['val']['images']} images"),
            *((f"{name} on test", f"{_interval(test[key]['before'])} → {_interval(test[key]['after'])}",
               f"lowered by scaling: {test[key]['helped']}") for key, name in (("ece", "ECE"), ("brier", "Brier score"),
                                                                               ("nll", "NLL"))
              if key in test)]
    for name, points in record["operating_points"].items():
        point = points.get("target_sensitivity")
        if point:
            rows.append((f"{name} at sensitivity {point['target']:g}: threshold {point['threshold']:.3f}",
                         f"sensitivity {_percent(point['test']['sensitivity'])}",
                         f"specificity {_percent(point['test']['specificity'])}, PPV {_percent(point['test']['ppv'])}"))
    abstain = record["abstain"]
    if abstain["reached"]:
        accuracy = "n/a" if abstain["test_accuracy"] is None else _percent(
            {"value": abstain["test_accuracy"], **abstain["test_interval"]})
        rows.append((f"Uncertain below confidence {abstain['threshold']:.3f}",
                     f"answers {100 * abstain['test_coverage']:.0f}% of test", f"accuracy {accuracy}"))
    else:
        rows.append(("Uncertain", "never", abstain["note"]))
    lines = ["| Calibration | Test | |", "| :-- | :-- | :-- |"]
    lines += [f"| {what} | {value} | {detail} |" for what, value, detail in rows]
    return "\n".join(lines)


def calibration_lines(record: dict) -> list[str]:
    """The calibration of one run in a few sentences: T, the test scores before and after, the operating
    points, the abstain threshold, and where calibration breaks."""
    test = record["test"]
    lines = [
        f"Temperature T = {record['temperature']:.2f}, fitted on {record['val']['images']} validation images"
        + (" (at the bound of its search: the validation images pulled it there)" if record.get("at_bound") else "") + ".",
        f"Test ({test['images']} images, 95% bootstrap intervals): ECE {_interval(test['ece']['before'])} before scaling, "
        f"{_interval(test['ece']['after'])} after; scaling lowered ECE: {test['ece']['helped']}. "
        f"Brier {test['brier']['before']['value']:.3f} -> {test['brier']['after']['value']:.3f} "
        f"({test['brier']['helped']}), NLL {test['nll']['before']['value']:.3f} -> {test['nll']['after']['value']:.3f} "
        f"({test['nll']['helped']}), MCE {test['mce']['before']['value']:.3f} -> {test['mce']['after']['value']:.3f}.",
    ]
    if "ce2_debiased" in test:  # runs calibrated before the debiased estimate have none
        after = test["ce2_debiased"]["after"]
        lines.append(
            f"The plug-in ECE is biased upward at {test['images']} images (a calibrated model shows some); the debiased "
            f"squared calibration error (Kumar et al. 2019) after scaling is {after['value']:.4f} [{after['low']:.4f}, "
            f"{after['high']:.4f}]: " + ("its interval contains 0, so these test images cannot tell the model from a "
                                         "calibrated one." if after["low"] <= 0 <= after["high"] else
                                         "its interval excludes 0: miscalibration beyond sampling noise."))
    for name, points in record["operating_points"].items():
        if "problem" in points:
            lines.append(f"{name}: {points['problem']}.")
            continue
        for kind, label in (("target_sensitivity", "target sensitivity"), ("youden", "Youden's J")):
            if kind in points:
                point = points[kind]
                target = f" {point['target']:g}" if kind == "target_sensitivity" else ""
                lines.append(
                    f"{name} at {label}{target} (threshold {point['threshold']:.3f} on validation): test sensitivity "
                    f"{_percent(point['test']['sensitivity'])}, specificity {_percent(point['test']['specificity'])}, "
                    f"PPV {_percent(point['test']['ppv'])}."
                )
    abstain = record["abstain"]
    if abstain["reached"]:
        accuracy = "n/a" if abstain["test_accuracy"] is None else _percent(
            {"value": abstain["test_accuracy"], **abstain["test_interval"]})
        lines.append(
            f"Abstaining below calibrated confidence {abstain['threshold']:.3f} (validation accuracy "
            f"{abstain['val_accuracy']:.3f} on {100 * abstain['val_coverage']:.0f}% of its images, target "
            f"{abstain['target_accuracy']:g}): on test it answers {100 * abstain['test_coverage']:.0f}% of the images "
            f"with accuracy {accuracy}. Test AURC {abstain['test_aurc']:.3f}."
        )
    else:
        lines.append(f"Abstaining: {abstain['note']}. Test AURC {abstain['test_aurc']:.3f}.")
    if "no_lungs" in record:
        no_lungs = record["no_lungs"]
        wrong = no_lungs["mean_confidence_when_wrong"]
        lines.append(
            f"With the lungs removed ({no_lungs['images']} images): accuracy {no_lungs['accuracy']:.3f}, mean calibrated "
            f"confidence {no_lungs['mean_confidence']:.3f}" + ("" if wrong is None else f" ({wrong:.3f} when wrong)")
            + f", ECE {no_lungs['ece']:.3f}."
        )
    if record.get("by_source"):
        lines.append("ECE per source: " + ", ".join(
            f"{row['group']} {row['ece']:.3f} ({row['images']} images)" for row in record["by_source"]) + ".")
    return lines


def reliability_figure(predictions: pd.DataFrame, class_names: list[str], title: str) -> Figure:
    """Test images: top-label reliability before and after scaling, and each class against the rest after."""
    test = predictions[predictions["split"] == "test"]
    labels, raw = labels_and_probabilities(test, class_names)
    calibrated = test[[f"{CALIBRATED_PREFIX}p_{name}" for name in class_names]].to_numpy(np.float64)
    figure = Figure(figsize=(11, 4.6))
    top, per_class = figure.subplots(1, 2)
    for probabilities, label, marker in ((raw, "before scaling", "o--"), (calibrated, "after scaling", "s-")):
        table = reliability(labels, probabilities)
        top.plot(table["confidence"], table["accuracy"], marker, label=f"{label} ({len(table)} bins with images)")
    top.plot([0, 1], [0, 1], color="grey", linewidth=1, label="perfect calibration")
    top.set(xlabel="top-label confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
            title=f"{title}: top label, {ECE_BINS} bins")
    for c, name in enumerate(class_names):
        positive = labels == c
        if positive.any() and not positive.all():
            truth, mean = calibration_curve(positive, calibrated[:, c], n_bins=10, strategy="uniform")
            per_class.plot(mean, truth, "o-", label=name)
    per_class.plot([0, 1], [0, 1], color="grey", linewidth=1)
    per_class.set(xlabel="calibrated probability of the class", ylabel="share of images of the class",
                  xlim=(0, 1), ylim=(0, 1.02), title="each class against the rest, after scaling")
    for axes in (top, per_class):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def risk_coverage_figure(predictions: pd.DataFrame, class_names: list[str], record: dict, title: str) -> Figure:
    """Accuracy on the images answered against the share answered, validation and test, calibrated confidence;
    the abstain threshold's coverage marked."""
    figure = Figure(figsize=(6.5, 4.6))
    axes = figure.subplots()
    columns = [f"{CALIBRATED_PREFIX}p_{name}" for name in class_names]
    for subset, style in (("val", "--"), ("test", "-")):
        rows = predictions[predictions["split"] == subset]
        labels, _ = labels_and_probabilities(rows, class_names)
        curve = risk_coverage(labels, rows[columns].to_numpy(np.float64))
        axes.plot(curve["coverage"], curve["accuracy"], style, label=f"{subset} ({len(rows)} images)")
    abstain = record["abstain"]
    axes.axhline(abstain["target_accuracy"], color="grey", linewidth=1, label=f"target accuracy {abstain['target_accuracy']:g}")
    if abstain["reached"]:
        axes.axvline(abstain["test_coverage"], color="red", linewidth=1,
                     label=f"test coverage at threshold {abstain['threshold']:.2f}")
    axes.set(xlabel="share of images answered (most confident first)", ylabel="accuracy on the images answered",
             xlim=(0, 1), title=f"{title}: abstaining, test AURC {abstain['test_aurc']:.3f}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


# The summary: per configuration, over its seeds (one seed: that run's bootstrap interval over test images)
CALIBRATION_COLUMNS = ["Temperature", "ECE", "ECE CI low", "ECE CI high", "Calibrated ECE", "Calibrated ECE CI low",
                       "Calibrated ECE CI high", "ECE no lungs", "COVID sensitivity at target", "COVID specificity at target",
                       "Answered at abstain threshold", "Accuracy answered"]


def calibration_columns(records: list[dict]) -> dict:
    """The summary's calibration columns of one configuration from its runs' ``calibration`` records (None when
    no run has one: runs made before calibration joined every run)."""
    if not records:
        return dict.fromkeys(CALIBRATION_COLUMNS)

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def with_interval(when: str) -> tuple:
        values = [r["test"]["ece"][when]["value"] for r in records]
        if len(values) >= 2:
            interval = t_interval(values)
            return interval["mean"], max(0.0, interval["low"]), interval["high"]
        figure = records[0]["test"]["ece"][when]
        return figure["value"], figure["low"], figure["high"]

    covid = [r["operating_points"].get("COVID", {}).get("target_sensitivity", {}).get("test", {}) for r in records]
    abstain = [r["abstain"] for r in records]
    return dict(zip(CALIBRATION_COLUMNS, [
        mean([r["temperature"] for r in records]), *with_interval("before"), *with_interval("after"),
        mean([r.get("no_lungs", {}).get("ece") for r in records]),
        mean([c.get("sensitivity", {}).get("value") for c in covid]),
        mean([c.get("specificity", {}).get("value") for c in covid]),
        mean([a.get("test_coverage") if a["reached"] else 0.0 for a in abstain]),
        mean([a.get("test_accuracy") for a in abstain]),
    ]))


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _with_ci(row: dict, column: str) -> str:
    if row.get(column) is None or np.isnan(row[column]):
        return "–"
    return f"{row[column]:.3f} [{row[column + ' CI low']:.3f}, {row[column + ' CI high']:.3f}]"


HOW_TO_READ_CALIBRATION = (
    "How to read it: ECE (expected calibration error) is the gap between how sure the model says it is and how often "
    "it is right, averaged over 15 confidence bins: 0.10 means answers given with 90% confidence are right about 80% of "
    "the time, or 100%. T is the temperature fitted on the validation images: above 1 the raw softmax was overconfident "
    "and is softened, below 1 underconfident. The intervals are 95%: over the seeds with two or more, else the bootstrap "
    "over the run's test images. Calibration fitted on a small validation split can miss, or make test calibration "
    "worse: compare the calibrated ECE's interval with the raw one, not the two numbers alone. ECE's bootstrap interval "
    "is lopsided (a resample's ECE is biased upwards), and with a few hundred test images ECE below about 0.05 cannot be "
    "told from zero. What calibration cannot do: change which class is predicted, or make probabilities hold on another "
    "hospital's images; ECE with the lungs removed shows how confidently a model answers on images it should not be "
    "able to read. The COVID operating point and the abstain threshold are chosen on validation and their figures are "
    "from test."
)


def calibration_markdown(table: pd.DataFrame) -> list[str]:
    """The summary's calibration section: one row per configuration with accuracy beside T and ECE."""
    rows = [row for row in table.to_dict("records") if row.get("Temperature") is not None and not np.isnan(row["Temperature"])]
    if not rows:
        return []
    lines = ["### Probabilities: calibration, operating point, abstaining", "",
             "| Model | Seeds | Test accuracy | T | Test ECE raw (95% CI) | Test ECE calibrated (95% CI) | ECE, lungs removed "
             "| COVID sensitivity / specificity at target | Answered at abstain threshold (accuracy) |",
             "| :-- | " + " | ".join([":-:"] * 8) + " |"]
    for row in rows:
        answered = ("–" if row["Answered at abstain threshold"] is None else
                    f"{100 * row['Answered at abstain threshold']:.0f}%"
                    + ("" if row["Accuracy answered"] is None else f" ({100 * row['Accuracy answered']:.1f}%)"))
        covid = ("–" if row["COVID sensitivity at target"] is None else
                 f"{100 * row['COVID sensitivity at target']:.1f}% / {100 * row['COVID specificity at target']:.1f}%")
        lines.append(f"| {row['Model']} | {row['Seeds']} | {_cell(row['Test accuracy'])} | {_cell(row['Temperature'], 2)} | "
                     f"{_with_ci(row, 'ECE')} | {_with_ci(row, 'Calibrated ECE')} | {_cell(row['ECE no lungs'])} | {covid} | "
                     f"{answered} |")
    return [*lines, "", HOW_TO_READ_CALIBRATION]


def source_lines(collected: dict, baseline: str) -> list[str]:
    """Where calibration breaks, for the baseline: calibrated ECE per source and with the lungs removed, averaged
    over its seeds (images: per seed)."""
    records = [run.metrics["calibration"] for run in collected.get(baseline, [])
               if run.status == "done" and "calibration" in (run.metrics or {})]
    by_source: dict[str, list[dict]] = {}
    for record in records:
        for row in record.get("by_source", []):
            by_source.setdefault(row["group"], []).append(row)
    lines = []
    if by_source:
        lines.append(f"Calibrated ECE per source, {baseline} (mean over {len(records)} seed(s); accuracy and mean confidence "
                     "beside it): " + "; ".join(
                         f"{group} {np.mean([r['ece'] for r in rows]):.3f} (accuracy {np.mean([r['accuracy'] for r in rows]):.3f}, "
                         f"confidence {np.mean([r['mean_confidence'] for r in rows]):.3f}, {rows[0]['images']} images)"
                         for group, rows in sorted(by_source.items())) + ".")
    no_lungs = [record["no_lungs"] for record in records if "no_lungs" in record]
    if no_lungs:
        lines.append(f"With the lungs removed, {baseline} answers with mean calibrated confidence "
                     f"{np.mean([r['mean_confidence'] for r in no_lungs]):.3f} at accuracy "
                     f"{np.mean([r['accuracy'] for r in no_lungs]):.3f} (ECE {np.mean([r['ece'] for r in no_lungs]):.3f}): "
                     "a confidence far above the accuracy is a model sure of answers it cannot read from the lungs.")
    return lines
