"""The code a result came from: the git commit, without TensorFlow (the sweep records it too)."""
from __future__ import annotations

import subprocess

from .paths import PROJECT_ROOT


def git_commit() -> str | None:
    """HEAD's commit, with '-dirty' when tracked code differs from it; None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "covid_mobilenet", "notebooks"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if changed else "")
