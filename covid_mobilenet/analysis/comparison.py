"""Which differences are real: every configuration's seeds summarised, and each compared with the baseline.

Reads finished runs' files only: ``metrics.json`` for a run's numbers, ``predictions.csv`` for
image-by-image comparisons. Two configurations are compared seed by seed on the same test images
(the split's seed is shared by every training seed of a sweep): the paired difference in test
accuracy with its 95% interval, McNemar's exact test per seed, and Holm's correction across the
comparisons with the baseline. A difference counts as significant when both agree: its Holm-corrected
McNemar p-value is below 0.05 (at every seed) and its 95% interval excludes zero (with several seeds,
a t-interval over them, so a difference that does not hold across seeds is not called real). The
study's claims (experiments.json) are judged on those comparisons.

Intervals are clipped to what the quantity can be (accuracy in [0, 1], a difference in [-1, 1]):
with two seeds a t-interval has one degree of freedom and is wider than that.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ..common.run_layout import PREDICTIONS_FILE
from . import uncertainty


@dataclass
class Comparison:
    """``name`` against the baseline on the seeds both finished: ``name`` minus baseline."""

    name: str
    baseline: str
    seeds: list[int]
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None  # McNemar's exact test, the largest over seeds
    holm_p_value: float | None = None
    significant: bool = False
    mcnemar: list[dict] = field(default_factory=list)
    problem: str | None = None

    @property
    def direction(self) -> str:
        if not self.significant or self.difference is None:
            return "no significant difference"
        return "better" if self.difference > 0 else "worse"


def accuracy_summary(runs: list) -> dict:
    """Test accuracy over a configuration's finished seeds: mean, SD and 95% interval.

    Two or more seeds: the t-interval over seeds. One seed: the run's Wilson interval (test images).
    """
    done = [run for run in runs if run.status == "done"]
    accuracies = [run.metrics["test"]["accuracy"] for run in done]
    if len(done) >= 2:
        interval = uncertainty.t_interval(accuracies)
        return {"seeds": len(done), "mean": interval["mean"], "sd": interval["sd"], "low": max(interval["low"], 0.0),
                "high": min(interval["high"], 1.0), "method": interval["method"]}
    if len(done) == 1:
        test = done[0].metrics["test"]
        wilson = test.get("intervals", {}).get("accuracy") or uncertainty.wilson_interval(
            int(np.trace(test["confusion_matrix"])), int(np.sum(test["confusion_matrix"])))
        return {"seeds": 1, "mean": accuracies[0], "sd": float("nan"), "low": wilson["low"], "high": wilson["high"],
                "method": wilson["method"] + " (one seed: test images only)"}
    return {"seeds": 0, "mean": float("nan"), "sd": float("nan"), "low": float("nan"), "high": float("nan"), "method": ""}


def test_correctness(run) -> pd.Series | None:
    """Whether each test image was classified correctly by ``run``, indexed by its path in the split table; None
    without its predictions.csv."""
    if not (run.folder / PREDICTIONS_FILE).is_file():
        return None
    table = pd.read_csv(run.folder / PREDICTIONS_FILE)
    test = table[table["split"] == "test"]
    return pd.Series((test["true"] == test["predicted"]).to_numpy(), index=test["path"].to_numpy())


def compare(name: str, runs: list, baseline: str, baseline_runs: list,
            correctness: Callable = test_correctness) -> Comparison:
    """``name``'s runs against the baseline's, on the seeds both finished with their predictions (``correctness``:
    a run's per-image right or wrong, None when it has none; by default on its test split)."""
    def answered(some: list) -> dict:
        found = {run.seed: correctness(run) for run in some if run.status == "done"}
        return {seed: right for seed, right in found.items() if right is not None}

    ours, theirs = answered(runs), answered(baseline_runs)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return Comparison(name, baseline, [], problem="no seed finished by both with its predictions")
    first, second = [], []
    for seed in seeds:
        base, other = theirs[seed], ours[seed]
        if set(base.index) != set(other.index):
            return Comparison(name, baseline, seeds, problem=f"seed {seed}: the two runs were tested on different images "
                                                              "(another split); they cannot be compared image by image")
        first.append(base.sort_index().to_numpy())
        second.append(other.sort_index().to_numpy())
    paired = uncertainty.paired_difference(first, second)
    return Comparison(name, baseline, seeds, paired["difference"], max(paired["interval"]["low"], -1.0),
                      min(paired["interval"]["high"], 1.0), paired["p_value"], mcnemar=paired["mcnemar"])


def compare_with_baseline(collected: dict[str, list], baseline: str,
                          correctness: Callable = test_correctness) -> dict[str, Comparison]:
    """Every configuration but the baseline against it, with Holm's correction across those compared."""
    if baseline not in collected:
        return {}
    comparisons = {name: compare(name, runs, baseline, collected[baseline], correctness)
                   for name, runs in collected.items() if name != baseline}
    tested = [c for c in comparisons.values() if c.p_value is not None]
    significant, adjusted = uncertainty.holm([c.p_value for c in tested])
    for comparison, is_significant, p_value in zip(tested, significant, adjusted):
        excludes_zero = comparison.low > 0 or comparison.high < 0
        comparison.significant, comparison.holm_p_value = is_significant and excludes_zero, p_value
    return comparisons


def judge_claims(claims: list[dict], comparisons: dict[str, Comparison]) -> list[dict]:
    """For each claim of the study: supported, contradicted, or not shown by our runs, with its evidence.

    A claim names configurations that should be ``better`` or ``worse`` than the one it names as ``than``
    (the baseline). Supported: every one differs significantly in the claimed direction. Contradicted:
    any differs significantly the other way. Otherwise not shown (the runs cannot tell).
    """
    verdicts = []
    for claim in claims:
        expected = {name: "better" for name in claim.get("better", [])} | {name: "worse" for name in claim.get("worse", [])}
        evidence = [comparisons.get(name) for name in expected]
        if any(c is None or c.problem or c.difference is None for c in evidence):
            verdict = "not tested"
        elif all(c.direction == expected[c.name] for c in evidence):
            verdict = "supported"
        elif any(c.direction not in (expected[c.name], "no significant difference") for c in evidence):
            verdict = "contradicted"
        else:
            verdict = "not shown"
        verdicts.append({"claim": claim["claim"], "verdict": verdict, "expected": expected,
                         "evidence": [c for c in evidence if c is not None]})
    return verdicts
