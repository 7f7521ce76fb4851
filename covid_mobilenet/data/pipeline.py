"""The tf.data input pipeline: decode and resize each image once, cache, shuffle, batch, prefetch.

Images come out as 3-channel uint8 with values 0..255 whatever the file held
(grayscale, RGB, RGBA, 16-bit); scaling for MobileNet happens inside the model,
so a saved model takes raw pixels.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tensorflow as tf

from .image_files import JPEG_START, PNG_SIGNATURE
from .layout import SPLITS
from .masks import THRESHOLD
from .split import Split

AUTOTUNE = tf.data.AUTOTUNE


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read one file into a (image_size, image_size, 3) uint8 tensor; a file that is not PNG or JPEG by its content
    is refused, as the scan refuses it (``image_files.py``)."""
    return fitted(decode_file(path), image_size)


def decode_file(path: tf.Tensor) -> tf.Tensor:
    """One PNG or JPEG file as a (height, width, 3) uint8 tensor at its own size; anything else is refused."""
    raw = tf.io.read_file(path)
    is_png = tf.equal(tf.strings.substr(raw, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE)
    is_jpeg = tf.equal(tf.strings.substr(raw, 0, len(JPEG_START)), JPEG_START)
    with tf.control_dependencies([tf.debugging.Assert(is_png | is_jpeg, ["neither a PNG nor a JPEG file:", path])]):
        raw = tf.identity(raw)
    # decode_image reads PNG or JPEG by content, drops alpha, repeats gray to 3 channels
    # and scales 16-bit samples down to 8 bits.
    return tf.io.decode_image(raw, channels=3, dtype=tf.uint8, expand_animations=False)


def fitted(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """A decoded uint8 image (height, width, 3) resized to the model's side, as every image the model sees is."""
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def load_mask(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """A lung mask file as an (image_size, image_size) bool tensor, resized with nearest neighbour."""
    mask = tf.io.decode_image(tf.io.read_file(path), channels=1, dtype=tf.uint8, expand_animations=False)
    mask = tf.image.resize(mask, [image_size, image_size], method="nearest")
    return mask[..., 0] > THRESHOLD


BLUR_SHARE = 1 / 16  # lungs_blurred: the image shrunk to 1/16 of its side and enlarged back, a heavy blur
FEATHER_SHARE = 1 / 8  # and the mask's edge softened the same way at 1/8, so no sharp outline is drawn


def apply_region(image: tf.Tensor, lungs: tf.Tensor, region: str) -> tf.Tensor:
    """The image with the pixels outside ``region`` (masks.TEST_REGIONS) black, or its lungs blurred."""
    if region == "full":
        return image
    if region == "lungs_blurred":
        side = tf.shape(image)[:2]

        def smooth(x, share):
            small = tf.maximum(tf.cast(tf.cast(side, tf.float32) * share, tf.int32), 2)
            return tf.image.resize(tf.image.resize(x, small, antialias=True), side, method="bilinear")

        pixels = tf.cast(image, tf.float32)
        weight = tf.clip_by_value(smooth(tf.cast(lungs[..., None], tf.float32), FEATHER_SHARE), 0.0, 1.0)
        mixed = pixels * (1 - weight) + smooth(pixels, BLUR_SHARE) * weight
        return tf.cast(tf.clip_by_value(tf.round(mixed), 0.0, 255.0), tf.uint8)
    keep = lungs if region == "lungs" else tf.logical_not(lungs)
    return image * tf.cast(keep[..., None], image.dtype)


def region_images(
    paths: list[str], *, image_size: int, region: str = "full", mask_paths: list[str] | None = None
) -> tf.data.Dataset:
    """uint8 images, decoded as for training, with ``region`` applied (``mask_paths`` needed unless it is full)."""
    if region == "full":
        return tf.data.Dataset.from_tensor_slices(list(map(str, paths))).map(
            lambda path: load_image(path, image_size), num_parallel_calls=AUTOTUNE)
    if mask_paths is None or len(mask_paths) != len(paths):
        raise ValueError(f"region {region!r} needs one mask path per image")
    pairs = tf.data.Dataset.from_tensor_slices((list(map(str, paths)), list(map(str, mask_paths))))
    return pairs.map(lambda path, mask: apply_region(load_image(path, image_size), load_mask(mask, image_size), region),
                     num_parallel_calls=AUTOTUNE)


def decoded(
    paths: list[str], labels: list[int], *, image_size: int, cache_file: str | os.PathLike | None = None,
    region: str = "full", mask_paths: list[str] | None = None,
) -> tf.data.Dataset:
    """(uint8 image, int32 label) pairs, each file decoded once: cached in memory, or in ``cache_file`` on disk."""
    images = region_images(paths, image_size=image_size, region=region, mask_paths=mask_paths)
    dataset = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(tf.constant(labels, tf.int32))))
    return dataset.cache(_prepare_cache_file(cache_file) if cache_file else "")


def shuffled_epochs(
    dataset: tf.data.Dataset, *, size: int, batch_size: int, seed: int, first_epoch: int, epochs: int
) -> tf.data.Dataset:
    """Batches of epochs ``first_epoch`` .. ``epochs - 1``, each epoch in its own order drawn from (seed, epoch).

    Because an epoch's order depends only on its number, a run resumed at epoch
    k sees exactly the batches an uninterrupted run would have seen from k on.
    The order depends only on (seed, epoch, size), not on what the elements are, so
    image rows and cached-feature rows of the same split are shuffled alike.
    """
    # One dataset per epoch, chained, so that each shuffle gets a Python integer seed (a tensor seed
    # breaks tf.data when the global seed is 0).
    epochs_batches = [dataset.shuffle(size, seed=seed * 1_000_003 + epoch).batch(batch_size) for epoch in range(first_epoch, epochs)]
    if not epochs_batches:
        return dataset.take(0).batch(batch_size)
    return concatenated(epochs_batches)


def concatenated(datasets: list[tf.data.Dataset]) -> tf.data.Dataset:
    """The datasets one after another, joined pairwise into a balanced tree of depth log2(n).

    Joined one by one (``functools.reduce``), every element of the first epoch passes through n nested
    concatenations: a head's 600 epochs on cached features spent longer fetching its batches than training on them
    (14,400 batches iterated in 17-22 s against 3 s for the tree, the same elements in the same order)."""
    while len(datasets) > 1:
        datasets = [datasets[i].concatenate(datasets[i + 1]) if i + 1 < len(datasets) else datasets[i]
                    for i in range(0, len(datasets), 2)]
    return datasets[0]


@dataclass
class SplitPipelines:
    """The examples of each subset (decoded-once images, or cached features), in split order or shuffled for training.

    ``examples`` holds one element per example; ``load_batch(subset, *batch)``, when given, turns
    a batch of those elements into the (inputs, labels) the model takes (the feature cache serves
    row numbers and reads the rows a whole batch at a time).
    """

    examples: dict[str, tf.data.Dataset]
    sizes: dict[str, int]
    batch_size: int
    seed: int
    load_batch: Callable | None = None

    def batches(self, subset: str, replicas: int = 1) -> tf.data.Dataset:
        """A subset in the split table's order: for validation and evaluation. With ``replicas`` > 1 (the per-epoch
        validation of a multi-device fit) its last ``size % replicas`` examples are left out, so that every batch
        splits evenly between the devices: Keras 3.15's evaluation under MirroredStrategy fails on a batch that
        does not (AddN of per-replica inputs of different sizes). The run's reported validation figures come from
        its predictions on every image (``run/steps.split_predictions``), never from these per-epoch numbers."""
        examples = self.examples[subset]
        if replicas > 1 and self.sizes[subset] % replicas:
            examples = examples.take(self.sizes[subset] - self.sizes[subset] % replicas)
        return self._served(subset, examples.batch(self.batch_size))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.sizes["train"] / self.batch_size)

    def shuffled_batches(self, subset: str) -> tf.data.Dataset:
        """One pass over a subset in a seeded random order (the order of epoch 0), batched as in training: batches that
        mix the classes, as BatchNorm's batch statistics had them (the split table's order groups them by class)."""
        return self._shuffled(subset, 0, 1)

    def training_epochs(self, first_epoch: int, epochs: int) -> tf.data.Dataset:
        return self._shuffled("train", first_epoch, epochs)

    def _shuffled(self, subset: str, first_epoch: int, epochs: int) -> tf.data.Dataset:
        return self._served(subset, shuffled_epochs(
            self.examples[subset], size=self.sizes[subset], batch_size=self.batch_size,
            seed=self.seed, first_epoch=first_epoch, epochs=epochs,
        ))

    def _served(self, subset: str, batches: tf.data.Dataset) -> tf.data.Dataset:
        if self.load_batch is not None:
            batches = batches.map(functools.partial(self.load_batch, subset), num_parallel_calls=AUTOTUNE)
        return batches.prefetch(AUTOTUNE)


def split_arrays(split: Split, root: Path, class_names: list[str], subset: str) -> tuple[list[str], list[int]]:
    """Absolute paths and class indices of one subset, in the split table's order."""
    return [str(Path(root) / p) for p in split.subset(subset)["path"]], split_labels(split, class_names, subset)


def split_masks(split: Split, root: Path, subset: str) -> list[str] | None:
    """Absolute mask paths of one subset, in the split table's order (None when the table has no mask column)."""
    if "mask" not in split.table:
        return None
    return [str(Path(root) / m) for m in split.subset(subset)["mask"]]


def split_labels(split: Split, class_names: list[str], subset: str) -> list[int]:
    """Class indices of one subset, in the split table's order."""
    index = {name: i for i, name in enumerate(class_names)}
    return [index[label] for label in split.subset(subset)["label"]]


def split_pipelines(
    split: Split,
    root: Path,
    class_names: list[str],
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    cache_dir: str | os.PathLike | None = None,
    region: str = "full",
) -> SplitPipelines:
    """Every subset's images (with ``region`` applied through the split table's mask column), decoded once."""
    decoded_subsets, sizes = {}, {}
    for subset in SPLITS:
        paths, labels = split_arrays(split, root, class_names, subset)
        name = f"{subset}-{image_size}px{'' if region == 'full' else '-' + region}-{split.sha256[:16]}"
        cache_file = Path(cache_dir) / name if cache_dir else None
        decoded_subsets[subset] = decoded(paths, labels, image_size=image_size, cache_file=cache_file,
                                          region=region, mask_paths=split_masks(split, root, subset))
        sizes[subset] = len(paths)
    return SplitPipelines(decoded_subsets, sizes, batch_size, seed)


def _prepare_cache_file(cache_file: str | os.PathLike) -> str:
    """A disk cache path; the leftovers of an interrupted write are removed so TF rewrites it."""
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    if not Path(f"{cache_file}.index").exists():
        for leftover in cache_file.parent.glob(f"{cache_file.name}*"):
            leftover.unlink()
    return str(cache_file)
