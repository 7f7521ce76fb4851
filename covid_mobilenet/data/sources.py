"""Where each image comes from: the data set's ``<Class>.metadata.xlsx`` spreadsheets, and accuracy per source.

In the release, the classes come from different collections (Lung_Opacity only from RSNA,
Viral Pneumonia only from one Kaggle pneumonia set, COVID from six others), so a model can
score by recognising the collection instead of the disease. Accuracy per class and source
shows where that may happen. Each spreadsheet has the columns ``FILE NAME`` (the image's
name without its extension; the Normal sheet writes ``NORMAL-1`` for ``Normal-1.png``),
``FORMAT``, ``SIZE`` and ``URL`` (the source). A missing or unreadable spreadsheet, or an
image absent from it, is reported and counted under an "unknown" source, never a failure.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

METADATA_SUFFIX = ".metadata.xlsx"
NAME_COLUMN, SOURCE_COLUMN = "FILE NAME", "URL"
NO_SPREADSHEET = "unknown (no metadata spreadsheet)"
UNREADABLE = "unknown (metadata spreadsheet unreadable)"
NOT_LISTED = "unknown (not in the metadata spreadsheet)"


@dataclass
class Sources:
    """The source of each image (path relative to the data set root), and what could not be read."""

    of: dict[str, str]
    problems: list[str] = field(default_factory=list)


def metadata_file(root: str | os.PathLike, class_name: str) -> Path:
    return Path(root) / f"{class_name}{METADATA_SUFFIX}"


def _key(name: str) -> str:
    """A file name as the spreadsheets and the folders both can be matched: no extension, lower case."""
    name = str(name).strip()
    stem, dot, suffix = name.rpartition(".")
    if dot and suffix.lower() in ("png", "jpg", "jpeg"):
        name = stem
    return name.lower()


def read_sources(root: str | os.PathLike, paths: list[str], labels: list[str]) -> Sources:
    """Each image's source from its class's spreadsheet (images are ``paths`` relative to ``root``)."""
    tables, problems = {}, []
    for class_name in sorted(set(labels)):
        file = metadata_file(root, class_name)
        if not file.is_file():
            tables[class_name] = NO_SPREADSHEET
            problems.append(f"{file.name}: missing; the sources of {class_name} are unknown")
            continue
        try:
            sheet = pd.read_excel(file, dtype=str, engine="calamine")  # 8x openpyxl's speed, and pandas's next default
            missing = [c for c in (NAME_COLUMN, SOURCE_COLUMN) if c not in sheet.columns]
            if missing:
                raise ValueError(f"no column {', '.join(missing)} (columns: {', '.join(map(str, sheet.columns))})")
        except Exception as exc:  # a damaged file raises many kinds; each means the same here
            tables[class_name] = UNREADABLE
            problems.append(f"{file.name}: unreadable ({type(exc).__name__}: {str(exc).strip()[:200]}); the sources of {class_name} are unknown")
            continue
        sheet = sheet.dropna(subset=[NAME_COLUMN])
        tables[class_name] = dict(zip(sheet[NAME_COLUMN].map(_key), sheet[SOURCE_COLUMN].fillna("").str.strip()))
    of, not_listed = {}, {}
    for path, label in zip(paths, labels):
        table = tables[label]
        if isinstance(table, str):
            of[path] = table
            continue
        source = table.get(_key(Path(path).name))
        if not source:
            not_listed[label] = not_listed.get(label, 0) + 1
        of[path] = source or NOT_LISTED
    problems += [f"{label}: {count} image(s) not in {metadata_file(root, label).name}" for label, count in sorted(not_listed.items())]
    return Sources(of, problems)


def accuracy_by_source(test: pd.DataFrame, sources: Sources) -> list[dict]:
    """Test accuracy per (true class, source), with counts, from a predictions table (path, true, predicted)."""
    table = test.assign(source=test["path"].map(sources.of), correct=test["true"] == test["predicted"])
    rows = []
    for (label, source), group in table.groupby(["true", "source"], sort=True):
        rows.append({"class": label, "source": source, "images": int(len(group)), "correct": int(group["correct"].sum()),
                     "accuracy": float(group["correct"].mean()) if len(group) else float("nan")})
    return rows


def short_source(source: str, width: int = 48) -> str:
    """A source URL shortened for a table: no scheme, no query or fragment, at most ``width`` characters."""
    text = source.split("://", 1)[-1].split("#", 1)[0].split("?", 1)[0].rstrip("/")
    return text if len(text) <= width else text[: width - 1] + "…"


def summarise(test: pd.DataFrame, sources: Sources) -> dict:
    """The record for metrics.json: accuracy per class and source, unknown sources and what went wrong."""
    return {
        "by_class_and_source": accuracy_by_source(test, sources),
        "images": int(len(test)),
        "unknown_source": int(np.sum([sources.of.get(p, "").startswith("unknown") for p in test["path"]])),
        "problems": sources.problems,
    }


def hold_out(split, root: str | os.PathLike, holdout: str, groups: pd.DataFrame):
    """The split with every image of one class from one source (``holdout``: "<Class>=<source>") moved to test:
    never trained or validated on, tested on beside the class's other sources. An image of another source in the
    same near-duplicate group as a held-out image (``groups``: path, group, as ``data/grouping.py`` finds them) is
    a copy of it: it is left out of the run altogether, neither trained on (the held-out film would be seen) nor
    tested on (it would count as a seen source). (new Split, record)"""
    from .layout import DatasetError
    from .split import Split, split_hash

    label, source = (part.strip() for part in holdout.split("=", 1))
    table = split.table
    if label not in set(table["label"]):
        raise DatasetError(f"holdout_source={holdout!r}: no class {label!r} in the data set ({sorted(set(table['label']))})")
    of = read_sources(root, table["path"].tolist(), table["label"].tolist()).of
    held = (table["label"] == label) & (table["path"].map(of) == source)
    if not held.any():
        known = sorted({of[p] for p in table.loc[table["label"] == label, "path"]})
        raise DatasetError(f"holdout_source={holdout!r}: no {label} image comes from {source!r}; its sources: {known}")
    group_of = dict(zip(groups["path"], groups["group"]))
    held_groups = set(table.loc[held, "path"].map(group_of))
    copies = ~held & table["path"].map(group_of).isin(held_groups)
    moved_from = {s: int(((table["split"] == s) & held).sum()) for s in ("train", "val", "test")}
    left_out = {s: int(((table["split"] == s) & copies).sum()) for s in ("train", "val", "test")}
    table = table.assign(split=table["split"].where(~held, "test"))[~copies].reset_index(drop=True)
    for subset in ("train", "val"):
        if not ((table["split"] == subset) & (table["label"] == label)).any():
            raise DatasetError(f"holdout_source={holdout!r}: no {label} image from another source is left for {subset}; "
                               "a class with a single source cannot be held out")
    record = {"class": label, "source": source, "images": int(held.sum()), "moved_from": moved_from,
              "copies_left_out": {"images": int(copies.sum()), "from": left_out,
                                  "why": HOLDOUT_COPIES}}
    return Split(table, split_hash(table)), record


HOLDOUT_COPIES = ("an image of another source in a near-duplicate group with a held-out image is left out of the run "
                  "(neither trained, validated nor tested on)")


def sources_per_class(root: str | os.PathLike, images: pd.DataFrame) -> dict[str, dict[str, int]]:
    """How many images of each class (``images``: path, label) come from each source."""
    of = read_sources(root, images["path"].tolist(), images["label"].tolist()).of
    table = images.assign(source=images["path"].map(of))
    return {label: {str(s): int(n) for s, n in group["source"].value_counts().sort_index().items()}
            for label, group in table.groupby("label", sort=True)}


HOLDOUT_MIN_IMAGES = 5  # a source with fewer images of a class says nothing when held out (and may be a stray copy)


def holdout_pairs(per_class: dict[str, dict[str, int]], min_images: int = HOLDOUT_MIN_IMAGES) -> tuple[list[tuple[str, str]], list[dict]]:
    """The (class, source) pairs ``--holdout-sources`` can test (a source with ``min_images`` images or more, in a class
    with another such source), and what it cannot, with why."""
    testable, untestable = [], []
    for label, counts in per_class.items():
        known = [source for source, n in counts.items() if not source.startswith("unknown") and n >= min_images]
        few = [source for source, n in counts.items() if not source.startswith("unknown") and n < min_images]
        if len(known) >= 2:
            testable += [(label, source) for source in known]
        else:
            untestable.append({"class": label, "sources": list(counts), "reason":
                               "a single source: holding it out leaves nothing of the class to train on, and inside this "
                               "data set the class cannot be told apart from its source" if known else "no known source"})
        untestable += [{"class": label, "sources": [source], "reason": f"only {counts[source]} image(s) from this source, "
                        f"fewer than {min_images}"} for source in few]
    return testable, untestable
