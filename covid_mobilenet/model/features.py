"""Fast frozen-backbone mode: the backbone runs over each split once, and every configuration trains its head.

With ``train_base=False`` the backbone is a fixed function of the pixels, so
training the whole model recomputes the same features on every batch of every
epoch, for every configuration. Here they are computed once per (data, split,
image size, weights, precision) and cached on disk as float16 rows; each
configuration then trains only its head (``architecture.build_head``) on them, with the
same initial weights, batches and Dropout masks as end-to-end frozen training,
so the results agree within float16 rounding of the features.

A cache entry is a folder ``<feature_dir>/<key>/`` holding ``train.f16``,
``val.f16``, ``test.f16`` (rows in the split table's order) and ``manifest.json``,
written last: an entry without it is incomplete and is recomputed. Notebooks
running at once (``run_all.py --jobs``) take a lock, so one computes and the
others wait and read.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from ..common.files import atomic_path, file_sha256, write_json
from ..data.layout import SPLITS
from ..data.pipeline import AUTOTUNE, SplitPipelines, region_images, split_arrays, split_labels, split_masks
from ..data.scan import ImageIndex
from ..data.split import Split
from .architecture import feature_extractor
from .pooled import pooled_maps

MANIFEST = "manifest.json"
FEATURE_DTYPE = np.float16
POOLING_CHUNK = 512  # rows pooled at once: the real train split's maps are GBs


@dataclass
class FeatureCache:
    """One complete cache entry, and whether this run computed it."""

    folder: Path
    manifest: dict
    computed_here: bool

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["feature_shape"])

    def pipelines(self, split: Split, class_names: list[str], *, batch_size: int, seed: int) -> SplitPipelines:
        """The cached features served like images: same order, same per-epoch shuffle, same batches."""
        examples, sizes, readers = {}, {}, {}
        for subset in SPLITS:
            labels = split_labels(split, class_names, subset)
            sizes[subset] = len(labels)
            readers[subset] = RowReader(self.folder / f"{subset}.f16", sizes[subset], self.feature_shape)
            examples[subset] = tf.data.Dataset.from_tensor_slices(
                (tf.range(sizes[subset], dtype=tf.int64), tf.constant(labels, tf.int32))
            )
        shape = self.feature_shape

        def load_batch(subset, rows, labels):
            features = tf.numpy_function(readers[subset].rows, [rows], tf.float16, stateful=False)
            features.set_shape([None, *shape])
            return features, labels

        return SplitPipelines(examples, sizes, batch_size, seed, load_batch=load_batch)

    def pooled(self, subset: str) -> np.ndarray:
        """One subset's features averaged over their positions (float32, rows in the split table's order), what the
        unfamiliar-image guard scores: computed from the rows by the first run that asks, kept in the entry
        (``<subset>.pooled.f32``) for the sweep's other configurations."""
        count, channels = self.manifest["counts"][subset], self.feature_shape[-1]
        file = self.folder / f"{subset}.pooled.f32"
        try:
            kept = np.fromfile(file, np.float32)
            if kept.size == count * channels:
                return kept.reshape(count, channels)
        except OSError:
            pass
        reader = RowReader(self.folder / f"{subset}.f16", count, self.feature_shape)
        chunks = [pooled_maps(reader.rows(np.arange(start, min(start + POOLING_CHUNK, count))))
                  for start in range(0, count, POOLING_CHUNK)]
        pooled = np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)
        with atomic_path(file) as partial:
            pooled.tofile(partial)
        return pooled

    def rows(self, subset: str) -> np.ndarray:
        """Every cached row of one subset, in the split table's order (float16)."""
        count = self.manifest["counts"][subset]
        return RowReader(self.folder / f"{subset}.f16", count, self.feature_shape).rows(np.arange(count))


class RowReader:
    """Reads rows of a float16 feature file by number, without mapping the file into memory.

    Rows are read with positional reads, so tf.data's threads can share one reader and the
    process's memory holds only the batches in flight (the page cache does the rest).
    """

    def __init__(self, path: Path, count: int, shape: tuple[int, ...]):
        self.path, self.count, self.shape = Path(path), count, tuple(shape)
        self.row_bytes = int(np.prod(shape)) * np.dtype(FEATURE_DTYPE).itemsize
        size = self.path.stat().st_size
        if size != count * self.row_bytes:
            raise FeatureCacheError(f"{self.path} holds {size} bytes, not {count} rows of {self.row_bytes}; delete its folder to recompute it.")
        self._descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._lock = threading.Lock()

    def rows(self, numbers: np.ndarray) -> np.ndarray:
        numbers = np.asarray(numbers, dtype=np.int64)
        out = np.empty((len(numbers), self.row_bytes), np.uint8)
        if len(numbers) and np.array_equal(numbers, np.arange(numbers[0], numbers[0] + len(numbers))):
            self._read_into(out, int(numbers[0]))  # a run of rows: one read
        else:
            for i, number in enumerate(numbers):
                self._read_into(out[i:i + 1], int(number))
        return out.view(FEATURE_DTYPE).reshape(len(numbers), *self.shape)

    def _read_into(self, out: np.ndarray, first: int) -> None:
        """Rows from ``first`` on into ``out`` (whole rows of bytes), straight into its memory where the system can."""
        view, offset = memoryview(out).cast("B"), first * self.row_bytes
        while len(view):
            if hasattr(os, "preadv"):
                done = os.preadv(self._descriptor, [view], offset)
            else:  # Windows and macOS before 11: read, then copy
                data = self._read(len(view), offset)
                view[:len(data)], done = data, len(data)
            if done == 0:
                raise FeatureCacheError(f"{self.path} ended early; delete its folder to recompute it.")
            view, offset = view[done:], offset + done

    def _read(self, size: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(self._descriptor, size, offset)
        with self._lock:  # Windows: no positional read
            os.lseek(self._descriptor, offset, os.SEEK_SET)
            return os.read(self._descriptor, size)

    def __del__(self):
        if getattr(self, "_descriptor", None) is not None:
            os.close(self._descriptor)


class FeatureCacheError(RuntimeError):
    """A cache entry is damaged; the message names it and says what to do."""


def cache_key(index: ImageIndex, split: Split, *, image_size: int, weights: str | None, seed: int, region: str = "full") -> str:
    """What the features depend on: the images' content, the split, the image size, the weights, the precision,
    and the input region (data.masks.REGIONS)."""
    content = hashlib.sha256("".join(f"{p}\t{h}\n" for p, h in zip(index.images["path"], index.images["sha256"])).encode())
    if weights is None:
        weights_id = f"random{seed}"  # build_backbone draws random weights right after seeding with seed
    elif weights == "imagenet":
        weights_id = "imagenet"
    else:
        weights_id = "file" + file_sha256(weights)[:12]
    policy = keras.mixed_precision.global_policy().name
    return f"{split.sha256[:12]}-{content.hexdigest()[:12]}-{image_size}px-{weights_id}-{policy}" + (
        "" if region == "full" else f"-{region}")


def cached_features(
    index: ImageIndex, split: Split, *, feature_dir: Path, image_size: int, weights: str | None, seed: int, batch_size: int,
    region: str = "full",
) -> FeatureCache:
    """The cache entry of these data and backbone, computed (once, whoever asks first) when absent."""
    key = cache_key(index, split, image_size=image_size, weights=weights, seed=seed, region=region)
    folder = Path(feature_dir) / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.parent / f"{key}.lock"):
        manifest = _read_manifest(folder)
        if manifest is not None:
            return FeatureCache(folder, manifest, computed_here=False)
        manifest = compute_features(index, split, folder, image_size=image_size, weights=weights, seed=seed,
                                    batch_size=batch_size, region=region)
        return FeatureCache(folder, manifest, computed_here=True)


def compute_features(
    index: ImageIndex, split: Split, folder: Path, *, image_size: int, weights: str | None, seed: int, batch_size: int,
    region: str = "full",
) -> dict:
    """Run the frozen backbone over every split once, writing float16 rows; the manifest last."""
    images = {}
    for subset in SPLITS:
        paths, _ = split_arrays(split, index.root, index.class_names, subset)
        # streamed, not cached: the images are read once here and never kept
        images[subset] = region_images(paths, image_size=image_size, region=region,
                                       mask_paths=split_masks(split, index.root, subset))
    return _write_features(folder, images, image_size=image_size, weights=weights, seed=seed, batch_size=batch_size,
                           about={"split_sha256": split.sha256, "region": region})


def _write_features(folder: Path, images: dict[str, tf.data.Dataset], *, image_size: int, weights: str | None,
                    seed: int, batch_size: int, about: dict) -> dict:
    """The frozen backbone over each named dataset of images, one float16 file each; the manifest last."""
    started = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)  # an entry a kill left without its manifest
    folder.mkdir(parents=True)
    extractor = feature_extractor(image_size, weights, seed)
    infer = tf.function(lambda pixels: extractor(pixels, training=False))
    counts = {}
    for subset, dataset in images.items():
        count = 0
        with atomic_path(folder / f"{subset}.f16") as partial, open(partial, "wb") as out:
            for pixels in dataset.batch(batch_size).prefetch(AUTOTUNE):
                out.write(np.asarray(infer(pixels), dtype=FEATURE_DTYPE).tobytes())
                count += len(pixels)
        counts[subset] = count
        print(f"backbone features of {count} {subset} images computed" + (
            f" ({about['region']})" if about.get("region", "full") != "full" else ""))
    manifest = {
        "key": folder.name,
        **about,
        "image_size": image_size,
        "weights": weights,
        "seed": seed,
        "precision": keras.mixed_precision.global_policy().name,
        "feature_shape": [int(d) for d in extractor.output.shape[1:]],
        "dtype": np.dtype(FEATURE_DTYPE).name,
        "counts": counts,
        "seconds": time.perf_counter() - started,
    }
    write_json(folder / MANIFEST, manifest)
    return manifest


def cached_region_features(
    index: ImageIndex, split: Split, region: str, paths: list[str], mask_paths: list[str], *, feature_dir: Path,
    image_size: int, weights: str | None, seed: int, batch_size: int,
) -> np.ndarray:
    """The frozen backbone's features of some images shown as ``region`` (the shortcut checks' test images that have
    a lung mask: the lungs removed, blurred or alone), cached beside the split's own entry and keyed by the same
    things plus the region and the list of images: computed by the first configuration of a sweep that asks, read by
    the others. Rows in ``paths``' order (float16)."""
    listing = hashlib.sha256("".join(f"{p}\t{m}\n" for p, m in zip(paths, mask_paths)).encode()).hexdigest()[:12]
    key = f"{cache_key(index, split, image_size=image_size, weights=weights, seed=seed)}-shown-{region}-{listing}"
    folder = Path(feature_dir) / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder.parent / f"{key}.lock"):
        manifest = _read_manifest(folder)
        if manifest is None:
            images = {"images": region_images(list(paths), image_size=image_size, region=region,
                                              mask_paths=list(mask_paths))}
            manifest = _write_features(folder, images, image_size=image_size, weights=weights, seed=seed,
                                       batch_size=batch_size, about={"split_sha256": split.sha256, "region": region,
                                                                     "images_sha256": listing})
    count = manifest["counts"]["images"]
    return RowReader(folder / "images.f16", count, tuple(manifest["feature_shape"])).rows(np.arange(count))


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _exclusive(lock_file: Path):
    """One process at a time (POSIX advisory lock; elsewhere, concurrent runs may both compute, safely)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("Another run is computing these features; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
