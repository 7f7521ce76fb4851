"""Listing and checking every image of the data set before any training: each file is decoded once,
unusable ones are skipped and listed (or, in strict mode, an error). Masks are never read as images."""
from __future__ import annotations

import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from ..common.files import write_csv
from .image_files import UnreadableImage, decoded_picture, image_kind
from .layout import (EXPECTED_LAYOUT, HOW_TO_GET_DATA, IMAGE_SUFFIXES, STUDY_CLASSES, DatasetError, class_image_folder,
                     is_hidden, visible_subfolders)
from .locate import find_dataset_root


@dataclass(frozen=True)
class SkippedFile:
    path: str  # relative to the data set root
    reason: str


@dataclass
class ImageIndex:
    """Every usable image of a data set, and every file that was passed over."""

    root: Path
    class_names: list[str]
    images: pd.DataFrame  # columns: path (relative, POSIX), label (class name), sha256
    skipped: list[SkippedFile] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = self.images["label"].value_counts()
        return {name: int(counts.get(name, 0)) for name in self.class_names}

    def report(self) -> str:
        lines = [f"{len(self.images)} images in {len(self.class_names)} classes under {self.root}"]
        lines += [f"  {name}: {count}" for name, count in self.counts().items()]
        if self.skipped:
            lines.append(f"{len(self.skipped)} files skipped:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def scan_dataset(root: str | os.PathLike, *, strict: bool = False, workers: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> ImageIndex:
    """List, hash and fully decode every image, before any training.

    Unusable files (zero bytes, undecodable, truncated, wrong type) are skipped
    and listed in ``ImageIndex.skipped``; with ``strict`` they are an error.
    With ``cache_dir``, each file's verdict is kept there (``ScanCache``) and a file whose size, times and inode
    have not changed since is not read again: a sweep's preflight, each of its runs and its audit scan once.
    """
    root = find_dataset_root(root)
    class_folders = visible_subfolders(root)
    candidates, others = listed_files(root)
    skipped = [SkippedFile(_relative(file, root), f"not an image file ({file.suffix or 'no extension'}); only "
                           f"{', '.join(IMAGE_SUFFIXES)} are read") for file in others]

    cache = None if cache_dir is None else ScanCache(Path(cache_dir), root)
    files = [file for file, _ in candidates]
    stats = [file_stat(file) for file in files]
    inspected = [None if cache is None else cache.get(_relative(file, root), stat) for file, stat in zip(files, stats)]
    unknown = [i for i, verdict in enumerate(inspected) if verdict is None]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for i, verdict in zip(unknown, pool.map(inspect_image, (files[i] for i in unknown))):
            inspected[i] = verdict
    if cache is not None and unknown:
        cache.save([(_relative(file, root), stat, verdict) for file, stat, verdict in zip(files, stats, inspected)])

    rows = []
    for (file, label), (sha256, problem) in zip(candidates, inspected):
        if problem:
            skipped.append(SkippedFile(_relative(file, root), problem))
        else:
            rows.append((_relative(file, root), label, sha256))
    skipped.sort(key=lambda s: s.path)
    if strict and skipped:
        raise DatasetError(f"{len(skipped)} unusable files (strict mode): {_list_skipped(skipped)}")

    images = pd.DataFrame(rows, columns=["path", "label", "sha256"]).sort_values("path", ignore_index=True)
    class_names = [folder.name for folder in class_folders]
    empty = [name for name in class_names if not (images["label"] == name).any()]
    if empty:
        raise DatasetError(
            f"Class folder(s) with no usable images under {root}: {', '.join(empty)}; {EXPECTED_LAYOUT}. "
            "Remove the folder or put its images back."
            + (f" Skipped: {_list_skipped(skipped)}" if skipped else "")
        )
    if len(class_names) < 2:
        raise DatasetError(f"{root} holds {len(class_names)} class folder(s); at least two are needed; {EXPECTED_LAYOUT}.")
    missing = [name for name in STUDY_CLASSES if name not in class_names]
    if missing and set(class_names) < set(STUDY_CLASSES):  # some of the study's classes, not all: a partial copy
        raise DatasetError(
            f"Class folder(s) missing under {root}: {', '.join(missing)}; the data set has "
            f"{', '.join(STUDY_CLASSES)}. Was the archive only partly unzipped? {HOW_TO_GET_DATA}"
        )
    return ImageIndex(root=root, class_names=class_names, images=images, skipped=skipped)


def listed_files(root: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """Every visible file of every class folder, without reading it: ([(image file, class)], [other files])."""
    images, others = [], []
    for class_folder in visible_subfolders(root):
        for file in sorted(class_image_folder(class_folder).iterdir()):
            if file.is_file() and not is_hidden(file):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    images.append((file, class_folder.name))
                else:
                    others.append(file)
    return images, others


Stat = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def file_stat(path: Path) -> Stat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class ScanCache:
    """The verdict of ``inspect_image`` on each file of one data set (its SHA-256, or why it is unusable), with the
    file's size, modification and change times and inode when it was read: a file whose four are unchanged is not
    read again (git's index trusts the same). A file modified within ``RACY_SECONDS`` of the scan is not kept, since
    a change in the same tick of the clock would leave its times as they were. One CSV per data set root, replaced
    whole (atomically) after a scan that read anything; an unreadable cache is ignored and rewritten."""

    RACY_SECONDS = 2.0
    COLUMNS = ["path", "size", "mtime_ns", "ctime_ns", "inode", "sha256", "problem"]

    def __init__(self, folder: Path, root: Path):
        self.file = folder / f"scan-{hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]}.csv"
        self.started_ns = time.time_ns()
        self.known: dict[str, tuple[Stat, tuple[str | None, str | None]]] = {}
        try:
            table = pd.read_csv(self.file, dtype={"path": str, "sha256": str, "problem": str}, keep_default_na=False)
            for path, *stat, sha256, problem in table[self.COLUMNS].itertuples(index=False, name=None):
                self.known[path] = (tuple(int(v) for v in stat), (sha256 or None, problem or None))
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            self.known = {}

    def get(self, path: str, stat: Stat | None) -> tuple[str | None, str | None] | None:
        entry = self.known.get(path)
        return entry[1] if entry is not None and stat is not None and entry[0] == stat else None

    def save(self, verdicts: list[tuple[str, Stat | None, tuple[str | None, str | None]]]) -> None:
        racy = self.started_ns - int(self.RACY_SECONDS * 1e9)
        rows = [(path, *stat, sha256 or "", problem or "") for path, stat, (sha256, problem) in verdicts
                if stat is not None and stat[1] < racy and stat[2] < racy]
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_csv(self.file, pd.DataFrame(rows, columns=self.COLUMNS))
        except OSError:
            pass  # a cache it cannot write only costs the next scan its time


def inspect_image(path: Path) -> tuple[str | None, str | None]:
    """(SHA-256 of the file, None) for a usable image, (None, reason) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if not data:
        return None, "empty file (0 bytes)"
    if image_kind(data) is None:
        return None, _other_content(data)
    try:  # the training decoder's rules (image_files.py), then every pixel: catches truncated and corrupt files
        decoded_picture(data)
    except UnreadableImage as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"cannot be decoded as an image ({str(exc).strip() or type(exc).__name__})"
    return hashlib.sha256(data).hexdigest(), None


def _other_content(data: bytes) -> str:
    """Why a file that is neither PNG nor JPEG by its content is refused, naming what it is when Pillow knows."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"is a {image.format} file; only PNG and JPEG are read"
    except Exception as exc:
        return f"cannot be decoded as an image ({str(exc).strip() or type(exc).__name__})"


def _relative(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix()


def _list_skipped(skipped: list[SkippedFile], limit: int = 20) -> str:
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")
