import numpy as np
import pytest

from covid_mobilenet.analysis.metrics import classification_report, loss_and_accuracy

NAMES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def one_hot_probabilities(predicted, confidence=0.7):
    probabilities = np.full((len(predicted), 4), (1 - confidence) / 3)
    probabilities[np.arange(len(predicted)), predicted] = confidence
    return probabilities


def test_report_matches_hand_computed_values():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    predicted = np.array([0, 0, 2, 1, 2, 2, 2, 2, 0, 3])
    report = classification_report(labels, one_hot_probabilities(predicted), NAMES)
    confusion = np.array(report["confusion_matrix"])
    assert confusion.tolist() == [[2, 0, 1, 0], [0, 1, 1, 0], [1, 0, 3, 0], [0, 0, 0, 1]]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum()) == 0.7
    covid = report["per_class"]["COVID"]
    assert covid["precision"] == pytest.approx(2 / 3)
    assert covid["recall"] == covid["sensitivity"] == pytest.approx(2 / 3)
    assert covid["specificity"] == pytest.approx(6 / 7)  # 7 non-COVID images, 1 called COVID
    assert covid["support"] == 3
    assert report["per_class"]["Normal"]["specificity"] == pytest.approx(4 / 6)
    assert report["balanced_accuracy"] == pytest.approx(np.mean([2 / 3, 1 / 2, 3 / 4, 1]))
    assert report["loss"] == pytest.approx(-np.mean(np.log(np.where(predicted == labels, 0.7, 0.1))))
    assert 0 < report["roc_auc_ovr"] <= 1


def test_auc_is_none_when_a_class_is_absent():
    labels = np.array([0, 1, 2, 0])
    report = classification_report(labels, one_hot_probabilities(labels), NAMES)
    assert report["roc_auc_ovr"] is None
    assert report["per_class"]["Viral Pneumonia"]["support"] == 0


def test_loss_and_accuracy():
    result = loss_and_accuracy(np.array([0, 1]), np.array([[0.9, 0.1], [0.6, 0.4]]))
    assert result["accuracy"] == 0.5
    assert result["loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)
