"""The unfamiliar-image guard: how unlike a run's training images an image is, from the trained model's pooled
backbone features, and the threshold above which the product answers "unfamiliar" instead of a class.

Calibration cannot catch an image unlike the training ones: it is fitted on validation images, which are like
them. A model trained on one collection (or on the demo's synthetic films) answers a real film, a photo or a CT
slice with a class, often confidently. The guard scores each image by its distance to the training features:

- ``mahalanobis`` (Lee et al. 2018): the smallest Mahalanobis distance to the class means, with one covariance
  shared by the classes and shrunk by Ledoit-Wolf (scikit-learn's ``LedoitWolf``), so that it is well
  conditioned when the images are fewer than the features. Saved as the class means and the precision matrix:
  a fixed size (features x features) whatever the number of training images.
- ``knn`` (Sun et al. 2022): the distance from the L2-normalised features to the k-th nearest normalised training
  feature (scikit-learn's ``NearestNeighbors``). Saved as the training features themselves (at most
  ``KNN_BANK`` of them, a random sample).

The threshold is the score that ``1 - FLAGGED_ON_VALIDATION`` (95%) of the run's validation images stay under,
chosen on validation only: about 5% of images like the training ones are flagged, by construction. What it can
and cannot see is ``SEES`` and ``BLIND``, which the model card repeats. Free of TensorFlow: the features come in
as arrays (``model/pooled.py`` computes them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METHODS = ("mahalanobis", "knn")
DEFAULT_METHOD = "mahalanobis"  # chosen by measurement: README, "Unfamiliar images"
FLAGGED_ON_VALIDATION = 0.05
KNN_K = 10
KNN_BANK = 5000  # training features kept for knn (a random sample beyond that)
SEES = ("images far from every training image in what the backbone sees: another kind of picture (a photo, a CT "
        "slice, text, a blank image: every one tried was flagged on the demo's best run, README) and films much "
        "unlike the training films (which ones, only a measurement on them tells: `benchmark --unfamiliar`)")
BLIND = ("a film from a new hospital or scanner that looks like the training films passes it, and so does a "
         "disease the model was never shown: a familiar-looking image is no promise that the answer is right")


@dataclass
class Guard:
    """A fitted guard: its method, threshold and the statistics it needs (``arrays``), saved with the model."""

    method: str
    threshold: float
    arrays: dict[str, np.ndarray] = field(repr=False)

    def scores(self, features) -> np.ndarray:
        """How unlike the training images each row of ``features`` (pooled backbone features) is; higher is less like."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dimensions:
            raise ValueError(f"the guard takes pooled features of {self.dimensions} values per image, not {features.shape}")
        finite = np.isfinite(features).all(axis=1)
        scores = np.full(len(features), np.inf)  # features that overflowed: like no training image
        if self.method == "mahalanobis":
            scores[finite] = _mahalanobis(features[finite] / float(self.arrays.get("scale", 1.0)), self.arrays["means"],
                                          self.arrays["precision"])
        else:
            scores[finite] = _knn_distance(features[finite], self.arrays["bank"], int(self.arrays["k"]))
        return scores

    def flagged(self, features) -> np.ndarray:
        return self.scores(features) > self.threshold

    @property
    def dimensions(self) -> int:
        return int(self.arrays["means" if self.method == "mahalanobis" else "bank"].shape[1])

    def save(self, path: str | Path) -> Path:
        """Written as a NumPy .npz (arrays only: loading it runs no code)."""
        from ..common.files import atomic_path

        with atomic_path(Path(path)) as temporary:
            with open(temporary, "wb") as file:
                np.savez(file, method=np.array(self.method), threshold=np.array(self.threshold), **self.arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Guard":
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files if name not in ("method", "threshold")}
            return cls(str(saved["method"]), float(saved["threshold"]), arrays)


def _mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """The smallest squared Mahalanobis distance to a class mean, square-rooted."""
    precision = precision.astype(np.float64)
    best = np.full(len(features), np.inf)
    for mean in means.astype(np.float64):
        centred = features - mean
        best = np.minimum(best, ((centred @ precision) * centred).sum(axis=1))  # one matrix product per class
    return np.sqrt(np.clip(best, 0, None))


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _knn_distance(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    neighbours = NearestNeighbors(n_neighbors=min(k, len(bank))).fit(bank.astype(np.float64))
    distances, _ = neighbours.kneighbors(_normalised(features))
    return distances[:, -1]


def fit(train_features, train_labels, val_features, method: str = DEFAULT_METHOD, *, seed: int = 0) -> Guard:
    """A guard fitted on the training images' features (and labels), its threshold chosen on validation's."""
    if method not in METHODS:
        raise ValueError(f"unfamiliar-image method {method!r}: choose one of {', '.join(METHODS)}")
    train_features, val_features = np.asarray(train_features, np.float64), np.asarray(val_features, np.float64)
    finite = np.isfinite(train_features).all(axis=1)  # an image whose features overflowed describes nothing
    train_features, train_labels = train_features[finite], np.asarray(train_labels)[finite]
    val_features = val_features[np.isfinite(val_features).all(axis=1)]
    if len(train_features) < 2 or len(val_features) < 1:
        raise ValueError("the unfamiliar-image guard needs at least two training images and one validation image "
                         "with finite features")
    if method == "mahalanobis":
        from sklearn.covariance import LedoitWolf

        # one scale for all features (the distance does not depend on it), so that float32 holds the precision of
        # features however small (a random backbone's can be 1e-20) or large
        scale = float(np.sqrt(np.mean(train_features ** 2))) or 1.0
        scaled = train_features / scale
        classes = np.unique(train_labels)
        means = np.stack([scaled[train_labels == c].mean(axis=0) for c in classes])
        centred = scaled - means[np.searchsorted(classes, train_labels)]
        estimate = LedoitWolf(assume_centered=True).fit(centred)
        arrays = {"means": means.astype(np.float32), "precision": estimate.precision_.astype(np.float32),
                  "scale": np.array(scale), "shrinkage": np.array(estimate.shrinkage_)}
    else:
        bank = _normalised(train_features)
        if len(bank) > KNN_BANK:
            bank = bank[np.sort(np.random.default_rng(seed).choice(len(bank), KNN_BANK, replace=False))]
        arrays = {"bank": bank.astype(np.float16), "k": np.array(min(KNN_K, len(bank)))}
    guard = Guard(method, 0.0, arrays)
    guard.threshold = float(np.quantile(guard.scores(val_features), 1 - FLAGGED_ON_VALIDATION))
    if not np.isfinite(guard.threshold):
        raise ValueError("the unfamiliar-image guard's threshold is not finite: the features of too many validation "
                         "images are far beyond float precision")
    return guard


def separation(familiar_scores, unfamiliar_scores) -> float:
    """AUROC of the score between images like the training ones (negatives) and others (positives): 1 separates
    them all, 0.5 not at all."""
    from sklearn.metrics import roc_auc_score

    familiar, unfamiliar = np.asarray(familiar_scores), np.asarray(unfamiliar_scores)
    if not len(familiar) or not len(unfamiliar):
        return float("nan")
    return float(roc_auc_score(np.r_[np.zeros(len(familiar)), np.ones(len(unfamiliar))], np.r_[familiar, unfamiliar]))


def summary(guard: Guard, test_scores, shifted: dict | None = None, *, seconds: float | None = None) -> dict:
    """metrics.json's ``unfamiliar``: the method, its threshold, the share of test images flagged (with its
    Wilson interval) and, when the run has a shifted set (``shifted``: name, scores), the AUROC between the test
    images like the training ones and it, and its share flagged."""
    from .uncertainty import wilson_interval

    test_scores = np.asarray(test_scores)
    flagged = int((test_scores > guard.threshold).sum())
    record = {"method": guard.method, "features": "the trained model's backbone, average-pooled",
              "dimensions": guard.dimensions, "threshold": guard.threshold,
              "threshold_rule": f"{1 - FLAGGED_ON_VALIDATION:.0%} of validation images score at or below it",
              "test_flagged": {"images": flagged, "of": int(len(test_scores)),
                               "share": flagged / len(test_scores) if len(test_scores) else float("nan"),
                               "interval": wilson_interval(flagged, len(test_scores)) if len(test_scores) else None}}
    if guard.method == "mahalanobis":
        record["shrinkage"] = float(guard.arrays["shrinkage"])
    if seconds is not None:
        record["fit_seconds"] = seconds
    if shifted is not None:
        scores = np.asarray(shifted["scores"])
        record["shifted"] = {"name": shifted["name"], "images": int(len(scores)),
                             "share_flagged": float((scores > guard.threshold).mean()) if len(scores) else float("nan"),
                             "auroc": separation(shifted["familiar_scores"], scores)}
    return record
