"""Atomic file writes: a reader (or a rerun after a crash) never sees half a file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``.

    The temporary name is unique, so concurrent writers of the same file (two
    experiments saving the same split) cannot trip over each other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: dict) -> Path:
    return write_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> Path:
    return write_atomic(path, table.to_csv(index=False))
