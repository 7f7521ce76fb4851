"""Near-duplicate images: the same picture re-encoded, resized, brightened, cropped at its border or with mild noise.

The split already keeps byte-identical files together; a re-encoded or resized copy has other bytes and could sit
in train and test at once, and a copy filed under two classes (a label conflict) is trained on both ways. Each
image gets a fingerprint, once per file content (cached by SHA-256): imagehash's perceptual hash (pHash, 64 bits)
of the whole image and of its centre with 3% and 6% cut from every side, and a 32 x 32 grayscale thumbnail of the
whole image and of its centre with 1%, 2% ... 6% cut, so that a copy cropped at its border matches the original's
crop of about the same size.

Two images are candidates when the whole of one and a crop of the other have hashes at most ``HASH_DISTANCE`` bits
apart; chest films resemble each other, so a candidate is confirmed only when the thumbnails also agree pixel by
pixel: the highest Pearson correlation of one's whole thumbnail with a crop of the other's is at least
``PIXEL_SIMILARITY``. Both thresholds were chosen on known pairs (each of ``TRANSFORMS`` applied by ``near_copy``
to 80 generated films) and the known distinct films of a 1,000-image generated set (seed 3), whose films all
resemble each other (one template per class, far more alike than real patients); ``bench/duplicates.py`` measures
recall and false matches on another set (seed 11).
Confirmed pairs are joined into groups (connected components). Free of TensorFlow.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from ..common.files import write_atomic
from .image_files import decoded_picture

CROPS = (0.0, 0.03, 0.06)  # share cut from every side before hashing: the whole image, then two centre crops
THUMB_CROPS = tuple(share / 100 for share in range(7))  # the thumbnails': every 1%, so a crop is matched within 0.5%
THUMB = 32
HASH_DISTANCE = 8  # bits, of 64: known copies were at most 6 apart (a crop), most 0 to 2
PIXEL_SIMILARITY = 0.987  # known copies correlated at 0.9947 or more, the closest distinct films at 0.9800: half-way
FINGERPRINT_VERSION = 3  # in the cache file's name: a changed fingerprint is computed again
TRANSFORMS = ("jpeg", "resize", "brightness", "crop", "noise")


def _crop(picture: Image.Image, share: float) -> Image.Image:
    width, height = picture.size
    x, y = int(round(share * width)), int(round(share * height))
    return picture.crop((x, y, width - x, height - y))


def fingerprint(picture: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(pHash of each of CROPS as uint64; 32x32 uint8 thumbnail of each of THUMB_CROPS, len(THUMB_CROPS) x 32 x 32)."""
    gray = picture.convert("L")
    hashes = [int(str(imagehash.phash(_crop(gray, share))), 16) for share in CROPS]
    thumbs = [np.asarray(_crop(gray, share).resize((THUMB, THUMB), Image.BOX), np.uint8) for share in THUMB_CROPS]
    return np.array(hashes, np.uint64), np.stack(thumbs)


def _file_fingerprint(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The fingerprint of what the scan and training decode (``image_files.decoded_picture``): a damaged ancillary
    PNG chunk is ignored, a 16-bit film scaled, not saturated."""
    return fingerprint(decoded_picture(Path(path).read_bytes()))


def fingerprints(root: Path, images: pd.DataFrame, cache_dir: Path | None, *, workers: int | None = None):
    """(hashes N x len(CROPS), thumbnails N x len(THUMB_CROPS) x 32 x 32) of ``images`` (path relative to ``root``,
    sha256), in their order: from ``<cache_dir>/fingerprints-v<version>.npz`` where the file's content is there,
    computed (and added to the cache) otherwise."""
    cache = None if cache_dir is None else Path(cache_dir) / f"fingerprints-v{FINGERPRINT_VERSION}.npz"
    known: dict[str, int] = {}
    stored_hashes, stored_thumbs = np.zeros((0, len(CROPS)), np.uint64), np.zeros((0, len(THUMB_CROPS), THUMB, THUMB), np.uint8)
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            known = {sha: i for i, sha in enumerate(stored["sha256"])}
            stored_hashes, stored_thumbs = stored["hashes"], stored["thumbs"]
    shas = images["sha256"].tolist()
    missing = sorted({sha: path for sha, path in zip(shas, images["path"]) if sha not in known}.items())
    if missing:
        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            computed = list(pool.map(lambda item: _file_fingerprint(Path(root) / item[1]), missing))
        start = len(known)
        known.update({sha: start + i for i, (sha, _) in enumerate(missing)})
        stored_hashes = np.concatenate([stored_hashes, np.stack([h for h, _ in computed])])
        stored_thumbs = np.concatenate([stored_thumbs, np.stack([t for _, t in computed])])
        if cache is not None:
            buffer = io.BytesIO()
            np.savez(buffer, sha256=np.array(list(known)), hashes=stored_hashes, thumbs=stored_thumbs)
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, buffer.getvalue())
    rows = [known[sha] for sha in shas]
    return stored_hashes[rows], stored_thumbs[rows]


def _normalised(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as unit vectors of zero mean (so that brightness and contrast do not count), float32."""
    flat = thumbs.reshape(*thumbs.shape[:-2], thumbs.shape[-2] * thumbs.shape[-1]).astype(np.float32)  # none: empty
    flat -= flat.mean(axis=-1, keepdims=True)
    return flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-6)


def candidate_pairs(hashes: np.ndarray, max_distance: int = HASH_DISTANCE, chunk: int = 256) -> np.ndarray:
    """(i, j, distance) for i < j whose whole-image hash is within ``max_distance`` bits of a crop of the other's
    (the smallest such distance)."""
    whole = hashes[:, 0]
    found = []
    for start in range(0, len(hashes), chunk):
        rows = hashes[start:start + chunk]
        best = np.full((len(rows), len(hashes)), 255, np.uint8)
        for crop in range(hashes.shape[1]):  # the row's whole against j's crop, and the row's crop against j's whole
            np.minimum(best, np.bitwise_count(rows[:, :1] ^ hashes[None, :, crop]), out=best)
            np.minimum(best, np.bitwise_count(rows[:, crop:crop + 1] ^ whole[None, :]), out=best)
        i, j = np.nonzero(best <= max_distance)
        keep = i + start < j
        found.append(np.stack([i[keep] + start, j[keep], best[i[keep], j[keep]]], axis=1).astype(np.int64))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int64)


def similarities(thumbs: np.ndarray, pairs: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """Pixel similarity of each pair (i, j, ...): the highest correlation of one's whole thumbnail with a crop of the
    other's, either way round."""
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), chunk):
        i, j = pairs[start:start + chunk, 0], pairs[start:start + chunk, 1]
        a, b = _normalised(thumbs[i]), _normalised(thumbs[j])  # pairs x crops x pixels
        forward = np.einsum("np,ncp->nc", a[:, 0], b).max(axis=1)
        backward = np.einsum("np,ncp->nc", b[:, 0], a).max(axis=1)
        out[start:start + chunk] = np.maximum(forward, backward)
    return out


def confirmed_pairs(shas: list[str], hashes: np.ndarray, thumbs: np.ndarray, cache_dir: Path | None = None, *,
                    max_distance: int = HASH_DISTANCE, min_similarity: float = PIXEL_SIMILARITY) -> pd.DataFrame:
    """The confirmed near-duplicate pairs among distinct file contents (i, j: rows of ``shas``; distance,
    similarity), cached in ``<cache_dir>/pairs-<key>.csv`` by the set of contents and the thresholds."""
    key = hashlib.sha256("\n".join([f"v{FINGERPRINT_VERSION} {max_distance} {min_similarity}", *sorted(shas)]).encode()).hexdigest()
    cache = None if cache_dir is None else Path(cache_dir) / f"pairs-{key[:16]}.csv"
    row_of = {sha: row for row, sha in enumerate(shas)}
    if cache is not None and cache.is_file():
        stored = pd.read_csv(cache)
        pairs = pd.DataFrame({"i": stored["sha_a"].map(row_of), "j": stored["sha_b"].map(row_of),
                              "distance": stored["distance"], "similarity": stored["similarity"]})
        return pd.DataFrame({"i": pairs[["i", "j"]].min(axis=1), "j": pairs[["i", "j"]].max(axis=1),
                             "distance": pairs["distance"], "similarity": pairs["similarity"]})
    candidates = candidate_pairs(hashes, max_distance)
    similarity = similarities(thumbs, candidates)
    kept = similarity >= min_similarity
    pairs = pd.DataFrame({"i": candidates[kept, 0], "j": candidates[kept, 1], "distance": candidates[kept, 2],
                          "similarity": np.round(similarity[kept], 4)})
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, pd.DataFrame({"sha_a": [shas[i] for i in pairs["i"]], "sha_b": [shas[j] for j in pairs["j"]],
                                          "distance": pairs["distance"], "similarity": pairs["similarity"]}).to_csv(index=False))
    return pairs


def components(count: int, pairs: pd.DataFrame) -> np.ndarray:
    """A group number per row (connected components of the pairs), numbered in the order of their first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs["i"].to_numpy(int), pairs["j"].to_numpy(int))), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)
    order = {label: rank for rank, label in enumerate(labels[np.sort(first)])}
    return np.array([order[label] for label in labels], dtype=int)


def near_copy(picture: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """A copy of ``picture`` as a data set collects them (one of TRANSFORMS): re-encoded as JPEG (quality 60-85),
    resized (to 224, 256, 512 or 1024 px), brightened or darkened (x0.75-1.3), cut 2-6% at every border and resized
    back, or with Gaussian noise (sigma 3-8 grey levels)."""
    gray = picture.convert("L")
    if kind == "jpeg":
        buffer = io.BytesIO()
        gray.save(buffer, "JPEG", quality=int(rng.integers(60, 86)))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    if kind == "resize":
        side = int(rng.choice([224, 256, 512, 1024]))
        return gray.resize((side, side), Image.BICUBIC)
    if kind == "brightness":
        return ImageEnhance.Brightness(gray).enhance(float(rng.uniform(0.75, 1.3)))
    if kind == "crop":
        return _crop(gray, float(rng.uniform(0.02, 0.06))).resize(gray.size, Image.BICUBIC)
    if kind == "noise":
        noisy = np.asarray(gray, np.float64) + rng.normal(0, rng.uniform(3, 8), (gray.size[1], gray.size[0]))
        return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    raise ValueError(f"unknown transformation {kind!r}; one of {TRANSFORMS}")
