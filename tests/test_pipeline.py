from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from covid_mobilenet.data.pipeline import concatenated, decoded, shuffled_epochs, split_arrays, split_pipelines
from covid_mobilenet.data.scan import scan_dataset
from covid_mobilenet.data.split import split_images

# One gray level per class, written in every format the loader must accept.
LEVELS = {"A": 30, "B": 120, "C": 210}
FORMATS = ["L", "RGB", "RGBA", "I;16", "P", "JPEG"]


def write_image(path: Path, level: int, kind: str) -> None:
    if kind == "I;16":
        Image.fromarray(np.full((50, 70), level * 257, np.uint16)).save(path)
    elif kind == "JPEG":
        Image.new("L", (50, 70), level).save(path.with_suffix(".jpg"), quality=100)
    else:
        Image.new("L", (50, 70), level).convert(kind).save(path)


@pytest.fixture
def level_root(tmp_path) -> Path:
    for name, level in LEVELS.items():
        folder = tmp_path / name / "images"
        folder.mkdir(parents=True)
        for i in range(12):
            write_image(folder / f"{name}-{i}.png", level, FORMATS[i % len(FORMATS)])
    return tmp_path


def test_batches_are_uint8_3_channel_with_labels_in_class_order(level_root):
    index = scan_dataset(level_root)
    assert len(index.images) == 36
    split = split_images(index.images, seed=0)
    pipelines = split_pipelines(split, index.root, index.class_names, image_size=40, batch_size=4, seed=0)
    for subset, dataset in [(s, pipelines.batches(s)) for s in ("train", "val", "test")] + [("train", pipelines.training_epochs(0, 1))]:
        seen = 0
        for images, labels in dataset:
            images, labels = images.numpy(), labels.numpy()
            assert images.shape[1:] == (40, 40, 3) and images.shape[0] <= 4
            assert images.dtype == np.uint8
            for image, label in zip(images, labels):
                expected = LEVELS[index.class_names[label]]
                assert np.abs(image.astype(int) - expected).max() <= 2, (subset, label)
            seen += len(labels)
        assert seen == len(split.subset(subset))


def test_unshuffled_order_follows_the_split_table(demo_root):
    index = scan_dataset(demo_root)
    split = split_images(index.images)
    paths, labels = split_arrays(split, index.root, index.class_names, "test")
    dataset = decoded(paths, labels, image_size=32).batch(7)
    got = np.concatenate([y.numpy() for _, y in dataset])
    expected = [index.class_names.index(label) for label in split.subset("test")["label"]]
    assert got.tolist() == expected
    assert all(Path(p).is_file() and "/images/" in p for p in paths)


def test_each_epoch_has_its_own_seeded_order_and_a_resumed_run_sees_the_same(level_root):
    index = scan_dataset(level_root)
    paths = [str(index.root / p) for p in index.images["path"]]
    labels = list(range(len(paths)))  # each label identifies its image
    images = decoded(paths, labels, image_size=16)

    def orders(seed, first_epoch, epochs=3):
        dataset = shuffled_epochs(images, size=len(paths), batch_size=5, seed=seed, first_epoch=first_epoch, epochs=epochs)
        flat = np.concatenate([y.numpy() for _, y in dataset]).tolist()
        return [flat[i : i + len(paths)] for i in range(0, len(flat), len(paths))]

    first, second, third = orders(1, 0)
    assert sorted(first) == sorted(second) == labels
    assert first != second != third
    assert orders(1, 0) == [first, second, third]
    assert orders(1, 1) == [second, third], "resuming at epoch 1 gives the uninterrupted run's epochs 1 and 2"
    assert orders(2, 0)[0] != first


def test_epochs_are_chained_in_order_whatever_their_number():
    for count in (1, 2, 5, 8):
        parts = [tf.data.Dataset.range(10 * i, 10 * i + 3) for i in range(count)]
        assert [int(x) for x in concatenated(parts)] == [10 * i + k for i in range(count) for k in range(3)]


def test_disk_cache_is_written_reused_and_recovers_from_an_interrupted_write(level_root, tmp_path):
    index = scan_dataset(level_root)
    paths = [str(index.root / p) for p in index.images["path"]]
    labels = [index.class_names.index(label) for label in index.images["label"]]
    cache = tmp_path / "cache" / "train-16px"
    cache.parent.mkdir()
    (cache.parent / "train-16px_0.lockfile").write_text("left by a killed run")

    dataset = decoded(paths, labels, image_size=16, cache_file=cache).batch(8)
    first = np.concatenate([x.numpy() for x, _ in dataset])
    assert Path(f"{cache}.index").exists()
    assert not (cache.parent / "train-16px_0.lockfile").exists()
    for path in paths:  # the cache alone must now serve the images
        Path(path).unlink()
    again = decoded(paths, labels, image_size=16, cache_file=cache).batch(8)
    assert np.array_equal(first, np.concatenate([x.numpy() for x, _ in again]))


def test_shuffled_batches_mix_the_split_in_epoch_zeros_order(tmp_path):
    """BatchNorm's recalibration reads one shuffled pass: every example once, the order of training's epoch 0."""
    import tensorflow as tf

    from covid_mobilenet.data.pipeline import SplitPipelines

    examples = tf.data.Dataset.from_tensor_slices((tf.range(40), tf.range(40) // 10))  # sorted by class, as the split
    pipelines = SplitPipelines({"train": examples, "val": examples}, {"train": 40, "val": 40}, batch_size=8, seed=3)
    shuffled = [int(x) for batch, _ in pipelines.shuffled_batches("val") for x in batch]
    epoch_zero = [int(x) for batch, _ in pipelines.training_epochs(0, 1) for x in batch]
    assert sorted(shuffled) == list(range(40)) and shuffled == epoch_zero and shuffled != list(range(40))
    first = next(iter(pipelines.shuffled_batches("val")))[1].numpy()
    assert len(set(first)) > 1, "a batch mixes the classes"
