"""The data set's layout and the facts about it that every part of the project relies on.

The Kaggle "COVID-19 Radiography Database" holds one folder per class,
``<root>/<Class>/images/<Class>-<n>.png`` beside ``<Class>/masks/`` (older
versions keep the images directly in ``<root>/<Class>/``). Masks are lung
segmentations, not training images.
"""
from __future__ import annotations

from pathlib import Path

from ..common.paths import PROJECT_ROOT

DATASET_FOLDER = "COVID-19_Radiography_Dataset"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data" / DATASET_FOLDER
KAGGLE_HANDLE = "tawsifurrahman/covid19-radiography-database"
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_HANDLE}"
IMAGES_FOLDER = "images"
MASKS_FOLDER = "masks"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
STUDY_CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
# The current release's images per class (21,165 in all); the demo set keeps these proportions.
REAL_CLASS_COUNTS = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
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


def is_hidden(path: Path) -> bool:
    return path.name.startswith((".", "__"))  # .DS_Store, .ipynb_checkpoints, __MACOSX


def visible_subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def looks_like_class_folder(folder: Path) -> bool:
    if (folder / IMAGES_FOLDER).is_dir():
        return True
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def class_image_folder(class_folder: Path) -> Path:
    """Where a class keeps its images: ``<Class>/images/`` in the current layout, else the class folder."""
    images = class_folder / IMAGES_FOLDER
    return images if images.is_dir() else class_folder
