"""Finding the data set: a folder given, the project's data/ folder, or a Kaggle download through kagglehub."""
from __future__ import annotations

import os
from pathlib import Path

from .layout import (DATASET_FOLDER, DEFAULT_DATA_DIR, EXPECTED_LAYOUT, HOW_TO_GET_DATA, KAGGLE_HANDLE, KAGGLE_URL,
                     DatasetError, looks_like_class_folder, visible_subfolders)


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
        subfolders = visible_subfolders(folder)
        if any(looks_like_class_folder(sub) for sub in subfolders):
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
