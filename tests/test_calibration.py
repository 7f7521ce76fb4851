"""Calibration, operating points and abstaining (analysis/calibration.py, analysis/decisions.py): each figure checked against a value
computed another way, on predictions made up here, so nothing trains."""
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import special
from sklearn import metrics as skm

from covid_mobilenet.analysis import calibration as cal
from covid_mobilenet.analysis import decisions
from covid_mobilenet.analysis.calibration_report import calibration_lines, calibration_markdown, source_lines
from covid_mobilenet.common.config import ConfigError, calibration_settings, load_config

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def overconfident(n: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), and the probabilities softmax(sharpen * z) a model too sure of itself gives."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 4))
    truth = special.softmax(logits, axis=1)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    return labels, special.softmax(sharpen * logits, axis=1)


def table(split: str, labels: np.ndarray, probabilities: np.ndarray, first: int = 0) -> pd.DataFrame:
    rows = pd.DataFrame({"path": [f"{CLASSES[c]}/images/{CLASSES[c]}-{first + i}.png" for i, c in enumerate(labels)],
                         "split": split, "true": [CLASSES[c] for c in labels],
                         "predicted": [CLASSES[c] for c in probabilities.argmax(axis=1)]})
    for i, name in enumerate(CLASSES):
        rows[f"p_{name}"] = probabilities[:, i]
    return rows


def test_calibrated_probabilities_give_a_temperature_near_one_and_a_small_ece():
    labels, probabilities = overconfident(20000, 1.0, seed=0)  # labels drawn from the probabilities themselves
    assert cal.fit_temperature(labels, probabilities) == pytest.approx(1.0, abs=0.03)
    assert cal.expected_calibration_error(labels, probabilities) < 0.015


def test_the_fitted_temperature_undoes_a_known_overconfidence_and_keeps_every_prediction():
    labels, probabilities = overconfident(20000, 3.0, seed=1)  # softmax(3 z): p^3 renormalised
    np.testing.assert_allclose(probabilities, special.softmax(3 * np.log(special.softmax(
        np.log(probabilities) / 3, axis=1)), axis=1))
    temperature = cal.fit_temperature(labels, probabilities)
    assert temperature == pytest.approx(3.0, rel=0.05)
    calibrated = cal.temperature_scale(probabilities, temperature)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1)
    assert (calibrated.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    np.testing.assert_allclose(cal.temperature_scale(probabilities, 1.0), probabilities, atol=1e-9)
    assert cal.negative_log_likelihood(labels, calibrated) < cal.negative_log_likelihood(labels, probabilities)


def test_the_scores_agree_with_their_definitions():
    labels, probabilities = overconfident(500, 2.0, seed=2)
    # NLL is scikit-learn's log loss; the multi-class Brier score on two classes is twice the binary one
    assert cal.negative_log_likelihood(labels, probabilities) == pytest.approx(skm.log_loss(labels, probabilities, labels=range(4)))
    binary = np.column_stack([1 - probabilities[:, 0], probabilities[:, 0]])
    assert cal.brier_score((labels == 0).astype(int), binary) == pytest.approx(2 * skm.brier_score_loss(labels == 0, probabilities[:, 0]))
    # ECE by hand: 15 bins of (0, 1], each |accuracy - confidence| weighted by its share
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, 16)
    gaps = [(np.sum(m), abs(correct[m].mean() - confidence[m].mean()))
            for m in ((confidence > lo) & (confidence <= hi) for lo, hi in zip(edges[:-1], edges[1:])) if m.any()]
    assert cal.expected_calibration_error(labels, probabilities) == pytest.approx(sum(n * g for n, g in gaps) / len(labels))
    assert cal.maximum_calibration_error(labels, probabilities) == pytest.approx(max(g for _, g in gaps))
    # a model whose 0.75 answers are right three times in four is calibrated
    four = np.array([[0.75, 0.25, 0, 0]] * 4)
    assert cal.expected_calibration_error(np.array([0, 0, 0, 1]), four) == pytest.approx(0)
    assert cal.expected_calibration_error(np.array([0, 1, 1, 1]), four) == pytest.approx(0.5)
    # two bins by hand: four answers at 0.9 (bin 14), three right: gap 0.15; two at 0.4 (bin 6), both wrong: gap 0.4;
    # ECE = (4 * 0.15 + 2 * 0.4) / 6, MCE = 0.4
    two_bins = np.array([[0.9, 0.05, 0.05, 0]] * 4 + [[0.4, 0.3, 0.3, 0]] * 2)
    truth = np.array([0, 0, 0, 1, 1, 2])
    assert cal.expected_calibration_error(truth, two_bins) == pytest.approx((4 * 0.15 + 2 * 0.4) / 6)
    assert cal.maximum_calibration_error(truth, two_bins) == pytest.approx(0.4)
    # bins are right-closed, ((m-1)/15, m/15] as in Guo et al.: 0.4 (= 6/15) and 0.42 fall in different bins
    edge = np.array([[0.4, 0.3, 0.3, 0], [0.42, 0.29, 0.29, 0]])
    assert cal.expected_calibration_error(np.array([0, 1]), edge) == pytest.approx((0.6 + 0.42) / 2)


def test_scaling_is_said_to_help_only_when_the_interval_of_the_change_is_below_zero():
    assert cal.verdict({"value": -0.05, "low": -0.08, "high": -0.01}) == "yes"
    assert cal.verdict({"value": -0.05, "low": -0.08, "high": 0.01}) == "not shown"
    assert cal.verdict({"value": 0.02, "low": -0.01, "high": 0.04}) == "not shown"
    assert cal.verdict({"value": 0.03, "low": 0.01, "high": 0.05}) == "no (worse)"


def test_operating_points_are_chosen_on_validation_and_counted_on_test():
    val_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 3])
    covid = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.1, 0.05, 0.05])
    val = np.column_stack([covid, (1 - covid) / 3, (1 - covid) / 3, (1 - covid) / 3])
    test_labels = np.array([0, 0, 1, 1, 2])
    test_covid = np.array([0.95, 0.25, 0.35, 0.1, 0.65])
    test = np.column_stack([test_covid, (1 - test_covid) / 3, (1 - test_covid) / 3, (1 - test_covid) / 3])
    points = decisions.operating_points(val_labels, val, test_labels, test, CLASSES, {"COVID": 0.75})["COVID"]
    target = points["target_sensitivity"]
    # three of the four validation COVID images lie at or above 0.6, and 0.6 is the highest threshold that keeps them
    assert target["threshold"] == pytest.approx(0.6) and target["val_sensitivity"] == pytest.approx(0.75)
    assert target["val_specificity"] == pytest.approx(5 / 6)
    figures = target["test"]  # flagged on test: 0.95 (COVID), 0.65 (Normal)
    assert figures["counts"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 2}
    assert figures["sensitivity"]["value"] == pytest.approx(0.5) and figures["ppv"]["value"] == pytest.approx(0.5)
    assert figures["specificity"]["low"] < 2 / 3 < figures["specificity"]["high"]
    youden = points["youden"]
    best_j = max(t - f for f, t, _ in zip(*skm.roc_curve(val_labels == 0, covid)))
    assert youden["val_sensitivity"] - (1 - youden["val_specificity"]) == pytest.approx(best_j)
    with pytest.raises(ValueError, match="Pneumonia.*not classes"):
        decisions.operating_points(val_labels, val, test_labels, test, CLASSES, {"Pneumonia": 0.9})


def test_the_abstain_threshold_is_the_lowest_confidence_reaching_the_target_on_validation():
    confidence = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([1, 1, 1, 0, 1, 0, 1, 0], bool)
    labels = np.where(correct, 0, 1)
    probabilities = np.column_stack([confidence, 1 - confidence, np.zeros(8), np.zeros(8)])
    # answering >= 0.95: 2/2 right; >= 0.9: 3/4 (the tie at 0.9 is answered whole); so 0.95 for a target of 0.85
    record = decisions.abstain_threshold(labels, probabilities, labels, probabilities, 0.85)
    assert record["threshold"] == pytest.approx(0.95) and record["val_coverage"] == pytest.approx(0.25)
    assert record["test_answered"] == 2 and record["test_accuracy"] == 1.0
    assert record["test_aurc"] == pytest.approx(np.mean(1 - np.cumsum(correct) / np.arange(1, 9)))
    lower = decisions.abstain_threshold(labels, probabilities, labels, probabilities, 0.78)  # >= 0.8: 4 of 5; >= 0.6: 5 of 7
    assert lower["threshold"] == pytest.approx(0.8) and lower["test_answered"] == 5 and lower["test_accuracy"] == 0.8
    wrong_first = decisions.abstain_threshold(1 - labels, probabilities, labels, probabilities, 0.98)
    assert wrong_first["reached"] is False and wrong_first["threshold"] is None and "uncertain" in wrong_first["note"]


def test_a_run_is_calibrated_from_its_predictions_file_with_intervals_and_where_it_breaks():
    val_labels, val_p = overconfident(400, 3.0, seed=3)
    test_labels, test_p = overconfident(600, 3.0, seed=4)
    predictions = pd.concat([table("val", val_labels, val_p), table("test", test_labels, test_p, first=400)], ignore_index=True)
    test_rows = predictions[predictions["split"] == "test"]
    shortcuts = pd.DataFrame({"path": test_rows["path"], "source": np.where(np.arange(600) % 3 == 0, "A", "B")})
    for i, name in enumerate(CLASSES):  # with the lungs gone: a confident constant answer
        shortcuts[f"{cal.NO_LUNGS_PREFIX}{name}"] = [0.97 if i == 2 else 0.01] * 600
    record, calibrated = cal.calibrate(predictions, CLASSES, {"target_sensitivity": {"COVID": 0.9}, "target_accuracy": 0.9},
                                       shortcuts)
    assert record["temperature"] == pytest.approx(3.0, rel=0.25)
    ece = record["test"]["ece"]
    assert ece["after"]["value"] < ece["before"]["value"] and ece["helped"] == "yes"
    assert ece["before"]["low"] <= ece["before"]["value"] <= ece["before"]["high"]
    assert "bootstrap" in ece["before"]["method"]
    # the calibrated columns are softmax(log p / T) of the raw ones, and predictions.csv keeps its own columns
    raw = calibrated[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(calibrated[[f"calibrated_p_{c}" for c in CLASSES]].to_numpy(),
                               cal.temperature_scale(raw, record["temperature"]))
    assert list(calibrated.columns[:8]) == list(predictions.columns)
    assert record["operating_points"]["COVID"]["target_sensitivity"]["val_sensitivity"] >= 0.9
    assert {row["group"] for row in record["by_source"]} == {"A", "B"}
    assert sum(row["images"] for row in record["by_source"]) == 600
    no_lungs = record["no_lungs"]
    expected_accuracy = float(np.mean(test_labels == 2))
    assert no_lungs["accuracy"] == pytest.approx(expected_accuracy)
    assert no_lungs["ece"] == pytest.approx(no_lungs["mean_confidence"] - expected_accuracy)
    json.dumps(record)  # goes into metrics.json as it is
    lines = "\n".join(calibration_lines(record))
    for words in ("Temperature T = ", "ECE", "COVID at target sensitivity 0.9", "Abstaining below", "lungs removed", "per source"):
        assert words in lines
    # the summary's lines for the baseline: the mean over its seeds of the same figures
    seeds = [SimpleNamespace(status="done", metrics={"calibration": record})] * 2
    summary = "\n".join(source_lines({"mn_resultset1": seeds}, "mn_resultset1"))
    first = record["by_source"][0]
    assert f"{first['group']} {first['ece']:.3f} (accuracy {first['accuracy']:.3f}" in summary
    assert f"mean calibrated confidence {no_lungs['mean_confidence']:.3f} at accuracy {expected_accuracy:.3f}" in summary


def test_a_small_validation_split_that_makes_calibration_worse_is_said_so():
    # validation overconfident, test not: the temperature fitted on validation over-softens test
    val_labels, val_p = overconfident(300, 4.0, seed=5)
    test_labels, test_p = overconfident(800, 1.0, seed=6)
    predictions = pd.concat([table("val", val_labels, val_p), table("test", test_labels, test_p, first=300)], ignore_index=True)
    record, _ = cal.calibrate(predictions, CLASSES)
    assert record["test"]["ece"]["helped"] == "no (worse)"
    assert "scaling lowered ECE: no (worse)" in "\n".join(calibration_lines(record))


def test_calibration_settings_come_from_experiments_json_and_bad_ones_are_refused(tmp_path):
    assert calibration_settings(load_config()) == {"target_sensitivity": {"COVID": 0.95}, "target_accuracy": 0.98}
    config = json.loads((load_config.__defaults__[0]).read_text())
    config["calibration"]["target_accuracy"] = 1.5
    config["calibration"]["target_sensitivity"] = {"COVID": "high"}
    bad = tmp_path / "experiments.json"
    bad.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"experiments.json, 'calibration': target_sensitivity .* target_accuracy must"):
        load_config(bad)


def test_the_summary_reports_temperature_and_ece_per_configuration_beside_accuracy(tmp_path):
    from tests.conftest import write_finished_run

    from covid_mobilenet.analysis.results import collect_results
    from covid_mobilenet.analysis.tables import runs_table, summary_table

    config = {"experiments": {"mn_resultset1": {"hidden_layers": 1, "dense_units": 8, "learning_rate": 1e-5},
                              "mn_resultset2": {"hidden_layers": 1, "dense_units": 16, "learning_rate": 1e-5}}}
    write_finished_run(tmp_path, "mn_resultset1", 1)
    write_finished_run(tmp_path, "mn_resultset1", 2, correct=np.arange(40) % 4 != 0)
    folder = write_finished_run(tmp_path, "mn_resultset2", 1)
    record = json.loads((folder / "metrics.json").read_text())["calibration"]
    rows = summary_table(collect_results(tmp_path, config, allow_demo=True), config).set_index("Model")
    one = rows.loc["mn_resultset2"]
    assert one["Temperature"] == pytest.approx(record["temperature"])
    assert (one["ECE"], one["ECE CI low"], one["ECE CI high"]) == pytest.approx(
        (record["test"]["ece"]["before"]["value"], record["test"]["ece"]["before"]["low"], record["test"]["ece"]["before"]["high"]))
    two = rows.loc["mn_resultset1"]  # two seeds: the mean and a t-interval over them
    assert two["ECE CI low"] <= two["ECE"] <= two["ECE CI high"] and two["Seeds"] == 2
    per_run = runs_table(collect_results(tmp_path, config, allow_demo=True)).set_index(["Model", "Seed"])
    assert per_run.loc[("mn_resultset2", 1), "Calibrated ECE"] == pytest.approx(record["test"]["ece"]["after"]["value"])
    assert two["ECE"] == pytest.approx(per_run.loc["mn_resultset1", "ECE"].mean())
    text = "\n".join(calibration_markdown(rows.reset_index()))
    assert "| mn_resultset2 | 1 |" in text and "How to read it: ECE" in text


def test_a_target_class_the_data_lacks_is_refused_before_training(monkeypatch):
    from covid_mobilenet.run import steps

    assert steps.checked_calibration_settings(CLASSES)["target_sensitivity"] == {"COVID": 0.95}
    with pytest.raises(ValueError, match=r"target_sensitivity: \['COVID'\] is not a class of this data set"):
        steps.checked_calibration_settings(["cat", "dog"])
    config = load_config()
    monkeypatch.setattr(steps, "load_config", lambda: {**config, "calibration": {"target_sensitivity": {"Normal": 0.9}}})
    assert steps.checked_calibration_settings(CLASSES) == {"target_sensitivity": {"Normal": 0.9}, "target_accuracy": 0.98}


def _calibrated_predictions(count: int, rng: np.random.Generator, classes: int = 4):
    """Probabilities and labels drawn from them: a perfectly calibrated model, whose true calibration error is 0."""
    probabilities = rng.dirichlet(np.full(classes, 0.5), count)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return labels, probabilities


def test_the_debiased_calibration_error_covers_zero_on_calibrated_predictions_where_the_plug_in_ece_never_does():
    """On 600 perfectly calibrated predictions the plug-in ECE's bootstrap interval never held the true 0 (the point
    at its lower edge); the debiased estimate's interval holds it in most trials (measured on 40 other seeds: 82% at
    600 images, 88% at 100; not the nominal 95%, which the README says), and still finds overconfidence."""
    from covid_mobilenet.analysis.uncertainty import bootstrap_interval

    plug_in_covers = debiased_covers = 0
    squared = []  # (plug-in ECE squared, debiased squared error) per trial
    for trial in range(20):
        labels, probabilities = _calibrated_predictions(600, np.random.default_rng(trial))
        rows = np.arange(len(labels))
        plug_in = bootstrap_interval(lambda i: cal.expected_calibration_error(labels[i], probabilities[i]), rows)
        debiased = bootstrap_interval(lambda i: cal.debiased_squared_calibration_error(labels[i], probabilities[i]), rows)
        plug_in_covers += plug_in["low"] <= 0 <= plug_in["high"]
        debiased_covers += debiased["low"] <= 0 <= debiased["high"]
        squared.append((cal.expected_calibration_error(labels, probabilities) ** 2,
                        cal.debiased_squared_calibration_error(labels, probabilities)))
    assert plug_in_covers == 0 and debiased_covers >= 14, (plug_in_covers, debiased_covers)
    plug_in_bias, debiased_bias = np.mean(squared, axis=0)
    assert abs(debiased_bias) < plug_in_bias / 4, (plug_in_bias, debiased_bias)
    labels, probabilities = _calibrated_predictions(600, np.random.default_rng(99))
    overconfident = cal.temperature_scale(probabilities, 0.5)
    rows = np.arange(len(labels))
    found = bootstrap_interval(lambda i: cal.debiased_squared_calibration_error(labels[i], overconfident[i]), rows)
    assert found["low"] > 0, "miscalibration beyond sampling noise is still found"


def test_nll_and_brier_are_scikit_learn_s_and_defined_once():
    from sklearn import metrics as skm

    from covid_mobilenet.analysis import metrics

    labels, probabilities = _calibrated_predictions(200, np.random.default_rng(0))
    assert metrics.negative_log_likelihood(labels, probabilities) == pytest.approx(skm.log_loss(labels, probabilities, labels=range(4)))
    if "scale_by_half" in inspect.signature(skm.brier_score_loss).parameters:  # multi-class Brier: scikit-learn 1.7
        reference = skm.brier_score_loss(labels, probabilities, labels=range(4), scale_by_half=False)
    else:  # the lowest scikit-learn requirements.txt allows: its definition, the squared distance to the one-hot label
        reference = np.mean(np.sum((probabilities - np.eye(4)[labels]) ** 2, axis=1))
    assert metrics.brier_score(labels, probabilities) == pytest.approx(reference)
    assert metrics.loss_and_accuracy(labels, probabilities)["loss"] == metrics.negative_log_likelihood(labels, probabilities)
    assert cal.SCORES["nll"] is metrics.negative_log_likelihood and cal.SCORES["brier"] is metrics.brier_score
    assert not hasattr(cal, "scale"), "temperature scaling is temperature_scale; 'calibration' means nothing else"
