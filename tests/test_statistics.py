"""The statistics of results, against hand-computed cases, and the comparisons built on them."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from covid_mobilenet.analysis import comparison, results, tables, uncertainty
from covid_mobilenet.analysis import text as summary_text
from covid_mobilenet.common.run_layout import PREDICTIONS_FILE


def test_wilson_interval_of_90_correct_out_of_100():
    interval = uncertainty.wilson_interval(90, 100)
    assert interval["low"] == pytest.approx(0.826, abs=5e-4) and interval["high"] == pytest.approx(0.945, abs=5e-4)


def test_mcnemar_exact_with_10_and_2_discordant_images():
    first = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)
    second = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)
    result = uncertainty.mcnemar_exact(first, second)
    assert (result["only_first_correct"], result["only_second_correct"]) == (10, 2)
    assert result["p_value"] == pytest.approx(0.0386, abs=5e-4)  # 2 * P(X <= 2), X ~ Binomial(12, 1/2)


def test_a_configuration_compared_with_itself_is_never_significant():
    rng = np.random.default_rng(0)
    correct = [rng.uniform(size=200) < 0.8 for _ in range(3)]
    for seeds in (correct[:1], correct):
        paired = uncertainty.paired_difference(seeds, seeds)
        assert paired["difference"] == 0 and paired["p_value"] == 1.0
        assert paired["interval"]["low"] <= 0 <= paired["interval"]["high"]
    significant, adjusted = uncertainty.holm([1.0, 1.0, 0.5])
    assert not any(significant)


def test_t_interval_over_seeds():
    interval = uncertainty.t_interval([0.80, 0.82, 0.84])
    assert interval["mean"] == pytest.approx(0.82) and interval["sd"] == pytest.approx(0.02)
    half_width = 4.302653 * 0.02 / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert interval["low"] == pytest.approx(0.82 - half_width) and interval["high"] == pytest.approx(0.82 + half_width)
    with pytest.raises(ValueError):
        uncertainty.t_interval([0.8])


def test_holm_adjusts_step_down():
    significant, adjusted = uncertainty.holm([0.01, 0.04, 0.03])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06]) and significant == [True, False, False]


def test_single_run_intervals_are_reproducible_and_contain_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    predicted = np.where(rng.uniform(size=300) < 0.8, labels, rng.integers(0, 4, 300))
    first = uncertainty.single_run_intervals(labels, predicted, 4)
    assert first == uncertainty.single_run_intervals(labels, predicted, 4), "fixed bootstrap seed"
    accuracy = (labels == predicted).mean()
    assert first["accuracy"]["low"] < accuracy < first["accuracy"]["high"]
    assert first["macro_f1"]["low"] < first["macro_f1"]["high"] and "1000 resamples" in first["macro_f1"]["method"]


def test_macro_f1_and_balanced_accuracy_are_scikit_learn_s():
    """Counted from the confusion matrix for the bootstrap's thousand resamples; equal to scikit-learn's, a class
    never predicted or never present included."""
    from sklearn import metrics as skm

    rng = np.random.default_rng(2)
    for labels, predicted in [(rng.integers(0, 4, 200), rng.integers(0, 4, 200)),
                              (rng.integers(0, 3, 50), rng.integers(1, 4, 50)),  # class 3 never true, 0 never predicted
                              (np.zeros(10, int), np.zeros(10, int))]:
        f1, balanced = uncertainty.macro_f1_and_balanced_accuracy(uncertainty.confusion_counts(labels, predicted, 4))
        assert f1 == pytest.approx(skm.f1_score(labels, predicted, labels=range(4), average="macro", zero_division=0))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert balanced == pytest.approx(skm.balanced_accuracy_score(labels, predicted))
        assert np.array_equal(uncertainty.confusion_counts(labels, predicted, 4),
                              skm.confusion_matrix(labels, predicted, labels=range(4)))


def fake_run(root, name, seed, correct, accuracy_only=False):
    """A finished run's files: metrics.json and predictions.csv, where image i is right when correct[i]."""
    folder = root / name / f"seed-{seed}"
    folder.mkdir(parents=True)
    paths = [f"COVID/images/COVID-{i}.png" for i in range(len(correct))]
    pd.DataFrame({"path": paths, "split": "test", "true": "COVID",
                  "predicted": ["COVID" if ok else "Normal" for ok in correct]}).to_csv(folder / PREDICTIONS_FILE, index=False)
    n, right = len(correct), int(np.sum(correct))
    metrics = {"params": {"hidden_layers": 1, "dense_units": 8, "learning_rate": 1e-5, "seed": seed},
               "test": {"accuracy": right / n, "macro_f1": 0.5, "confusion_matrix": [[right, n - right], [0, 0]],
                        "per_class": {"COVID": {"support": n, "sensitivity": right / n}, "Normal": {"support": 0}}},
               "train_seconds": 10.0, "epochs_run": 2, "dataset": {"root": "/data", "split_sha256": "ab" * 32}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_summary_compares_seed_by_seed_and_judges_the_claims(tmp_path):
    rng = np.random.default_rng(2)
    config = {
        "baseline": "base",
        "claims": [{"claim": "Better is better.", "than": "base", "better": ["better"]},
                   {"claim": "Same is worse.", "than": "base", "worse": ["same"]}],
        "experiments": {"base": {"reference": {"test_accuracy": 0.9}}, "better": {}, "same": {}},
    }
    for seed in (1, 2):
        base = rng.uniform(size=400) < 0.6
        fake_run(tmp_path, "base", seed, base)
        fake_run(tmp_path, "better", seed, base | (rng.uniform(size=400) < 0.5))  # right wherever base is, and more
        fake_run(tmp_path, "same", seed, base)
    collected = results.collect_results(tmp_path, config)
    assert [run.seed for run in collected["base"]] == [1, 2]
    comparisons = comparison.compare_with_baseline(collected, "base")
    assert comparisons["better"].significant and comparisons["better"].difference > 0.15
    assert comparisons["same"].difference == 0 and not comparisons["same"].significant
    assert comparisons["better"].low < comparisons["better"].difference < comparisons["better"].high
    verdicts = {v["claim"]: v["verdict"] for v in comparison.judge_claims(config["claims"], comparisons)}
    assert verdicts == {"Better is better.": "supported", "Same is worse.": "not shown"}

    table = tables.summary_table(collected, config, comparisons).set_index("Model")
    assert table.loc["base", "Seeds"] == 2 and "t-interval over 2 seeds" in table.loc["base", "Interval"]
    assert table.loc["better", "Significant"] and not table.loc["same", "Significant"]
    text = summary_text.markdown_table(table.reset_index(), baseline="base")
    assert "\\*" in text.split("**better**")[1].split("\n")[0], "the significant difference is marked"
    assert "\\*" not in text.split("**same**")[1].split("\n")[0]


def test_a_single_seed_uses_the_runs_wilson_interval_and_other_splits_are_not_compared(tmp_path):
    fake_run(tmp_path, "base", 5, np.arange(100) < 90)
    fake_run(tmp_path / "other", "x", 5, np.arange(50) < 40)
    runs = results.collect_results(tmp_path, {"experiments": {"base": {}}})["base"]
    stats = comparison.accuracy_summary(runs)
    assert stats["low"] == pytest.approx(0.826, abs=5e-4) and "one seed" in stats["method"]
    other = results.read_result(tmp_path / "other" / "x" / "seed-5")
    other.name = "x"
    result = comparison.compare("x", [other], "base", runs)
    assert result.problem and "different images" in result.problem and result.p_value is None


def test_a_difference_that_flips_between_seeds_is_not_called_real(tmp_path):
    """Each seed alone differs clearly (McNemar), but in opposite directions: the interval over seeds spans zero."""
    config = {"experiments": {"base": {}, "flip": {}}}
    half = np.arange(300) < 150
    fake_run(tmp_path, "base", 1, half)
    fake_run(tmp_path, "flip", 1, np.ones(300, bool))  # seed 1: right everywhere, +50 points
    fake_run(tmp_path, "base", 2, half)
    fake_run(tmp_path, "flip", 2, np.zeros(300, bool))  # seed 2: wrong everywhere, -50 points
    comparisons = comparison.compare_with_baseline(results.collect_results(tmp_path, config), "base")
    flip = comparisons["flip"]
    assert flip.p_value < 1e-10 and flip.holm_p_value < 0.05, "McNemar finds each seed's difference"
    assert flip.low < 0 < flip.high and not flip.significant
    assert -1 <= flip.low and flip.high <= 1, "clipped to the possible range"
