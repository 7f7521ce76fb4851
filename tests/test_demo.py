import hashlib

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from covid_mobilenet.data import demo
from covid_mobilenet.data.scan import scan_dataset
from covid_mobilenet.data.split import split_images
from tests.conftest import DEMO_IMAGES


def tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_proportions_sizes_and_modes(demo_master):
    counts = demo.class_counts(DEMO_IMAGES)
    assert sum(counts.values()) == DEMO_IMAGES
    assert counts["Normal"] > counts["Lung_Opacity"] > counts["COVID"] > counts["Viral Pneumonia"] >= 4
    modes = set()
    for label, count in counts.items():
        images = sorted((demo_master / label / "images").glob("*.png"))
        masks = sorted((demo_master / label / "masks").glob("*.png"))
        assert len(images) == len(masks) == count
        assert images[0].name.startswith(f"{label}-")
        with Image.open(images[0]) as first, Image.open(masks[0]) as mask:
            assert first.size == (299, 299) and mask.size == (256, 256)
        for path in images:
            with Image.open(path) as image:
                modes.add(image.mode)
    assert modes == {"L", "RGB"}, "mostly grayscale with a few RGB, like the real set"
    assert demo.demo_dataset_complete(demo_master, DEMO_IMAGES)
    assert not demo.demo_dataset_complete(demo_master, DEMO_IMAGES + 4)


def test_same_seed_same_files(tmp_path):
    first = demo.generate_demo_dataset(tmp_path / "a", images=24, seed=3)
    second = demo.generate_demo_dataset(tmp_path / "b", images=24, seed=3)
    other = demo.generate_demo_dataset(tmp_path / "c", images=24, seed=4)
    assert tree_digest(first) == tree_digest(second) != tree_digest(other)


def test_has_exact_duplicates_like_the_real_set(tmp_path):
    root = demo.generate_demo_dataset(tmp_path / "d", images=400, seed=0)
    images = scan_dataset(root).images
    assert images["sha256"].duplicated().any()


def test_classes_are_learnable_but_not_trivially(demo_master):
    index = scan_dataset(demo_master)
    split = split_images(index.images, seed=0)

    def features(rows):
        return np.stack(
            [np.asarray(Image.open(index.root / p).convert("L").resize((40, 40)), np.float32).ravel() / 255 for p in rows["path"]]
        )

    train, rest = split.subset("train"), split.table[split.table["split"] != "train"]
    classifier = LogisticRegression(max_iter=3000, C=0.1).fit(features(train), train["label"])
    accuracy = classifier.score(features(rest), rest["label"])
    majority = rest["label"].value_counts(normalize=True).max()
    assert majority + 0.1 < accuracy < 0.99, (accuracy, majority)


def test_regenerating_replaces_an_earlier_demo_but_never_other_data(tmp_path):
    root = demo.generate_demo_dataset(tmp_path / "set", images=40, seed=0)
    demo.generate_demo_dataset(root, images=20, seed=0)
    assert len(list(root.glob("*/images/*.png"))) == 20
    real = tmp_path / "real"
    (real / "COVID" / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a demo data set"):
        demo.generate_demo_dataset(real, images=20)


def test_command_line(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "cli"), "--images", "20", "--seed", "1"])
    assert "Wrote 20 demo images" in capsys.readouterr().out
    assert len(scan_dataset(tmp_path / "cli").images) == 20
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "cli"), "--images", "3"])
