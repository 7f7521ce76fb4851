"""Find the data set, list and validate its images, and split them.

The Kaggle "COVID-19 Radiography Database" holds one folder per class,
``<root>/<Class>/images/<Class>-<n>.png`` beside ``<Class>/masks/`` (older
versions keep the images directly in ``<root>/<Class>/``). Masks are lung
segmentations, not training images, so they are never read. Exact duplicate
images exist; the split keeps identical files together so that no test image
is also a training image.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split

from . import PROJECT_ROOT
from .files import write_csv

DATASET_FOLDER = "COVID-19_Radiography_Dataset"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / DATASET_FOLDER
KAGGLE_HANDLE = "tawsifurrahman/covid19-radiography-database"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
IMAGES_FOLDER = "images"
MASKS_FOLDER = "masks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STUDY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
SPLITS = ("train", "val", "test")

EXPECTED_LAYOUT = (
    f"expected <root>/<Class>/{IMAGES_FOLDER}/<Class>-<n>.png (or the older <root>/<Class>/<Class>-<n>.png), "
    "one folder per class"
)
HOW_TO_GET_DATA = (
    "Get the data set in one of three ways: pass data_dir (--data-dir) pointing at "
    f"{DATASET_FOLDER}; unzip the Kaggle archive ({KAGGLE_URL}) into {DEFAULT_DATA_DIR.parent}; "
    "or configure Kaggle credentials (KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json) "
    "so that kagglehub downloads it. Offline, `python -m covid_mobilenet.demo` writes a demo set."
)


class DatasetError(ValueError):
    """The data set cannot be used as it is; the message says why and what to do."""


# ---------------------------------------------------------------- locating


def locate_dataset(data_dir: str | os.PathLike | None = None) -> Path:
    """The data set root: ``data_dir``; else data/COVID-19_Radiography_Dataset; else a Kaggle download."""
    if data_dir is not None:
        return find_dataset_root(data_dir)
    if DEFAULT_DATA_DIR.is_dir():
        return find_dataset_root(DEFAULT_DATA_DIR)
    if kaggle_credentials_available():
        return find_dataset_root(download_from_kaggle())
    raise DatasetError(
        f"No data set: data_dir is not set, {DEFAULT_DATA_DIR} does not exist and no Kaggle "
        f"credentials are configured. {HOW_TO_GET_DATA}"
    )


def find_dataset_root(path: str | os.PathLike, max_depth: int = 3) -> Path:
    """The folder whose subfolders are the classes, looking inside wrapper folders such as an archive's."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"Data folder {path} does not exist; {EXPECTED_LAYOUT}. {HOW_TO_GET_DATA}")
    if not path.is_dir():
        raise DatasetError(f"Data folder {path} is a file, not a folder; {EXPECTED_LAYOUT}. {HOW_TO_GET_DATA}")
    folder = path
    for _ in range(max_depth + 1):
        subfolders = _visible_subfolders(folder)
        if any(_looks_like_class_folder(sub) for sub in subfolders):
            return folder
        named = folder / DATASET_FOLDER
        if named.is_dir():
            folder = named
        elif len(subfolders) == 1:
            folder = subfolders[0]
        else:
            break
    raise DatasetError(f"Data folder {path} holds no class folders; {EXPECTED_LAYOUT}. {HOW_TO_GET_DATA}")


def kaggle_credentials_available(environ: dict | None = None) -> bool:
    """Whether kagglehub would find credentials, from the environment or kaggle.json."""
    environ = os.environ if environ is None else environ
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return True
    if environ.get("KAGGLE_API_TOKEN"):
        return True
    config_dir = Path(environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (config_dir / "kaggle.json").is_file()


def download_from_kaggle() -> Path:
    """Download (or reuse kagglehub's cached copy of) the data set; a failure is one clear error."""
    try:
        import kagglehub
    except ImportError:
        raise DatasetError("kagglehub is not installed: pip install -r requirements.txt") from None
    try:
        return Path(kagglehub.dataset_download(KAGGLE_HANDLE))
    except Exception as exc:  # kagglehub raises many kinds; the user needs the same advice for each
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"Downloading {KAGGLE_HANDLE} with kagglehub failed: {reason}. Check the network and "
            f"the Kaggle credentials, or download {KAGGLE_URL} by hand and unzip it into "
            f"{DEFAULT_DATA_DIR.parent}."
        ) from None


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "__"))  # .DS_Store, .ipynb_checkpoints, __MACOSX


def _visible_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))


def _looks_like_class_folder(folder: Path) -> bool:
    if (folder / IMAGES_FOLDER).is_dir():
        return True
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


# ---------------------------------------------------------------- scanning


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


def class_image_folder(class_folder: Path) -> Path:
    """Where a class keeps its images: ``<Class>/images/`` in the current layout, else the class folder."""
    images = class_folder / IMAGES_FOLDER
    return images if images.is_dir() else class_folder


def scan_dataset(root: str | os.PathLike, *, strict: bool = False, workers: int | None = None) -> ImageIndex:
    """List, hash and fully decode every image, before any training.

    Unusable files (zero bytes, undecodable, truncated, wrong type) are skipped
    and listed in ``ImageIndex.skipped``; with ``strict`` they are an error.
    """
    root = find_dataset_root(root)
    class_folders = _visible_subfolders(root)
    candidates: list[tuple[Path, str]] = []
    skipped: list[SkippedFile] = []
    for class_folder in class_folders:
        for file in sorted(class_image_folder(class_folder).iterdir()):
            if not file.is_file() or _hidden(file):
                continue
            if file.suffix.lower() in IMAGE_SUFFIXES:
                candidates.append((file, class_folder.name))
            else:
                reason = f"not an image file ({file.suffix or 'no extension'}); only {', '.join(IMAGE_SUFFIXES)} are read"
                skipped.append(SkippedFile(_relative(file, root), reason))

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        inspected = list(pool.map(inspect_image, (file for file, _ in candidates)))

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


def inspect_image(path: Path) -> tuple[str | None, str | None]:
    """(SHA-256 of the file, None) for a usable image, (None, reason) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.load()  # decodes every pixel: catches truncated and corrupt files
    except Exception as exc:
        return None, f"cannot be decoded as an image ({str(exc).strip() or type(exc).__name__})"
    if image_format not in ("PNG", "JPEG"):
        return None, f"is a {image_format} file; only PNG and JPEG are read"
    return hashlib.sha256(data).hexdigest(), None


def _relative(file: Path, root: Path) -> str:
    return file.relative_to(root).as_posix()


def _list_skipped(skipped: list[SkippedFile], limit: int = 20) -> str:
    shown = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:limit])
    return shown + (f"; and {len(skipped) - limit} more" if len(skipped) > limit else "")


# ---------------------------------------------------------------- splitting


@dataclass
class Split:
    """Which image is in which split, and a hash that identifies the assignment."""

    table: pd.DataFrame  # columns: path, label, split; sorted by path
    sha256: str

    def subset(self, name: str) -> pd.DataFrame:
        return self.table[self.table["split"] == name]

    def counts(self, class_names: list[str]) -> dict[str, dict[str, int]]:
        return {
            name: {label: int((self.subset(name)["label"] == label).sum()) for label in class_names}
            for name in SPLITS
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as CSV, atomically, so every run can prove which split it used."""
        return write_csv(path, self.table)


def split_hash(table: pd.DataFrame) -> str:
    """SHA-256 over the sorted ``path<TAB>label<TAB>split`` rows: independent of listing order and machine."""
    rows = sorted(f"{p}\t{l}\t{s}\n" for p, l, s in zip(table["path"], table["label"], table["split"]))
    return hashlib.sha256("".join(rows).encode("utf-8")).hexdigest()


def empty_cells(table: pd.DataFrame, labels) -> list[str]:
    """"<class> in <split>" for every class of ``labels`` that has no image in a split of ``table``."""
    return [f"{label} in {name}" for name in SPLITS for label in sorted(set(labels))
            if not ((table["split"] == name) & (table["label"] == label)).any()]


def split_images(
    images: pd.DataFrame, *, val_fraction: float = 0.16, test_fraction: float = 0.2, seed: int = 42
) -> Split:
    """Stratified, seeded train/val/test split in which identical images share a split.

    Files with the same content form one group; each group is stratified by its
    most common label, and scikit-learn splits the groups.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must each be in (0, 1) "
            "and add up to less than 1."
        )
    images = images.sort_values("path", ignore_index=True)
    group_label = (
        images.sort_values(["sha256", "label"]).groupby("sha256")["label"].agg(lambda labels: labels.mode().iloc[0])
    )
    try:
        rest, test = train_test_split(
            group_label, test_size=test_fraction, stratify=group_label, random_state=seed
        )
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=rest, random_state=seed
        )
    except ValueError as exc:
        counts = group_label.value_counts().to_dict()
        raise DatasetError(
            f"Cannot split {len(images)} images ({counts} distinct per class) into train/val/test "
            f"with val_fraction={val_fraction}, test_fraction={test_fraction}: {exc}. "
            "Each class needs enough distinct images for every split."
        ) from None
    split_of_group = {sha: name for name, part in (("train", train), ("val", val), ("test", test)) for sha in part.index}
    table = images[["path", "label"]].assign(split=images["sha256"].map(split_of_group))
    missing = empty_cells(table, images["label"])
    if missing:
        raise DatasetError(
            f"The split leaves no image of: {', '.join(missing)}. Add images to those classes or "
            "change val_fraction/test_fraction."
        )
    return Split(table=table, sha256=split_hash(table))
