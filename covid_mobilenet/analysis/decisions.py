"""Decisions on a run's (calibrated) probabilities: operating points per class and abstaining.

Chosen on the validation images, reported on the test images:

- operating points, per class, one class against the rest: the threshold that maximises Youden's J on
  validation, and the highest threshold reaching a target sensitivity on validation; test sensitivity,
  specificity and PPV at each, with Wilson intervals;
- abstaining: the risk-coverage curve (answering in order of confidence), its area (AURC), and the lowest
  confidence threshold whose answered validation images reach a target accuracy, with the test accuracy and
  coverage at it.

scikit-learn gives the ROC curve; statsmodels (``uncertainty.wilson_interval``) the intervals. Free of TensorFlow.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from .uncertainty import wilson_interval


def operating_points(val_labels: np.ndarray, val_probabilities: np.ndarray, test_labels: np.ndarray,
                     test_probabilities: np.ndarray, class_names: list[str], target_sensitivity: dict[str, float]) -> dict:
    """Per class, thresholds on its (calibrated) probability chosen on validation and what they give on test."""
    unknown = sorted(set(target_sensitivity) - set(class_names))
    if unknown:
        raise ValueError(f"calibration.target_sensitivity names {unknown}, which are not classes of this run "
                         f"({class_names}); fix experiments.json")
    points = {}
    for c, name in enumerate(class_names):
        val_positive, test_positive = np.asarray(val_labels) == c, np.asarray(test_labels) == c
        val_score, test_score = np.asarray(val_probabilities)[:, c], np.asarray(test_probabilities)[:, c]
        if val_positive.all() or not val_positive.any():
            points[name] = {"problem": f"validation has {'no' if not val_positive.any() else 'only'} {name} images: "
                                       "no threshold can be chosen"}
            continue
        fpr, tpr, thresholds = skm.roc_curve(val_positive, val_score, drop_intermediate=False)
        finite = np.isfinite(thresholds)  # the first threshold is +inf: nothing predicted positive
        fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
        best = int(np.argmax(tpr - fpr))
        entry = {"youden": {"threshold": float(thresholds[best]), "val_sensitivity": float(tpr[best]),
                            "val_specificity": float(1 - fpr[best]),
                            "test": decision_figures(test_positive, test_score >= thresholds[best])}}
        if name in target_sensitivity:
            target = float(target_sensitivity[name])
            reaching = np.flatnonzero(tpr >= target)  # thresholds fall along the curve: the first is the highest
            k = int(reaching[0])
            entry["target_sensitivity"] = {
                "target": target, "threshold": float(thresholds[k]), "val_sensitivity": float(tpr[k]),
                "val_specificity": float(1 - fpr[k]), "test": decision_figures(test_positive, test_score >= thresholds[k]),
            }
        points[name] = entry
    return points


def decision_figures(positive: np.ndarray, flagged: np.ndarray) -> dict:
    """Sensitivity, specificity and positive predictive value of a yes/no decision, with Wilson intervals."""
    positive, flagged = np.asarray(positive, bool), np.asarray(flagged, bool)
    tp, fp = int((positive & flagged).sum()), int((~positive & flagged).sum())
    fn, tn = int((positive & ~flagged).sum()), int((~positive & ~flagged).sum())

    def proportion(hits: int, total: int) -> dict:
        if total == 0:
            return {"value": None, "images": 0}
        return {"value": hits / total, "images": total, **wilson_interval(hits, total)}

    return {"sensitivity": proportion(tp, tp + fn), "specificity": proportion(tn, tn + fp),
            "ppv": proportion(tp, tp + fp), "counts": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def risk_coverage(labels: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """Answering the k most confident images, k = 1..N: coverage k/N, the accuracy on those and the confidence
    of the k-th (ties broken by the order given, so the curve is deterministic)."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probabilities.argmax(axis=1) == np.asarray(labels))[order]
    answered = np.arange(1, len(order) + 1)
    return pd.DataFrame({"coverage": answered / len(order), "accuracy": np.cumsum(correct) / answered,
                         "confidence": confidence[order]})


def area_under_risk_coverage(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """AURC: the mean selective risk (1 - accuracy) over the coverages 1/N..1; lower is better."""
    return float((1 - risk_coverage(labels, probabilities)["accuracy"]).mean())


def abstain_threshold(val_labels: np.ndarray, val_probabilities: np.ndarray, test_labels: np.ndarray,
                      test_probabilities: np.ndarray, target_accuracy: float) -> dict:
    """The lowest calibrated confidence whose answered validation images reach ``target_accuracy``; test
    accuracy (Wilson interval) and coverage when answering only at or above it."""
    curve = risk_coverage(val_labels, val_probabilities)
    # a threshold answers every image at or above it: only the last image of a run of equal confidences counts
    last_of_tie = np.append(curve["confidence"].to_numpy()[1:] != curve["confidence"].to_numpy()[:-1], True)
    reaching = curve[(curve["accuracy"] >= target_accuracy) & last_of_tie]
    record = {"target_accuracy": float(target_accuracy), "test_aurc": area_under_risk_coverage(test_labels, test_probabilities),
              "val_aurc": area_under_risk_coverage(val_labels, val_probabilities)}
    if reaching.empty:
        return {**record, "threshold": None, "reached": False,
                "note": f"no confidence threshold reaches validation accuracy {target_accuracy:g}, even answering only "
                        "the most confident image: every answer is uncertain"}
    chosen = reaching.iloc[-1]  # the largest coverage that still reaches the target
    threshold = float(chosen["confidence"])
    test_probabilities = np.asarray(test_probabilities, np.float64)
    answered = test_probabilities.max(axis=1) >= threshold
    correct = int((test_probabilities.argmax(axis=1) == np.asarray(test_labels))[answered].sum())
    return {**record, "threshold": threshold, "reached": True, "val_coverage": float(chosen["coverage"]),
            "val_accuracy": float(chosen["accuracy"]), "test_coverage": float(answered.mean()),
            "test_answered": int(answered.sum()),
            "test_accuracy": (correct / int(answered.sum())) if answered.any() else None,
            "test_interval": wilson_interval(correct, int(answered.sum())) if answered.any() else None}
