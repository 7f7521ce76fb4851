"""Backbone weights: which file weights='imagenet' means, and failing fast when it cannot be had.

Free of TensorFlow, so that run_all.py can check weights before starting any notebook.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

# Keras downloads MobileNet's ImageNet weights from here (keras.applications.mobilenet).
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
IMAGENET_SIZES = (128, 160, 192, 224)  # image sizes with their own ImageNet weights file


class WeightsError(RuntimeError):
    """The requested backbone weights cannot be had or do not fit; the message says what to do."""


def imagenet_weights_file(image_size: int) -> str:
    """The file Keras loads for weights='imagenet' (other sizes reuse the 224 weights)."""
    rows = image_size if image_size in IMAGENET_SIZES else 224
    return f"mobilenet_1_0_{rows}_tf_no_top.h5"


def keras_cache_dirs() -> list[Path]:
    """Where keras.utils.get_file keeps downloads: $KERAS_HOME or ~/.keras, or /tmp/.keras when that is read-only."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return [home / "models", Path("/tmp/.keras/models")]


def ensure_weights_available(weights: str | None, image_size: int, timeout: float = 5.0) -> None:
    """Fail within seconds, before any data is read, when weights='imagenet' can neither be found nor downloaded."""
    if weights != "imagenet":
        return
    name = imagenet_weights_file(image_size)
    cache = keras_cache_dirs()
    if any((folder / name).is_file() for folder in cache):
        return
    host = urlsplit(KERAS_WEIGHTS_URL).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise WeightsError(
            f"weights='imagenet' needs {name}, which is not in the Keras cache ({cache[0]}) and cannot be "
            f"downloaded ({host}: {exc}). Fixes: download {KERAS_WEIGHTS_URL}{name} elsewhere and place it at "
            f"{cache[0] / name}; or pass weights as the path of that file; or use weights=None "
            "(random initialisation, much lower accuracy)."
        ) from None
