"""The data set's audit, once per data set: ``<results_dir>/audit-<data hash>.json``.

Made from a finished run's parameters (its data, split settings, image size and backbone weights): the
near-duplicate record (``data/grouping.py``) and the source probe (``analysis/source_probe.py``) on the frozen
backbone's last convolutional maps, pooled over their spatial positions two ways (mean and max), folds keeping
near-duplicate groups whole. The features come from fast mode's cache
(``model/features.py``): computed once for the data, split, image size and weights, and shared with ``--fast``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..analysis.audit_summary import audit_inputs
from ..analysis.source_probe import POOLINGS, pooled, spatial_probe
from ..common.files import write_json
from ..common.paths import resolve_path
from ..common.run_layout import METRICS_FILE
from ..data.grouping import data_hash, split_for
from ..data.layout import SPLITS
from ..data.locate import locate_dataset
from ..data.pipeline import split_arrays
from ..data.scan import scan_dataset
from ..data.sources import read_sources, sources_per_class
from ..model.features import RowReader, cached_features


CHUNK = 512  # images' maps read at once


def audit_file_name(images) -> str:
    return f"audit-{data_hash(images)[:12]}.json"


def audit(run: Path, *, results_dir: Path | None = None) -> Path:
    """Audit the data set of the finished ``run`` and write the record beside its results (``results_dir``)."""
    metrics = json.loads((Path(run) / METRICS_FILE).read_text())
    params = metrics["params"]
    root = locate_dataset(Path(metrics["dataset"]["root"]))
    index = scan_dataset(root, strict=params["strict_data"], cache_dir=resolve_path(params["feature_dir"]))
    split, groups, duplicates = split_for(root, index.images, params, feature_dir=resolve_path(params["feature_dir"]))
    cache = cached_features(index, split, feature_dir=resolve_path(params["feature_dir"]), image_size=params["image_size"],
                            weights=params["weights"], seed=params["seed"], batch_size=params["batch_size"])
    shape = cache.feature_shape
    features, paths, labels = {pooling: [] for pooling in POOLINGS}, [], []
    for subset in SPLITS:
        subset_paths, subset_labels = split_arrays(split, root, index.class_names, subset)
        reader = RowReader(cache.folder / f"{subset}.f16", len(subset_paths), shape)
        for start in range(0, len(subset_paths), CHUNK):  # a chunk of maps at a time: the real train split is GBs
            maps = reader.rows(np.arange(start, min(start + CHUNK, len(subset_paths))))
            for pooling in POOLINGS:
                features[pooling].append(pooled(maps, pooling))
        paths += [Path(p).relative_to(root).as_posix() for p in subset_paths]
        labels += [index.class_names[label] for label in subset_labels]
    of = read_sources(root, paths, labels).of
    group_of = dict(zip(groups.images["path"], groups.images["group"]))
    record = {
        "data_sha256": data_hash(index.images),
        "root": str(root),
        "images": int(len(index.images)),
        "demo": bool(metrics["dataset"].get("demo")),
        "duplicates": duplicates,
        "sources_per_class": sources_per_class(root, index.images),
        "source_probe": spatial_probe({pooling: np.concatenate(rows) for pooling, rows in features.items()}, labels,
                                      [of[p] for p in paths], [group_of[p] for p in paths]),
        "features": {"cache": cache.folder.name, "image_size": params["image_size"], "weights": str(params["weights"]),
                     "positions": int(np.prod(shape[:-1])),
                     "pooled": f"mean and maximum over {int(np.prod(shape[:-1]))} positions of {shape[-1]} channels"},
        "from_run": str(run),
        "inputs": audit_inputs(metrics),  # a later sweep with the same ones reuses this record
    }
    return write_json(Path(results_dir or resolve_path(params["results_dir"])) / audit_file_name(index.images), record)
