"""Where the project's own files are, and how a path given by a user is read (relative to the project)."""
from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_NOTEBOOK = PROJECT_ROOT / "notebooks" / "mobilenet_finetune.ipynb"
SUMMARY_NOTEBOOK = PROJECT_ROOT / "notebooks" / "summary.ipynb"
CONFIG_FILE = PROJECT_ROOT / "experiments.json"
README_FILE = PROJECT_ROOT / "README.md"
DOCS_DIR = PROJECT_ROOT / "docs"  # the pages the README links to; some hold generated sections too
BENCH_FILE = PROJECT_ROOT / "results" / "bench.json"  # written by the benchmark, read by precision="auto"


def resolve_path(path: str | Path) -> Path:
    """A path as given when absolute, else relative to the project root (where run_all.py is)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
