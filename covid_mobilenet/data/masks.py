"""The data set's lung masks, and the input regions made with them.

The Kaggle release ships a lung segmentation for every image, ``<Class>/masks/<name>``
beside ``<Class>/images/<name>``, 256x256 while the images are 299x299. Masks are never
training images; they define three input regions:

- ``full``: the image as it is;
- ``lungs``: only the lungs kept, everything outside the mask black;
- ``no_lungs``: the lungs blacked out, everything else kept;
- ``lungs_blurred`` (a test-time check only): the lungs replaced by a heavy blur of themselves, the mask's edge
  feathered, so the image stays close to a film the model was trained on while the lungs' detail is gone.

A model that still scores far above chance on ``no_lungs`` images reads something other
than the lungs. Every mask is checked before it is used; an image without a usable mask is
counted, never a failure. Free of TensorFlow (``data.pipeline.apply_region`` applies the regions).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .layout import MASKS_FOLDER, DatasetError
from .split import Split, empty_cells, split_hash

REGIONS = ("full", "lungs", "no_lungs")  # what a model may be trained on (run_all.py --regions)
TEST_REGIONS = (*REGIONS, "lungs_blurred")  # what every model is tested on (run/shortcut_checks.py)
REGION_LABELS = {"full": "full image", "lungs": "lungs only", "no_lungs": "no lungs", "lungs_blurred": "lungs blurred"}
MASK_SIZE = 256  # the release's masks; another size is still used (resized), and counted
USABLE = ("ok", "other size")
MASK_STATUSES = ("ok", "other size", "missing", "unreadable", "empty")
THRESHOLD = 127  # mask pixels above it are lung


def mask_file(root: str | os.PathLike, image: str) -> Path:
    """Where the mask of ``image`` (a path relative to the data set root) is: ``<Class>/masks/<name>``,
    for the current layout (``<Class>/images/<name>``) and the older one (``<Class>/<name>``)."""
    parts = Path(image).parts
    return Path(root) / parts[0] / MASKS_FOLDER / parts[-1]


def check_mask(path: Path) -> str:
    """One of MASK_STATUSES: whether the mask file can define the regions of its image."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as picture:
            lung = np.asarray(picture.convert("L")) > THRESHOLD
            size = picture.size
    except Exception:  # truncated, not an image, unreadable: all the same to the user
        return "unreadable"
    if not lung.any():
        return "empty"
    return "ok" if size == (MASK_SIZE, MASK_SIZE) else "other size"


def check_masks(root: str | os.PathLike, images: list[str] | pd.Series, *, workers: int | None = None) -> pd.DataFrame:
    """One row per image, in the given order: path, mask (relative to root), mask_status."""
    images = list(images)
    files = [mask_file(root, image) for image in images]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        statuses = list(pool.map(check_mask, files))
    return pd.DataFrame({
        "path": images,
        "mask": [file.relative_to(root).as_posix() for file in files],
        "mask_status": statuses,
    })


def mask_counts(table: pd.DataFrame) -> dict[str, int]:
    """How many images have each mask status (every status, zeros included)."""
    counts = table["mask_status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in MASK_STATUSES}


def usable(table: pd.DataFrame) -> pd.Series:
    """Which rows of a ``check_masks`` table have a mask that defines the regions."""
    return table["mask_status"].isin(USABLE)


def mask_problems(table: pd.DataFrame, limit: int = 20) -> list[str]:
    """The first images without a usable mask, with why, for the run's record."""
    rows = table[~usable(table)]
    return [f"{row.path}: mask {row.mask_status} ({row.mask})" for row in rows.head(limit).itertuples()]



def restrict_to_masked(split: Split, root: str | os.PathLike) -> tuple[Split, dict]:
    """The split without the images that lack a usable mask, with a ``mask`` column; and what was left out.

    For training on a region (lungs only, no lungs), which needs every image's mask. The
    restricted table gets its own hash: it is a different set of images.
    """
    checked = check_masks(root, split.table["path"])
    keep = usable(checked).to_numpy()
    table = split.table.assign(mask=checked["mask"].to_numpy())[keep].reset_index(drop=True)
    empty = empty_cells(table, split.table["label"])
    if empty:
        raise DatasetError(
            f"Without the images that have no usable lung mask under {root}, no image is left of: {', '.join(empty)}. "
            f"Mask problems: {'; '.join(mask_problems(checked, 5))}. Train on input_region='full', or restore the masks."
        )
    record = {"checked": len(checked), "excluded": int((~keep).sum()), "counts": mask_counts(checked),
              "problems": mask_problems(checked)}
    return Split(table=table, sha256=split_hash(table)), record
