import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covid_mobilenet.data import locate
from covid_mobilenet.data.layout import DatasetError
from covid_mobilenet.data.locate import find_dataset_root, locate_dataset
from covid_mobilenet.data.scan import scan_dataset
from covid_mobilenet.data.split import split_hash, split_images

CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]


def image_files(root: Path) -> list[Path]:
    return [p for p in root.glob("*/images/*") if p.is_file()]


def png_bytes(value: int = 128, size: int = 32, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), value if mode == "L" else (value,) * len(mode)).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- discovery


def test_counts_exactly_the_images_and_never_masks(demo_root):
    masks = list(demo_root.glob("*/masks/*.png"))
    assert masks, "the demo set should have masks to ignore"
    index = scan_dataset(demo_root)
    assert index.class_names == CLASSES
    assert len(index.images) == len(image_files(demo_root))
    assert not index.images["path"].str.contains("/masks/").any()
    for name, count in index.counts().items():
        assert count == len(list((demo_root / name / "images").glob("*.png")))
    assert index.skipped == []


def test_older_flat_layout_and_any_case_extensions(tmp_path):
    for name in CLASSES:
        folder = tmp_path / name
        folder.mkdir()
        for i, suffix in enumerate((".png", ".PNG", ".jpg", ".JPEG")):
            image = Image.new("L", (20, 20), 10 * i)
            image.save(folder / f"{name}-{i}{suffix}", format="PNG" if "png" in suffix.lower() else "JPEG")
    index = scan_dataset(tmp_path)
    assert index.class_names == CLASSES
    assert index.counts() == {name: 4 for name in CLASSES}
    assert "Viral Pneumonia/Viral Pneumonia-3.JPEG" in set(index.images["path"])


def test_bad_files_are_skipped_and_named(demo_root):
    folder = demo_root / "COVID" / "images"
    good = (folder / "COVID-1.png").read_bytes()
    bad = {
        "COVID/images/corrupt.png": b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        "COVID/images/empty.png": b"",
        "COVID/images/truncated.png": good[: len(good) // 2],
        "COVID/images/notes.txt": b"not an image",
        "COVID/images/text.png": b"this is text, named .png",
    }
    for relative, content in bad.items():
        (demo_root / relative).write_bytes(content)

    index = scan_dataset(demo_root)
    skipped = {s.path: s.reason for s in index.skipped}
    assert set(skipped) == set(bad)
    assert skipped["COVID/images/empty.png"] == "empty file (0 bytes)"
    assert "not an image file (.txt)" in skipped["COVID/images/notes.txt"]
    assert "PNG cut short" in skipped["COVID/images/truncated.png"]
    assert "cannot be decoded as an image" in skipped["COVID/images/text.png"]
    assert not set(index.images["path"]) & set(bad)
    report = index.report()
    assert all(path in report for path in bad)

    with pytest.raises(DatasetError) as error:
        scan_dataset(demo_root, strict=True)
    assert "strict" in str(error.value)
    assert all(path in str(error.value) for path in bad)


def test_rgba_and_16_bit_pngs_are_usable(demo_root):
    folder = demo_root / "Normal" / "images"
    Image.new("RGBA", (40, 40), (10, 20, 30, 100)).save(folder / "rgba.png")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(folder / "sixteen.png")
    paths = set(scan_dataset(demo_root).images["path"])
    assert {"Normal/images/rgba.png", "Normal/images/sixteen.png"} <= paths


@pytest.mark.parametrize("make", ["missing", "file", "empty", "files_only"])
def test_unusable_root_is_one_clear_line(tmp_path, make):
    root = tmp_path / "root"
    if make == "file":
        root.write_text("x")
    elif make == "empty":
        root.mkdir()
    elif make == "files_only":
        root.mkdir()
        (root / "COVID.metadata.xlsx").write_bytes(b"x")
    with pytest.raises(DatasetError) as error:
        scan_dataset(root)
    message = str(error.value)
    assert "\n" not in message
    assert str(root) in message
    assert "<root>/<Class>/images/" in message
    assert "kaggle" in message.lower() and "data_dir" in message


def test_nested_one_folder_too_deep_is_found(demo_root, tmp_path):
    wrapper = tmp_path / "download" / "versions" / "5"
    wrapper.mkdir(parents=True)
    shutil.move(str(demo_root), wrapper / "COVID-19_Radiography_Dataset")
    assert find_dataset_root(tmp_path / "download") == wrapper / "COVID-19_Radiography_Dataset"
    assert len(scan_dataset(tmp_path / "download").class_names) == 4


def test_empty_class_folder_is_an_error(demo_root):
    shutil.rmtree(demo_root / "COVID" / "images")
    (demo_root / "COVID" / "images").mkdir()
    (demo_root / "COVID" / "images" / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no usable images.*: COVID;.*broken.png"):
        scan_dataset(demo_root)


def test_a_single_class_is_an_error(tmp_path):
    (tmp_path / "Cats" / "images").mkdir(parents=True)
    Image.new("L", (20, 20)).save(tmp_path / "Cats" / "images" / "cat.png")
    with pytest.raises(DatasetError, match="at least two"):
        scan_dataset(tmp_path)


def test_a_missing_study_class_is_an_error(demo_root):
    shutil.rmtree(demo_root / "Viral Pneumonia")
    with pytest.raises(DatasetError, match="missing under .*: Viral Pneumonia; .*partly unzipped"):
        scan_dataset(demo_root)


def test_other_class_sets_are_allowed(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("L", (20, 20), i * 40).save(tmp_path / name / f"{i}.png")
    assert scan_dataset(tmp_path).class_names == ["cats", "dogs"]


def test_masks_beside_images_are_never_read_even_when_broken(demo_root):
    (demo_root / "COVID" / "masks" / "broken.png").write_bytes(b"")
    index = scan_dataset(demo_root)
    assert index.skipped == [] and not index.images["path"].str.contains("masks").any()


# ---------------------------------------------------------------- locating


def test_no_data_anywhere_lists_the_three_ways(monkeypatch, tmp_path):
    monkeypatch.setattr(locate, "DEFAULT_DATA_DIR", tmp_path / "absent")
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    called = []
    monkeypatch.setattr(locate, "download_from_kaggle", lambda: called.append(1))
    with pytest.raises(DatasetError) as error:
        locate_dataset(None)
    message = str(error.value)
    assert "data_dir" in message and "unzip" in message and "KAGGLE_USERNAME" in message
    assert called == [], "no download without credentials"


def test_default_folder_is_used(monkeypatch, demo_root):
    monkeypatch.setattr(locate, "DEFAULT_DATA_DIR", demo_root)
    assert locate_dataset(None) == demo_root


def test_credentials_from_environment_or_kaggle_json(tmp_path):
    assert locate.kaggle_credentials_available({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"})
    assert not locate.kaggle_credentials_available({"KAGGLE_USERNAME": "u", "KAGGLE_CONFIG_DIR": str(tmp_path)})
    (tmp_path / "kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    assert locate.kaggle_credentials_available({"KAGGLE_CONFIG_DIR": str(tmp_path)})


def test_failed_download_is_a_clear_error(monkeypatch, tmp_path):
    import kagglehub

    monkeypatch.setattr(locate, "DEFAULT_DATA_DIR", tmp_path / "absent")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "fake-key")

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.kaggle.com'\nlong traceback text")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    with pytest.raises(DatasetError) as error:
        locate_dataset(None)
    message = str(error.value)
    assert "tawsifurrahman/covid19-radiography-database" in message
    assert "Failed to resolve" in message and "long traceback" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_download_is_used_when_credentials_exist(monkeypatch, demo_root, tmp_path):
    import kagglehub

    download = tmp_path / "kagglehub" / "versions" / "5"
    download.mkdir(parents=True)
    shutil.move(str(demo_root), download / "COVID-19_Radiography_Dataset")
    monkeypatch.setattr(locate, "DEFAULT_DATA_DIR", tmp_path / "absent")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "fake")
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, *a, **k: str(download))
    assert locate_dataset(None) == download / "COVID-19_Radiography_Dataset"


# ---------------------------------------------------------------- splitting


def add_duplicates(root: Path) -> list[list[str]]:
    """Copy some images under new names, one copy into another class; return the groups."""
    groups = []
    for i, (source_class, target_class) in enumerate([("Normal", "Normal"), ("COVID", "COVID"), ("Normal", "Lung_Opacity")]):
        source = root / source_class / "images" / f"{source_class}-{i + 2}.png"
        copies = [f"{target_class}/images/copy-{i}-{n}.png" for n in range(3)]
        for copy in copies:
            shutil.copy(source, root / copy)
        groups.append([source.relative_to(root).as_posix(), *copies])
    return groups


def test_split_is_stratified_grouped_and_complete(demo_root):
    groups = add_duplicates(demo_root)
    index = scan_dataset(demo_root)
    split = split_images(index.images, seed=3)
    split_of = dict(zip(split.table["path"], split.table["split"]))
    for group in groups:
        assert len({split_of[path] for path in group}) == 1, group
    # every image of the index lands in exactly one split
    assert sorted(split.table["path"]) == sorted(index.images["path"])
    counts = split.counts(index.class_names)
    for subset in ("train", "val", "test"):
        assert all(counts[subset][name] > 0 for name in index.class_names), (subset, counts[subset])
    total = len(split.table)
    assert abs(len(split.subset("test")) / total - 0.2) < 0.05
    assert abs(len(split.subset("val")) / total - 0.16) < 0.05


def test_split_hash_ignores_listing_order_and_follows_the_seed(demo_root):
    images = scan_dataset(demo_root).images
    shuffled = images.sample(frac=1, random_state=1)
    assert split_images(images, seed=5).sha256 == split_images(shuffled, seed=5).sha256
    assert split_images(images, seed=5).sha256 != split_images(images, seed=6).sha256


def test_same_seed_same_split_hash_in_two_processes(demo_root):
    code = (
        "import sys; from covid_mobilenet.data.scan import scan_dataset; from covid_mobilenet.data.split import split_images; "
        "print(split_images(scan_dataset(sys.argv[1]).images, seed=42).sha256)"
    )
    root_dir = Path(__file__).resolve().parent.parent
    hashes = {
        subprocess.run([sys.executable, "-c", code, str(demo_root)], capture_output=True, text=True, check=True, cwd=root_dir).stdout.strip()
        for _ in range(2)
    }
    assert len(hashes) == 1 and len(hashes.pop()) == 64


def test_split_too_small_is_a_clear_error():
    images = pd.DataFrame(
        {"path": [f"{c}/{i}.png" for c in "AB" for i in range(3)], "label": [c for c in "AB" for _ in range(3)], "sha256": [str(i) for i in range(6)]}
    )
    with pytest.raises(DatasetError, match="Cannot split|leaves no image"):
        split_images(images)


@pytest.mark.parametrize("val, test", [(0, 0.2), (0.5, 0.5), (0.2, 1.2)])
def test_bad_fractions_are_rejected(val, test, demo_root):
    with pytest.raises(DatasetError, match="val_fraction"):
        split_images(pd.DataFrame(columns=["path", "label", "sha256"]), val_fraction=val, test_fraction=test)


def test_split_table_is_saved_atomically(demo_root, tmp_path):
    split = split_images(scan_dataset(demo_root).images)
    path = split.save(tmp_path / "run" / "split.csv")
    saved = pd.read_csv(path)
    assert list(saved.columns) == ["path", "label", "split"]
    assert split_hash(saved) == split.sha256
    assert not list(path.parent.glob(".*.tmp"))


def odd_image_files(folder: Path) -> dict[str, Path]:
    """Files the scan and the training decoder have disagreed on, and their ordinary neighbours."""
    import struct
    import zlib

    pixels = (np.random.default_rng(0).uniform(size=(40, 40)) * 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in (
        "gray.png", "palette_transparent.png", "gray_alpha.png", "sixteen_bit.png", "cmyk.jpg", "progressive.jpg",
        "png_cut_short.png", "jpeg_cut_short.jpg", "jpeg_without_end_marker.jpg", "png_without_iend.png",
        "png_unknown_critical_chunk.png", "png_bad_text_chunk.png", "png_bad_idat_crc.png", "png_trailing_bytes.png",
        "jpeg_trailing_bytes.jpg", "gif_named_png.png", "bmp_named_png.png")}
    Image.fromarray(pixels, "L").save(files["gray.png"])
    Image.fromarray(pixels, "L").convert("P").save(files["palette_transparent.png"], transparency=0)
    Image.fromarray(np.stack([pixels, pixels], -1), "LA").save(files["gray_alpha.png"])
    Image.fromarray(pixels.astype(np.uint16) * 257).save(files["sixteen_bit.png"])
    Image.fromarray(np.stack([pixels] * 4, -1), "RGBA").convert("CMYK").save(files["cmyk.jpg"])
    Image.fromarray(np.stack([pixels] * 3, -1), "RGB").save(files["progressive.jpg"], progressive=True)
    png, jpeg = files["gray.png"].read_bytes(), files["progressive.jpg"].read_bytes()

    def chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) if crc is None else crc)

    after_header = png.find(b"IDAT") - 4
    damaged = bytearray(png)
    damaged[png.find(b"IDAT") + 10] ^= 0xFF
    files["png_cut_short.png"].write_bytes(png[: len(png) * 2 // 3])
    files["jpeg_cut_short.jpg"].write_bytes(jpeg[: len(jpeg) * 2 // 3])
    files["jpeg_without_end_marker.jpg"].write_bytes(jpeg[:-2])
    files["png_without_iend.png"].write_bytes(png[:-12])
    files["png_unknown_critical_chunk.png"].write_bytes(png[:after_header] + chunk(b"ABCD", b"xx") + png[after_header:])
    files["png_bad_text_chunk.png"].write_bytes(png[:after_header] + chunk(b"tEXt", b"k\0v", crc=1) + png[after_header:])
    files["png_bad_idat_crc.png"].write_bytes(bytes(damaged))
    files["png_trailing_bytes.png"].write_bytes(png + b"trailing" * 20)
    files["jpeg_trailing_bytes.jpg"].write_bytes(jpeg + b"trailing" * 20)
    Image.fromarray(pixels, "L").save(files["gif_named_png.png"], format="GIF")
    Image.fromarray(pixels, "L").save(files["bmp_named_png.png"], format="BMP")
    return files


def test_the_scan_accepts_exactly_what_the_training_decoder_reads(tmp_path):
    """Every odd file is accepted by both or refused by both, the scan saying why (the first eight used to pass
    the scan and fail in training, or the other way round)."""
    import tensorflow as tf

    from covid_mobilenet.data.pipeline import load_image
    from covid_mobilenet.data.scan import inspect_image

    verdicts = {}
    for name, path in odd_image_files(tmp_path / "odd").items():
        _, reason = inspect_image(path)
        try:
            load_image(tf.constant(str(path)), 32).numpy()
            decoded = True
        except tf.errors.OpError:
            decoded = False
        verdicts[name] = (reason is None, decoded, reason)
    disagreements = {name: v for name, v in verdicts.items() if v[0] != v[1]}
    assert not disagreements, disagreements
    accepted = sorted(name for name, (ok, _, _) in verdicts.items() if ok)
    assert accepted == sorted(["gray.png", "palette_transparent.png", "gray_alpha.png", "sixteen_bit.png", "cmyk.jpg",
                               "progressive.jpg", "png_bad_text_chunk.png", "png_trailing_bytes.png", "jpeg_trailing_bytes.jpg"])
    assert "without its end-of-image marker" in verdicts["jpeg_without_end_marker.jpg"][2]
    assert "without its IEND chunk" in verdicts["png_without_iend.png"][2]
    assert "unknown critical chunk 'ABCD'" in verdicts["png_unknown_critical_chunk.png"][2]
    assert "is a GIF file" in verdicts["gif_named_png.png"][2] and "is a BMP file" in verdicts["bmp_named_png.png"][2]


# ---------------------------------------------------------------- the scan's cache


def test_a_cached_scan_reads_only_the_files_that_changed_and_gives_the_same_index(demo_root, tmp_path, monkeypatch):
    from covid_mobilenet.data import scan

    monkeypatch.setattr(scan.ScanCache, "RACY_SECONDS", 0.0)  # the copied files' times are seconds old
    inspected = []
    inspect = scan.inspect_image
    monkeypatch.setattr(scan, "inspect_image", lambda path: inspected.append(path.name) or inspect(path))
    cache = tmp_path / "cache"
    first = scan_dataset(demo_root, cache_dir=cache)
    assert len(inspected) == len(image_files(demo_root))
    inspected.clear()
    again = scan_dataset(demo_root, cache_dir=cache)
    assert inspected == []
    pd.testing.assert_frame_equal(again.images, first.images)
    assert again.skipped == first.skipped == []

    # the same size and modification time, other pixels: its change time moved, so it is read again
    changed, broken = sorted(image_files(demo_root))[:2]
    stat = changed.stat()
    original = changed.read_bytes()
    changed.write_bytes(original[:-16] + bytes(16))  # the same length, a damaged end
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    broken.write_bytes(b"")
    third = scan_dataset(demo_root, cache_dir=cache)
    assert sorted(inspected) == sorted([changed.name, broken.name])
    assert {s.path.rsplit("/", 1)[-1] for s in third.skipped} == {changed.name, broken.name}
    inspected.clear()
    assert scan_dataset(demo_root, cache_dir=cache).skipped == third.skipped and inspected == []  # verdicts kept too


def test_files_changed_just_before_a_scan_are_not_trusted_and_a_damaged_cache_is_ignored(demo_root, tmp_path, monkeypatch):
    from covid_mobilenet.data import scan

    inspected = []
    inspect = scan.inspect_image
    monkeypatch.setattr(scan, "inspect_image", lambda path: inspected.append(path.name) or inspect(path))
    cache = tmp_path / "cache"
    scan_dataset(demo_root, cache_dir=cache)  # every file was copied a moment ago: none is kept
    inspected.clear()
    scan_dataset(demo_root, cache_dir=cache)
    assert len(inspected) == len(image_files(demo_root))
    monkeypatch.setattr(scan.ScanCache, "RACY_SECONDS", 0.0)
    scan_dataset(demo_root, cache_dir=cache)
    for cache_file in cache.glob("scan-*.csv"):
        cache_file.write_text("not,a\ncache")
    inspected.clear()
    assert len(scan_dataset(demo_root, cache_dir=cache).images) == len(image_files(demo_root))
    assert len(inspected) == len(image_files(demo_root))


def test_the_majority_label_of_a_group_is_pandas_mode_ties_to_the_first_name():
    from covid_mobilenet.data.split import majority_label

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"group": rng.integers(0, 60, 400), "label": rng.choice(CLASSES, 400)})
    expected = table.groupby("group")["label"].agg(lambda labels: labels.mode().iloc[0])
    pd.testing.assert_series_equal(majority_label(table, "group"), expected)
    tie = pd.DataFrame({"group": [1, 1, 2, 2, 2], "label": ["Normal", "COVID", "Normal", "Normal", "COVID"]})
    assert majority_label(tie, "group").to_dict() == {1: "COVID", 2: "Normal"}
