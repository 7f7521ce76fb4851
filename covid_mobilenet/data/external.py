"""Another collection of films to evaluate a trained run on (``python -m covid_mobilenet.evaluate``), and its overlap
with the run's own data set.

A collection comes in the data set's layout (one folder per class, images in ``<Class>/images/`` or directly in
``<Class>/``, lung masks optionally in ``<Class>/masks/`` under the image's name; PNG, JPEG or DICOM by content, any
file names), or as a CSV of ``path,label[,source][,mask]`` with paths relative to the collection's folder (``--labels``).
``--class-map FROM=TO`` renames its classes to the run's. Everything is checked before any image is decoded.

Public collections copy each other, so an "external" set can hold copies of the run's training films and flatter
it: ``overlap`` finds them with the audit's near-duplicate fingerprints (``data/duplicates.py``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..common.files import file_sha256
from .dicom import is_dicom, read_film
from .duplicates import PIXEL_SIMILARITY, candidate_pairs, fingerprint, fingerprints, similarities
from .image_files import decoded_picture, image_kind
from .layout import MASKS_FOLDER, DatasetError, class_image_folder
from .sources import metadata_file, read_sources

UNKNOWN_SOURCE = "not given"


class ExternalError(DatasetError):
    """The collection or its options cannot be used as given; the message names the file or option."""


@dataclass
class Collection:
    """The collection's images (path: absolute; label: after the class map; given_label; source; mask or None) and
    the files left out, each with the reason."""

    root: Path
    images: pd.DataFrame
    left_out: list[tuple[str, str]] = field(default_factory=list)


def parse_class_map(items: list[str] | None) -> dict[str, str]:
    """``["FROM=TO", ...]`` as a dict; ``ExternalError`` naming a malformed item."""
    mapping = {}
    for item in items or []:
        source, _, target = item.partition("=")
        if not source.strip() or not target.strip():
            raise ExternalError(f"--class-map {item!r}: write FROM=TO, the collection's class name, '=', the run's")
        mapping[source.strip()] = target.strip()
    return mapping


def check_name(name: str) -> str:
    """An evaluation's name, which becomes a folder name: letters, digits, '-', '_' and '.' only."""
    if not name or name.startswith(".") or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ExternalError(f"--name {name!r}: use letters, digits, '-', '_' and '.' (not first)")
    return name


def is_image_file(path: Path) -> bool:
    """PNG, JPEG or DICOM by the file's content."""
    with open(path, "rb") as file:
        head = file.read(132)
    return image_kind(head) is not None or is_dicom(head, path)


def read_collection(root: str | Path, labels_csv: str | Path | None = None,
                    class_map: dict[str, str] | None = None) -> Collection:
    """The collection at ``root`` (its layout, or the ``labels_csv`` table), checked before any image is decoded."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ExternalError(f"--data-dir {root}: no such folder; give the folder of the other collection")
    rows, left_out = (_from_table(root, Path(labels_csv)) if labels_csv else _from_layout(root))
    if not rows:
        raise ExternalError(f"{labels_csv or root}: no PNG, JPEG or DICOM image found; "
                            "expected one folder per class (<Class>/images/ or <Class>/), or --labels CSV")
    images = pd.DataFrame(rows, columns=["path", "given_label", "source", "mask"])
    if not labels_csv and any(metadata_file(root, label).is_file() for label in set(images["given_label"])):
        relative = [Path(p).relative_to(root).as_posix() for p in images["path"]]  # the data set's own spreadsheets
        images["source"] = pd.Series(relative).map(read_sources(root, relative, images["given_label"].tolist()).of)
    mapping = class_map or {}
    unused = sorted(set(mapping) - set(images["given_label"]))
    if unused:
        raise ExternalError(f"--class-map names {unused}, which are not classes of {root} "
                            f"({sorted(set(images['given_label']))})")
    images.insert(1, "label", images["given_label"].map(lambda name: mapping.get(name, name)))
    return Collection(root, images.sort_values("path", ignore_index=True), left_out)


def _from_layout(root: Path):
    rows, left_out = [], []
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in classes:
        images_folder, masks_folder = class_image_folder(folder), folder / MASKS_FOLDER
        for file in sorted(p for p in images_folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if not is_image_file(file):
                left_out.append((str(file), "neither a PNG, a JPEG nor a DICOM file by its content"))
                continue
            masks = sorted(masks_folder.glob(f"{file.stem}.*")) if masks_folder.is_dir() else []
            rows.append((str(file), folder.name, UNKNOWN_SOURCE, str(masks[0]) if masks else None))
    return rows, left_out


def _from_table(root: Path, table_file: Path):
    if not table_file.is_file():
        raise ExternalError(f"--labels {table_file}: no such file; give a CSV with the columns path,label[,source]")
    try:
        table = pd.read_csv(table_file, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ExternalError(f"--labels {table_file}: not a readable CSV ({type(exc).__name__})") from None
    missing = [column for column in ("path", "label") if column not in table.columns]
    if missing:
        raise ExternalError(f"--labels {table_file}: no column {missing}; it needs path,label and optionally "
                            "source and mask (a lung mask's path)")
    empty = table[table["path"].isna() | table["label"].isna()]
    if len(empty):
        raise ExternalError(f"--labels {table_file}: row(s) {[i + 2 for i in empty.index[:5]]} lack a path or a label")
    rows, left_out, absent = [], [], []
    for record in table.to_dict("records"):
        file = root / record["path"]
        mask = record.get("mask")
        mask = root / mask if isinstance(mask, str) and mask else None
        if not file.is_file():
            absent.append(record["path"])
        elif mask is not None and not mask.is_file():
            absent.append(record["mask"])
        elif not is_image_file(file):
            left_out.append((str(file), "neither a PNG, a JPEG nor a DICOM file by its content"))
        else:
            source = record.get("source")
            rows.append((str(file), record["label"], source if isinstance(source, str) and source else UNKNOWN_SOURCE,
                         None if mask is None else str(mask)))
    if absent:
        raise ExternalError(f"--labels {table_file}: {len(absent)} path(s) are not files under {root}, e.g. "
                            f"{absent[:3]}; paths are relative to --data-dir")
    return rows, left_out


def collection_sha256(collection: Collection) -> str:
    """One hash of what an evaluation reads: every image's and mask's content with its path, label and source. An
    evaluation recorded with the same hash (and the same model) has nothing to recompute."""
    digest = hashlib.sha256()
    for row in collection.images.itertuples(index=False):
        digest.update(f"{Path(row.path).relative_to(collection.root).as_posix()}\t{row.label}\t{row.source}\n".encode())
        for file in (row.path, row.mask):
            digest.update(file_sha256(Path(file)).encode() if isinstance(file, str) else b"-")  # no mask: NaN
    return digest.hexdigest()


def external_fingerprint(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The audit's fingerprint of a PNG or JPEG as the training decoder reads it, or of a DICOM film as rendered."""
    data = Path(path).read_bytes()
    if image_kind(data[:8]) is None:
        return fingerprint(Image.fromarray(read_film(path).pixels))
    return fingerprint(decoded_picture(data))


def overlap(run_root: Path, split: pd.DataFrame, external: list[Path], cache_dir: Path | None) -> pd.DataFrame:
    """Every near-copy of an external image among the run's data set (``split``: path relative to ``run_root``,
    split): one row per (external, run image) pair, with the run image's split, the hash distance and the pixel
    similarity; the audit's thresholds. An external file that cannot be fingerprinted is left out of the search."""
    columns = ["external", "run_image", "split", "hash_distance", "similarity"]
    ours = split.assign(sha256=[hashlib.sha256((Path(run_root) / p).read_bytes()).hexdigest() for p in split["path"]])
    run_hashes, run_thumbs = fingerprints(Path(run_root), ours, cache_dir)
    printed, kept = [], []
    for path in external:
        try:
            printed.append(external_fingerprint(Path(path)))
            kept.append(str(path))
        except (ValueError, OSError):
            continue
    if not printed:
        return pd.DataFrame(columns=columns)
    hashes = np.concatenate([run_hashes, np.stack([h for h, _ in printed])])
    thumbs = np.concatenate([run_thumbs, np.stack([t for _, t in printed])])
    candidates = candidate_pairs(hashes)
    candidates = candidates[(candidates[:, 0] < len(ours)) & (candidates[:, 1] >= len(ours))]  # run image, external
    similarity = similarities(thumbs, candidates)
    copies = similarity >= PIXEL_SIMILARITY
    found = candidates[copies]
    return pd.DataFrame({"external": [kept[j - len(ours)] for j in found[:, 1]],
                         "run_image": ours["path"].to_numpy()[found[:, 0]], "split": ours["split"].to_numpy()[found[:, 0]],
                         "hash_distance": found[:, 2], "similarity": np.round(similarity[copies], 4)},
                        columns=columns)
