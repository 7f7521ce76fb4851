"""Classification metrics of predictions with scikit-learn: loss, accuracy, and the per-class report.

They take labels and probabilities (from a run's predictions, or ``predictions.csv``), never a model."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def labels_and_probabilities(predictions, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(class indices, probabilities) from a predictions table (columns true, p_<class> per class)."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[name] for name in predictions["true"]], dtype=np.int64)
    probabilities = predictions[[f"p_{name}" for name in class_names]].to_numpy(dtype=np.float64)
    return labels, probabilities


EPSILON = 1e-12  # probabilities are clipped to this before a logarithm


# The negative log-likelihood and the Brier score are defined once, here, for everything that reports them (a run's
# loss, the calibration record, its bootstrap): in numpy, since the bootstrap calls them thousands of times, where
# scikit-learn's log_loss and brier_score_loss spend a millisecond a call validating their input. The tests hold
# them equal to scikit-learn's.
def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class (scikit-learn's log_loss; Keras' sparse cross-entropy)."""
    chosen = np.asarray(probabilities, np.float64)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(chosen, EPSILON, 1.0)).mean())


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Multi-class Brier score: the mean over images of the squared distance to the one-hot truth, 0 to 2
    (scikit-learn's brier_score_loss with scale_by_half=False)."""
    probabilities = np.asarray(probabilities, np.float64)
    truth = np.eye(probabilities.shape[1])[np.asarray(labels)]
    return float(((probabilities - truth) ** 2).sum(axis=1).mean())


def loss_and_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Cross-entropy (as Keras' sparse categorical loss) and accuracy."""
    return {
        "loss": negative_log_likelihood(labels, probabilities),
        "accuracy": float(skm.accuracy_score(labels, probabilities.argmax(axis=1))),
    }


def classification_report(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Loss, accuracy, per-class precision/recall (sensitivity)/specificity/F1/support, and summaries."""
    classes = np.arange(len(class_names))
    predicted = probabilities.argmax(axis=1)
    confusion = skm.confusion_matrix(labels, predicted, labels=classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    false_positives = confusion.sum(axis=0) - np.diag(confusion)
    true_negatives = confusion.sum() - confusion.sum(axis=1) - false_positives
    specificity = true_negatives / np.maximum(true_negatives + false_positives, 1)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "sensitivity": float(recall[i]),
            "specificity": float(specificity[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    # One-vs-rest AUC is undefined when a class is absent from the labels.
    roc_auc = None
    if set(np.unique(labels)) == set(classes):
        roc_auc = float(skm.roc_auc_score(labels, probabilities, multi_class="ovr", labels=classes))
    return {
        **loss_and_accuracy(labels, probabilities),
        "per_class": per_class,
        "macro_f1": float(skm.f1_score(labels, predicted, labels=classes, average="macro", zero_division=0)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, predicted)),
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_rows": "true class, in class_names order; columns: predicted class",
        "roc_auc_ovr": roc_auc,
    }
