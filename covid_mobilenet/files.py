"""Atomic file writes: a reader (or a rerun after a crash) never sees half a file."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def write_atomic(path: str | os.PathLike, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to a temporary file beside ``path``, then rename it over ``path``.

    The temporary name is unique, so concurrent writers of the same file (two
    experiments saving the same split) cannot trip over each other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        binary = isinstance(text, bytes)
        with os.fdopen(descriptor, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    return write_atomic(path, table.to_csv(index=False))
