"""Publishing files atomically: a reader (or a rerun after a crash) never sees half a file.

Every file the project publishes goes through ``atomic_path``: it is written under a temporary
name in the same folder, flushed to disk (fsync), and renamed over its final name. ``write_atomic``
does that for text and bytes; a library that writes files itself (Matplotlib, Keras) writes to the
temporary path ``atomic_path`` yields.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd


def full_suffix(path: Path) -> str:
    """The suffixes a writer may insist on: ``.weights.h5`` for ``x.weights.h5``, ``.keras`` for ``model.keras``."""
    return ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix) to write to; on success it is fsynced and renamed over ``path``.

    The temporary name is unique, so concurrent writers of the same file (two experiments
    saving the same split) cannot trip over each other. On failure it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{full_suffix(path)}")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); elsewhere a no-op."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some filesystems cannot sync a folder; the file itself is on disk
    finally:
        os.close(descriptor)


def write_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` atomically."""
    with atomic_path(path) as temporary:
        if isinstance(text, bytes):
            temporary.write_bytes(text)
        else:
            temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    return write_atomic(path, table.to_csv(index=False))


def save_figure(figure, path: str | os.PathLike) -> Path:
    """A Matplotlib figure as an image file (its format from the suffix), atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight")
    return Path(path)


def figure_pixels(figure, dpi: int = 200) :
    """A Matplotlib figure rendered to RGB pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(dpi)
    canvas.draw()
    import numpy as np

    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StorageError(OSError):
    """A folder cannot be written; the message names it and says what to do."""


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, before any long work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        hint = "free some space" if exc.errno == errno.ENOSPC else "fix its permissions or choose another folder"
        raise StorageError(exc.errno, f"Cannot write to {folder} ({exc.strerror or exc}); {hint}.") from None
    return folder
