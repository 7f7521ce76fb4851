"""Which images must stay together in the split, and which cannot be trusted: near-duplicate groups (exact copies
included) and label conflicts, found before the split (``data/duplicates.py`` finds the pairs).

A group whose images carry more than one label is a label conflict: the same picture filed under two classes. By
default its images are left out of training, validation and testing (``keep_label_conflicts`` keeps them, each
group then going wholly to one split under its most common label). Every image of a group of two or more goes to
``<results_dir>/duplicates-<data hash>-split-<split hash>.csv``; the run's metrics.json gets the counts. Free of TensorFlow.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.files import write_csv
from .layout import DatasetError
from .split import Split, split_images
from .duplicates import HASH_DISTANCE, PIXEL_SIMILARITY, _normalised, components, confirmed_pairs, fingerprints

LEFT_OUT = "left out (label conflict)"


def data_hash(images: pd.DataFrame) -> str:
    """SHA-256 over the sorted (path, label, file SHA-256) rows: the data set's content, not its split."""
    rows = sorted(f"{p}\t{l}\t{s}\n" for p, l, s in zip(images["path"], images["label"], images["sha256"]))
    return hashlib.sha256("".join(rows).encode("utf-8")).hexdigest()


def duplicates_file_name(data_sha256: str, split_sha256: str) -> str:
    """The table's name: the data set's content and the split it records (its seed, fractions and what was left
    out), so that a sweep with another split never overwrites it."""
    return f"duplicates-{data_sha256[:12]}-split-{split_sha256[:12]}.csv"


@dataclass
class Groups:
    """The scanned images with their group; the table of every image in a group of two or more."""

    images: pd.DataFrame  # path, label, sha256, group
    table: pd.DataFrame  # group, path, class, kind, hash_distance, pixel_similarity, conflict (split added later)
    keep_conflicts: bool

    @property
    def conflicts(self) -> pd.DataFrame:
        return self.table[self.table["conflict"]]

    def for_split(self) -> pd.DataFrame:
        """The images the split divides: all of them, or without the label conflicts' images."""
        if self.keep_conflicts:
            return self.images
        return self.images[~self.images["path"].isin(self.conflicts["path"])].reset_index(drop=True)

    def with_splits(self, split_table: pd.DataFrame) -> pd.DataFrame:
        """The table with each image's split (``LEFT_OUT`` for a label conflict's images)."""
        split_of = dict(zip(split_table["path"], split_table["split"]))
        return self.table.assign(split=[split_of.get(p, LEFT_OUT) for p in self.table["path"]])

    def record(self, split_table: pd.DataFrame, exact_only_split: pd.DataFrame | None, file_name: str,
               data_sha256: str) -> dict:
        """The counts for metrics.json and the summary."""
        table = self.table
        groups = table.groupby("group")
        crossed = None
        if exact_only_split is not None:  # the near-duplicate groups the byte-level grouping would have split
            split_of = dict(zip(exact_only_split["path"], exact_only_split["split"]))
            crossed = int(table.assign(split=table["path"].map(split_of)).dropna(subset=["split"])
                          .groupby("group")["split"].nunique().gt(1).sum())
        return {
            "file": file_name,
            "data_sha256": data_sha256,
            "groups": int(groups.ngroups),
            "images": int(len(table)),
            "groups_with_near_copies": int(table.loc[table["kind"] == "near", "group"].nunique()),
            "groups_across_classes": int(self.conflicts["group"].nunique()),
            "images_in_conflicts": int(len(self.conflicts)),
            "conflicts_left_out": not self.keep_conflicts,
            "would_have_crossed_splits": crossed,
            "thresholds": {"hash_distance_bits": HASH_DISTANCE, "pixel_similarity": PIXEL_SIMILARITY},
        }


def group_images(root: Path, images: pd.DataFrame, cache_dir: Path | None, *, keep_conflicts: bool = False) -> Groups:
    """Every image's near-duplicate group (``images``: path, label, sha256, as the scan lists them). Files of the
    same content are one fingerprint and always one group; fingerprints and pairs come from ``cache_dir``."""
    images = images.sort_values("path", ignore_index=True)
    contents = images.drop_duplicates("sha256", ignore_index=True)
    hashes, thumbs = fingerprints(root, contents, cache_dir)
    shas = contents["sha256"].tolist()
    content_group = dict(zip(shas, components(len(shas), confirmed_pairs(shas, hashes, thumbs, cache_dir))))
    raw = images["sha256"].map(content_group)
    images = images.assign(group=raw.map({g: rank for rank, g in enumerate(dict.fromkeys(raw))}))
    members = images[images["group"].map(images["group"].value_counts()) > 1]
    row_of = {sha: row for row, sha in enumerate(shas)}
    heads = members.groupby("group").head(1).set_index("group")["sha256"]
    own = members["sha256"].map(row_of).to_numpy(int)
    head = members["group"].map(heads).map(row_of).to_numpy(int)
    distance = np.bitwise_count(hashes[own, 0] ^ hashes[head, 0]).astype(int)
    similarity = (_normalised(thumbs[own, 0]) * _normalised(thumbs[head, 0])).sum(axis=1)
    labels = members.groupby("group")["label"].nunique()
    first = members.index.isin(members.groupby("group").head(1).index)
    table = pd.DataFrame({
        "group": members["group"].to_numpy(), "path": members["path"].to_numpy(), "class": members["label"].to_numpy(),
        "kind": np.where(first, "first", np.where(own == head, "exact", "near")), "hash_distance": distance,
        "pixel_similarity": np.round(similarity, 4), "conflict": members["group"].map(labels).gt(1).to_numpy(),
    })
    return Groups(images, table, keep_conflicts)


def grouped_split(root: Path, images: pd.DataFrame, cache_dir: Path | None, *, keep_conflicts: bool = False,
                  val_fraction: float, test_fraction: float, seed: int) -> tuple[Split, Groups, dict]:
    """The split that keeps near-duplicate groups whole (label conflicts left out unless kept), the groups, and
    the record for metrics.json (with how many groups a split by file content alone would have cut)."""
    groups = group_images(root, images, cache_dir, keep_conflicts=keep_conflicts)
    split = split_images(groups.for_split(), val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    try:  # the split as it was before near-duplicates were grouped: only for the count of groups it cuts
        exact_only = split_images(groups.for_split().drop(columns="group"), val_fraction=val_fraction,
                                  test_fraction=test_fraction, seed=seed).table
    except DatasetError:
        exact_only = None
    digest = data_hash(images)
    return split, groups, groups.record(split.table, exact_only, duplicates_file_name(digest, split.sha256), digest)


def write_duplicates_table(results_dir: Path, groups: Groups, split: Split, record: dict) -> Path:
    """``record["file"]``: every image of every group of two or more with its split; the columns even when there is
    no group."""
    return write_csv(Path(results_dir) / record["file"], groups.with_splits(split.table).assign(split_sha256=split.sha256[:12]))


def split_for(root: Path, images: pd.DataFrame, params: dict, *, feature_dir: Path) -> tuple[Split, Groups, dict]:
    """``grouped_split`` with a run's notebook parameters (``feature_dir`` resolved: the fingerprints' cache)."""
    return grouped_split(root, images, feature_dir, keep_conflicts=params.get("keep_label_conflicts", False),
                         val_fraction=params["val_fraction"], test_fraction=params["test_fraction"], seed=params["split_seed"])
