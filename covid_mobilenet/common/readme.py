"""The README's generated sections: text between a pair of HTML comment markers, replaced atomically.

The summary writes the results sections, the export its table; only real runs ever reach the README.
"""
from __future__ import annotations

import os
from pathlib import Path

from .files import write_atomic


class ReadmeError(ValueError):
    """The README lacks the markers of a generated section; the message names the file and the markers."""


def replace_readme_section(readme: str | os.PathLike, section: str, markers: tuple[str, str]) -> bool:
    """Put ``section`` between the README's ``markers``; True when the file changed."""
    path = Path(readme)
    text = path.read_text()
    start_marker, end_marker = markers
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        raise ReadmeError(f"{path} lacks the markers {start_marker} and {end_marker} around its generated section.")
    updated = text[: start + len(start_marker)] + "\n" + section.strip() + "\n" + text[end:]
    if updated == text:
        return False
    write_atomic(path, updated)
    return True
