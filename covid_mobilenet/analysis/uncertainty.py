"""Uncertainty of results: intervals for one run and across seeds, and the paired tests between configurations.

Everything here reads per-image predictions (``predictions.csv``) or finished metrics, never a model,
and uses the field's libraries: statsmodels for the Wilson interval, McNemar's test and Holm's
correction, scipy for the bootstrap and the t-distribution, scikit-learn for the metrics resampled.
Free of TensorFlow.
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the same predictions always give the same interval
ALPHA = 0.05


def wilson_interval(correct: int, total: int, confidence: float = CONFIDENCE) -> dict:
    """Wilson score interval of a proportion (test accuracy: correct of total images)."""
    low, high = proportion_confint(correct, total, alpha=1 - confidence, method="wilson")
    return {"low": float(low), "high": float(high), "method": f"Wilson score, {confidence:.0%}"}


def bootstrap_interval(statistic, *samples: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Percentile bootstrap interval of ``statistic(*samples)``, resampling images (rows of all samples together)."""
    return bootstrap_intervals(lambda *resampled: np.atleast_1d(statistic(*resampled)), *samples, confidence=confidence)[0]


def bootstrap_intervals(statistics, *samples: np.ndarray, confidence: float = CONFIDENCE) -> list[dict]:
    """Percentile bootstrap intervals of each value of ``statistics(*samples)`` (an array), all from the same
    resamples of the images: one pass, and figures computed together (before, after, their difference) stay paired."""
    result = stats.bootstrap(
        samples, statistics, paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence, method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED),
    )
    method = f"percentile bootstrap over test images, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, {confidence:.0%}"
    return [{"low": float(low), "high": float(high), "method": method}
            for low, high in zip(np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high))]


def confusion_counts(truth: np.ndarray, guess: np.ndarray, num_classes: int) -> np.ndarray:
    """The confusion matrix (rows: true class) by counting, as scikit-learn's confusion_matrix gives it."""
    return np.bincount(truth * num_classes + guess, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_f1_and_balanced_accuracy(confusion: np.ndarray) -> np.ndarray:
    """(macro F1, balanced accuracy) from a confusion matrix, as scikit-learn's f1_score(average="macro",
    zero_division=0) over every class and balanced_accuracy_score (the mean recall of the classes present)."""
    true_positives = np.diag(confusion).astype(float)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    denominator = support + predicted
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0)
    present = support > 0
    return np.array([f1.mean(), (true_positives[present] / support[present]).mean()])


def single_run_intervals(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict:
    """95% intervals of one run's test accuracy (Wilson), macro F1 and balanced accuracy (bootstrap, both from the
    same resamples; counted from the confusion matrix, as scikit-learn computes them, which the tests hold)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)

    def both(truth, guess):
        return macro_f1_and_balanced_accuracy(confusion_counts(truth, guess, num_classes))

    macro_f1, balanced_accuracy = bootstrap_intervals(both, labels, predicted)
    return {
        "accuracy": wilson_interval(int((labels == predicted).sum()), len(labels)),
        "macro_f1": macro_f1,
        "balanced_accuracy": balanced_accuracy,
    }


def t_interval(values: list[float] | np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Mean, standard deviation and t-interval of the mean over seeds (two or more values)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        raise ValueError("a t-interval needs at least two values")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    if sd == 0:
        low = high = mean
    else:
        low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sd / np.sqrt(len(values)))
    return {"mean": mean, "sd": sd, "low": float(low), "high": float(high), "n": len(values),
            "method": f"t-interval over {len(values)} seeds, {confidence:.0%}"}


def newcombe_difference(first_correct: int, first_total: int, second_correct: int, second_total: int,
                        confidence: float = CONFIDENCE) -> dict:
    """Second minus first of two independent proportions (accuracy on two sets of images), with Newcombe's hybrid
    score interval (statsmodels' 'newcomb')."""
    low, high = confint_proportions_2indep(second_correct, second_total, first_correct, first_total, method="newcomb",
                                           compare="diff", alpha=1 - confidence)
    return {"difference": second_correct / second_total - first_correct / first_total, "low": float(low),
            "high": float(high), "method": f"Newcombe hybrid score, {confidence:.0%}"}


def above_majority(correct: int, total: int, majority_rate: float | None) -> dict:
    """Accuracy with its Wilson interval, and the one-sided binomial test of being above the majority rate (what
    always answering the commonest class scores on the same images): the shortcut checks' figure per region."""
    if not total:
        return {"accuracy": None, "correct": 0, "images": 0}
    above = stats.binomtest(correct, total, majority_rate, alternative="greater").pvalue if majority_rate else None
    return {"accuracy": correct / total, "correct": correct, "images": total,
            "interval": wilson_interval(correct, total), "above_majority_p": None if above is None else float(above)}


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> dict:
    """McNemar's exact test on the images one model gets right and the other wrong (same images, same order)."""
    first_correct, second_correct = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if first_correct.shape != second_correct.shape:
        raise ValueError("McNemar's test compares predictions on the same images")
    only_first = int((first_correct & ~second_correct).sum())
    only_second = int((~first_correct & second_correct).sum())
    both = int((first_correct & second_correct).sum())
    neither = int((~first_correct & ~second_correct).sum())
    result = mcnemar([[both, only_first], [only_second, neither]], exact=True)
    return {"only_first_correct": only_first, "only_second_correct": only_second, "p_value": float(result.pvalue)}


def paired_difference(first_correct: list[np.ndarray], second_correct: list[np.ndarray]) -> dict:
    """Second minus first in test accuracy, per seed on the same images, with a 95% interval and McNemar per seed.

    Two or more seeds: the t-interval of the per-seed differences. One seed: a bootstrap over images.
    """
    per_seed = [mcnemar_exact(a, b) for a, b in zip(first_correct, second_correct)]
    differences = [float(np.mean(b) - np.mean(a)) for a, b in zip(first_correct, second_correct)]
    if len(differences) >= 2:
        interval = t_interval(differences)
    else:
        a, b = np.asarray(first_correct[0], float), np.asarray(second_correct[0], float)
        interval = {"mean": differences[0], **bootstrap_interval(lambda x, y: np.mean(y) - np.mean(x), a, b), "n": 1}
    return {
        "difference": float(np.mean(differences)),
        "interval": interval,
        "mcnemar": per_seed,
        # one p-value per comparison: the largest over seeds, so "significant" means significant at every seed
        "p_value": max(test["p_value"] for test in per_seed),
    }


def holm(p_values: list[float], alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction: (significant, adjusted p-values) for a family of comparisons."""
    if not p_values:
        return [], []
    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [bool(r) for r in reject], [float(p) for p in adjusted]
