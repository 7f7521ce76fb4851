from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid_mobilenet.data import scan_dataset, split_images
from covid_mobilenet.pipeline import make_dataset, split_arrays, split_datasets

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
    datasets = split_datasets(split, index.root, index.class_names, image_size=40, batch_size=4, seed=0)
    for subset, dataset in datasets.items():
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
    dataset = make_dataset(paths, labels, image_size=32, batch_size=7)
    got = np.concatenate([y.numpy() for _, y in dataset])
    expected = [index.class_names.index(label) for label in split.subset("test")["label"]]
    assert got.tolist() == expected
    assert all(Path(p).is_file() and "/images/" in p for p in paths)


def test_training_order_is_seeded_and_reshuffled_each_epoch(level_root):
    index = scan_dataset(level_root)
    paths = [str(index.root / p) for p in index.images["path"]]
    labels = list(range(len(paths)))  # each label identifies its image

    def epochs(seed, count=2):
        dataset = make_dataset(paths, labels, image_size=16, batch_size=5, shuffle_seed=seed)
        return [np.concatenate([y.numpy() for _, y in dataset]).tolist() for _ in range(count)]

    first, second = epochs(1)
    assert sorted(first) == labels
    assert first != second
    assert epochs(1) == [first, second]
    assert epochs(2)[0] != first


def test_disk_cache_is_written_reused_and_recovers_from_an_interrupted_write(level_root, tmp_path):
    index = scan_dataset(level_root)
    paths = [str(index.root / p) for p in index.images["path"]]
    labels = [index.class_names.index(label) for label in index.images["label"]]
    cache = tmp_path / "cache" / "train-16px"
    cache.parent.mkdir()
    (cache.parent / "train-16px_0.lockfile").write_text("left by a killed run")

    dataset = make_dataset(paths, labels, image_size=16, batch_size=8, cache_file=cache)
    first = np.concatenate([x.numpy() for x, _ in dataset])
    assert Path(f"{cache}.index").exists()
    assert not (cache.parent / "train-16px_0.lockfile").exists()
    for path in paths:  # the cache alone must now serve the images
        Path(path).unlink()
    again = make_dataset(paths, labels, image_size=16, batch_size=8, cache_file=cache)
    assert np.array_equal(first, np.concatenate([x.numpy() for x, _ in again]))
