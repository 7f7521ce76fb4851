"""How well and how fast near-duplicates are found (``data/duplicates.py``): recall on known copies, false matches
among known distinct films, and the time to fingerprint and group a set of the real size, first and cached.

The known pairs: every distinct film of a generated set (seed ``EVALUATION_SEED``, not the set the thresholds
were chosen on) copied once by each transformation of ``duplicates.TRANSFORMS``. A copy counts as found when the
pair (original, copy) is confirmed. False matches: confirmed pairs of two distinct films, and of a copy with a
film it was not made from, over all such pairs. Free of TensorFlow.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.demo import DEMO_RECORD, generate_demo_dataset
from ..data.duplicates import (HASH_DISTANCE, PIXEL_SIMILARITY, TRANSFORMS, candidate_pairs, fingerprint, near_copy,
                               similarities)
from ..data.grouping import group_images
from ..data.scan import scan_dataset

EVALUATION_SEED = 11  # the thresholds were chosen on a 1,000-image set of seed 3
EVALUATION_IMAGES = 400


def known_pairs(images: int = EVALUATION_IMAGES, seed: int = EVALUATION_SEED) -> dict:
    """Recall per transformation and the false-match rate, on a generated set of ``images`` films."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = generate_demo_dataset(Path(scratch) / "set", images=images, seed=seed)
        planted = json.loads((root / DEMO_RECORD).read_text())["duplicates"]
        related = {copy[key] for copy in planted for key in ("path", "of")}  # the set's own copies, and their originals
        films = [path for path in sorted(root.glob("*/images/*.png")) if path.relative_to(root).as_posix() not in related]
        pictures = [Image.open(path).convert("L") for path in films]
    prints = [fingerprint(picture) for picture in pictures]
    copies = [(n, kind, fingerprint(near_copy(picture, kind, rng))) for n, picture in enumerate(pictures) for kind in TRANSFORMS]
    hashes = np.stack([h for h, _ in prints] + [h for _, _, (h, _) in copies])
    thumbs = np.stack([t for _, t in prints] + [t for _, _, (_, t) in copies])
    pairs = candidate_pairs(hashes)
    confirmed = pairs[similarities(thumbs, pairs) >= PIXEL_SIMILARITY]
    found = {(int(i), int(j)) for i, j, _ in confirmed}
    origin = [n for n in range(len(films))] + [n for n, _, _ in copies]  # the film each row shows
    recall = {}
    for kind in TRANSFORMS:
        rows = [len(films) + k for k, (_, copy_kind, _) in enumerate(copies) if copy_kind == kind]
        recall[kind] = float(np.mean([(origin[row], row) in found for row in rows]))
    false = sum(origin[i] != origin[j] for i, j in found)
    shown = 1 + len(TRANSFORMS)  # rows per film: itself and its copies
    total = len(origin) * (len(origin) - 1) // 2 - len(films) * shown * (shown - 1) // 2  # pairs of different films
    return {"films": len(films), "copies": len(copies), "recall": recall,
            "recall_all": float(np.mean([(origin[len(films) + k], len(films) + k) in found for k in range(len(copies))])),
            "false_matches": int(false), "distinct_pairs": int(total), "false_match_rate": false / total,
            "candidate_pairs": int(len(pairs)), "thresholds": {"hash_distance_bits": HASH_DISTANCE, "pixel_similarity": PIXEL_SIMILARITY},
            "seed": seed}


def planted_found(root: Path, groups) -> dict:
    """On a generated set: how many of its listed copies (demo.json) were grouped with their original, and how many
    groups join films that no listed copy connects (false matches)."""
    planted = json.loads((Path(root) / DEMO_RECORD).read_text())["duplicates"]
    group_of = dict(zip(groups.images["path"], groups.images["group"]))
    parent: dict[str, str] = {}

    def origin(path: str) -> str:
        while parent.get(path, path) != path:
            path = parent[path]
        return path

    for copy in planted:
        parent[origin(copy["path"])] = origin(copy["of"])
    false = [int(g) for g, members in groups.table.groupby("group") if len({origin(p) for p in members["path"]}) > 1]
    return {"planted": len(planted), "found": sum(group_of[c["path"]] == group_of[c["of"]] for c in planted),
            "false_match_groups": len(false), "false_match_paths": groups.table[groups.table["group"].isin(false)]["path"].tolist()}


def grouping_time(root: Path) -> dict:
    """Seconds to fingerprint and group every image of ``root`` the first time (empty cache) and again (cached)."""
    index = scan_dataset(root)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        groups = group_images(root, index.images, Path(cache))
        first = time.perf_counter() - started
        started = time.perf_counter()
        group_images(root, index.images, Path(cache))
        again = time.perf_counter() - started
    result = {"images": len(index.images), "first_seconds": first, "cached_seconds": again,
              "groups": int(groups.table["group"].nunique()), "images_in_groups": int(len(groups.table)),
              **planted_found(root, groups)}
    print(f"near-duplicates: {result['images']} images grouped in {first:.1f} s, {again:.1f} s cached; "
          f"{result['groups']} groups of {result['images_in_groups']} images; {result['found']} of {result['planted']} "
          f"planted copies found, {result['false_match_groups']} group(s) joining films no copy connects")
    return result
