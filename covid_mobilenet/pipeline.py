"""The tf.data input pipeline: decode and resize each image once, cache, shuffle, batch, prefetch.

Images come out as 3-channel uint8 with values 0..255 whatever the file held
(grayscale, RGB, RGBA, 16-bit); scaling for MobileNet happens inside the model,
so a saved model takes raw pixels.
"""
from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from .data import Split

AUTOTUNE = tf.data.AUTOTUNE


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read one file into a (image_size, image_size, 3) uint8 tensor."""
    raw = tf.io.read_file(path)
    # decode_image reads PNG or JPEG by content, drops alpha, repeats gray to 3 channels
    # and scales 16-bit samples down to 8 bits.
    image = tf.io.decode_image(raw, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def make_dataset(
    paths: list[str],
    labels: list[int],
    *,
    image_size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    cache_file: str | os.PathLike | None = None,
) -> tf.data.Dataset:
    """Batches of (uint8 images, int32 labels); shuffled each epoch when ``shuffle_seed`` is given.

    Decoded images are cached in memory, or in ``cache_file`` on disk when given,
    so files are decoded in the first epoch only.
    """
    dataset = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), tf.constant(labels, tf.int32)))
    dataset = dataset.map(
        lambda path, label: (load_image(path, image_size), label), num_parallel_calls=AUTOTUNE
    )
    dataset = dataset.cache(_prepare_cache_file(cache_file) if cache_file else "")
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(AUTOTUNE)


def split_arrays(split: Split, root: Path, class_names: list[str], subset: str) -> tuple[list[str], list[int]]:
    """Absolute paths and class indices of one subset, in the split table's order."""
    rows = split.subset(subset)
    index = {name: i for i, name in enumerate(class_names)}
    return [str(Path(root) / p) for p in rows["path"]], [index[label] for label in rows["label"]]


def split_datasets(
    split: Split,
    root: Path,
    class_names: list[str],
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, tf.data.Dataset]:
    """One dataset per subset (train, val, test); only train is shuffled."""
    datasets = {}
    for subset in ("train", "val", "test"):
        paths, labels = split_arrays(split, root, class_names, subset)
        cache_file = Path(cache_dir) / f"{subset}-{image_size}px-{split.sha256[:16]}" if cache_dir else None
        datasets[subset] = make_dataset(
            paths,
            labels,
            image_size=image_size,
            batch_size=batch_size,
            shuffle_seed=seed if subset == "train" else None,
            cache_file=cache_file,
        )
    return datasets


def _prepare_cache_file(cache_file: str | os.PathLike) -> str:
    """A disk cache path; the leftovers of an interrupted write are removed so TF rewrites it."""
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    if not Path(f"{cache_file}.index").exists():
        for leftover in cache_file.parent.glob(f"{cache_file.name}*"):
            leftover.unlink()
    return str(cache_file)
