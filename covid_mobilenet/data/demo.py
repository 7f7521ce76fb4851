"""A synthetic chest X-ray data set in the exact Kaggle layout, for offline runs and tests.

Every image is a stylised frontal chest film: soft tissue, two dark lung
fields, ribs, noise, and a random exposure. The classes differ the way the
real ones roughly do, each at a random severity so that mild cases look
almost normal:

- Normal: clear lungs.
- COVID: several hazy patches at the periphery of both lower lungs.
- Lung_Opacity: one or two dense, larger patches in one lung.
- Viral Pneumonia: a coarse streaky pattern around the hila, on a smaller
  chest (many of the real images are of children).

It also writes lung masks (256x256, like the real ones), a metadata
spreadsheet per class naming each image's source, a few RGB images among
the grayscale ones, a few exact duplicates and a few planted near-duplicates (the
last images of each class: a re-encoded, resized, brightened, cropped or noisy copy of an
earlier image, from the second class on the first of them a copy of the previous class's
image, a label conflict), so the loader's quirks and the audit are exercised; ``demo.json``
lists every copy. Output is deterministic for a given seed.

**A planted shortcut.** As in the real collections, where scanner text and
markers come with the source, every image of one source (a COVID-only
"hospital" of mild cases) carries a bright text-like marker above the left
lung, outside the lung mask. The marker says nothing about the lungs but
predicts the class, and is easier to see than those mild cases' signs; ``demo.json`` records where it is, so the shortcut checks
(``run/shortcut_checks.py``) can show whether a model uses it.

Command line: ``python -m covid_mobilenet.demo --help``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..common.config import load_config
from ..common.files import write_atomic
from ..common.paths import PROJECT_ROOT
from .duplicates import TRANSFORMS, near_copy
from .layout import DATASET_FOLDER, IMAGES_FOLDER, MASKS_FOLDER, REAL_CLASS_COUNTS

DEFAULT_DEMO_DIR = PROJECT_ROOT / "data" / "demo" / DATASET_FOLDER
DEFAULT_IMAGES = 1000
IMAGE_SIZE = 299
MASK_SIZE = 256
RGB_SHARE = 0.03
DUPLICATE_SHARE = 0.01
DEMO_MARKER = "README.md.txt"  # the real archive has a README too; ours says what this is
DEMO_RECORD = "demo.json"  # written last: how the set was made, and that it is complete
DEMO_NOTE = (
    "Synthetic demo data in the layout of the COVID-19 Radiography Database, written by "
    "covid_mobilenet.demo. Not real radiographs: results on it say nothing about medicine.\n"
    "It holds a planted shortcut: the images of the source 'demo-hospital-A' (COVID only, mild cases) carry a "
    "bright marker above the left lung, outside the lungs, like scanner text in real collections.\n"
)
DEMO_VERSION = 3  # 2: metadata spreadsheets, sources, the planted marker; 3: near-duplicates; an older set is regenerated
NEAR_DUPLICATE_SHARE = 0.01  # of each class (at least one): planted near-copies, listed in demo.json
# Where each class's images come from (source, share), like the real release: one COVID-only source,
# a screening source for Lung_Opacity and Normal (RSNA), a paediatric one for Viral Pneumonia and Normal
# (the Kaggle pneumonia set), and a hospital that sends a few of everything.
DEMO_SOURCES = {
    "COVID": {"demo-hospital-A": 0.85, "demo-hospital-B": 0.15},
    "Lung_Opacity": {"demo-screening": 0.85, "demo-hospital-B": 0.15},
    "Normal": {"demo-screening": 0.75, "demo-paediatric": 0.15, "demo-hospital-B": 0.1},
    "Viral Pneumonia": {"demo-paediatric": 0.85, "demo-hospital-B": 0.15},
}
MARKED_SOURCE = "demo-hospital-A"
# Its patients are mild cases (a screening clinic), so its marker is easier to see than their lungs' signs:
# the situation in which a model learns the source instead of the disease.
MARKED_SEVERITY = (0.0, 0.15)
MARKER_BOX = (0.03, 0.02, 0.25, 0.14)  # x0, y0, x1, y1 as shares of the side: where the marker may fall
METADATA_NAMES = {"Normal": "NORMAL"}  # the real Normal sheet writes NORMAL-1 for Normal-1.png


def class_counts(total: int) -> dict[str, int]:
    """Images per class for ``total`` images, in the real proportions, at least 4 per class."""
    real_total = sum(REAL_CLASS_COUNTS.values())
    counts = {name: max(4, round(total * n / real_total)) for name, n in REAL_CLASS_COUNTS.items()}
    counts["Normal"] += total - sum(counts.values())  # rounding remainder goes to the largest class
    if counts["Normal"] < 4:
        raise ValueError(f"images={total} is too few: the demo set needs at least 16 images (4 per class)")
    return counts


def render_xray(
    rng: np.random.Generator, label: str, size: int = IMAGE_SIZE, severity_range: tuple[float, float] = (0.4, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic radiograph (uint8, size x size) of class ``label`` and its lung mask (bool)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    chest = 0.82 if label == "Viral Pneumonia" else 1.0  # smaller, paediatric chests
    chest *= rng.uniform(0.92, 1.06)
    centre_x, centre_y = 0.5 + rng.normal(0, 0.015), 0.52 + rng.normal(0, 0.02)
    half_gap = 0.17 * chest
    lung_rx, lung_ry = 0.13 * chest * rng.uniform(0.93, 1.07), 0.3 * chest * rng.uniform(0.93, 1.07)
    lungs = [(centre_x - half_gap, centre_y), (centre_x + half_gap, centre_y)]

    body = np.clip(1.0 - np.abs(x - centre_x) / (0.48 * chest), 0, 1) ** 0.5
    image = 0.18 + 0.42 * body
    lung_field = np.zeros_like(x)
    for lx, ly in lungs:
        distance = ((x - lx) / lung_rx) ** 2 + ((y - ly) / lung_ry) ** 2
        lung_field = np.maximum(lung_field, 1 / (1 + np.exp(np.minimum(distance - 1, 5) * 12)))
    image -= 0.3 * lung_field
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 9 / chest + 1.6 * (x - centre_x) ** 2 + rng.uniform()))
    image += 0.05 * ribs**4 * lung_field

    severity = rng.uniform(*severity_range)
    if label == "COVID":
        for _ in range(rng.integers(4, 9)):
            lx, ly = lungs[rng.integers(2)]
            side = np.sign(lx - centre_x)
            bx = lx + side * rng.uniform(0.2, 0.8) * lung_rx
            by = ly + rng.uniform(0.0, 0.75) * lung_ry
            image += severity * rng.uniform(0.12, 0.22) * _blob(x, y, bx, by, rng.uniform(0.045, 0.075)) * lung_field
    elif label == "Lung_Opacity":
        lx, ly = lungs[rng.integers(2)]
        for _ in range(rng.integers(1, 3)):
            bx = lx + rng.uniform(-0.5, 0.5) * lung_rx
            by = ly + rng.uniform(-0.6, 0.6) * lung_ry
            image += severity * rng.uniform(0.22, 0.35) * _blob(x, y, bx, by, rng.uniform(0.07, 0.11)) * lung_field
    elif label == "Viral Pneumonia":
        streaks = _smooth_noise(rng, size, cells=(40, 14))
        hila = sum(_blob(x, y, lx, ly, 0.13) for lx, ly in lungs)
        image += severity * 0.25 * np.clip(streaks, 0, None) * hila * lung_field

    image += _smooth_noise(rng, size, cells=(6, 6)) * 0.03  # uneven exposure
    image = (image - image.mean()) * rng.uniform(0.85, 1.15) + image.mean() + rng.normal(0, 0.03)
    image += rng.normal(0, 0.02, image.shape)
    pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
    return pixels, lung_field > 0.5


def draw_marker(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """A bright, text-like block (three dark strokes in a light box) inside MARKER_BOX, as scanners stamp."""
    size = pixels.shape[0]
    x0, y0, x1, y1 = MARKER_BOX
    width, height = round(0.19 * size), round(0.09 * size)
    left = round((x0 + rng.uniform(0, x1 - x0 - 0.19)) * size)
    top = round((y0 + rng.uniform(0, y1 - y0 - 0.09)) * size)
    marked = pixels.copy()
    marked[top:top + height, left:left + width] = 235
    stroke = max(1, width // 9)
    for k in range(3):
        start = left + stroke * (1 + 3 * k)
        marked[top + height // 5: top + height - height // 5, start:start + stroke] = 40
    return marked


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sigma: float) -> np.ndarray:
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """Zero-mean noise with features about size/cells pixels wide (rows, columns)."""
    coarse = rng.normal(0, 1, cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))


def generate_demo_dataset(
    out_dir: str | os.PathLike = DEFAULT_DEMO_DIR,
    *,
    images: int = DEFAULT_IMAGES,
    seed: int = 0,
    image_size: int = IMAGE_SIZE,
) -> Path:
    """Write the demo set under ``out_dir`` (the data set root) and return that root."""
    root = Path(out_dir)
    _clear_previous_demo(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(DEMO_NOTE)  # first, so an interrupted write is recognised and redone
    rng = np.random.default_rng(seed)
    copies, earlier = [], None  # every known duplicate; the previous class's unmarked images, for a copy across classes
    for label, count in class_counts(images).items():
        image_folder, mask_folder = root / label / IMAGES_FOLDER, root / label / MASKS_FOLDER
        image_folder.mkdir(parents=True)
        mask_folder.mkdir(parents=True)
        names, shares = list(DEMO_SOURCES[label]), list(DEMO_SOURCES[label].values())
        previous, rows, made = None, [], []
        planted = max(1, round(NEAR_DUPLICATE_SHARE * count))
        for n in range(1, count + 1):
            name = f"{label}-{n}.png"
            if n > count - planted and len(made) > 1:  # a near-copy of an earlier image (of the previous class: a conflict)
                across = n == count - planted + 1 and earlier is not None
                of, pixels, mask, source = (earlier if across else made)[int(rng.integers(len(earlier if across else made)))]
                kind = TRANSFORMS[len(copies) % len(TRANSFORMS)]
                pixels = np.asarray(near_copy(Image.fromarray(pixels, mode="L"), kind, rng))
                copies.append({"path": f"{label}/{IMAGES_FOLDER}/{name}", "of": of, "kind": kind, "across_classes": across})
            elif previous is not None and rng.uniform() < DUPLICATE_SHARE:
                pixels, mask, source = previous  # an exact duplicate, as the real set has
                copies.append({"path": f"{label}/{IMAGES_FOLDER}/{name}", "of": made[-1][0], "kind": "exact", "across_classes": False})
            else:
                source = names[rng.choice(len(names), p=shares)]
                severity = MARKED_SEVERITY if source == MARKED_SOURCE else (0.4, 1.0)
                pixels, mask = render_xray(rng, label, image_size, severity)
                if source == MARKED_SOURCE:
                    pixels = draw_marker(rng, pixels)
            picture = Image.fromarray(pixels, mode="L")
            if rng.uniform() < RGB_SHARE:
                tint = rng.uniform(0.9, 1.0, 3)
                picture = Image.fromarray((pixels[..., None] * tint).astype(np.uint8), mode="RGB")
            picture.save(image_folder / name)
            mask_image = Image.fromarray((mask * 255).astype(np.uint8), mode="L").resize((MASK_SIZE, MASK_SIZE), Image.NEAREST)
            mask_image.save(mask_folder / name)
            previous = (pixels, mask, source)
            made.append((f"{label}/{IMAGES_FOLDER}/{name}", pixels, mask, source))
            rows.append({"FILE NAME": f"{METADATA_NAMES.get(label, label)}-{n}", "FORMAT": "PNG",
                         "SIZE": f"{image_size}*{image_size}", "URL": source})
        write_spreadsheet(pd.DataFrame(rows), root / f"{label}.metadata.xlsx")
        earlier = [image for image in made if image[3] != MARKED_SOURCE] or None  # the marker stays with its class
    settings = {
        "version": DEMO_VERSION, "images": images, "seed": seed, "image_size": image_size, "class_counts": class_counts(images),
        "sources": DEMO_SOURCES,
        "planted_shortcut": {"source": MARKED_SOURCE, "class": "COVID", "box": list(MARKER_BOX),
                             "what": "a bright text-like marker above the left lung, outside the lung mask; the source's cases are mild",
                             "severity": list(MARKED_SEVERITY)},
        "duplicates": copies,  # path, of (the original), kind ("exact" or a data.duplicates transformation), across_classes
    }
    write_atomic(root / DEMO_RECORD, json.dumps(settings, indent=2) + "\n")  # last: the set is complete
    return root


def write_spreadsheet(table: pd.DataFrame, path: Path) -> None:
    """An .xlsx file whose bytes depend on ``table`` only: openpyxl stamps the time of writing into the
    document's properties and its zip entries, so both are set to a fixed date."""
    buffer = io.BytesIO()
    table.to_excel(buffer, index=False)
    fixed = io.BytesIO()
    with zipfile.ZipFile(buffer) as written, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in written.infolist():
            data = written.read(entry)
            if entry.filename == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b"2020-01-01T00:00:00Z", data)
            out.writestr(zipfile.ZipInfo(entry.filename, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    write_atomic(path, fixed.getvalue())


def _clear_previous_demo(root: Path) -> None:
    """Remove an earlier demo set at ``root``; refuse to touch a folder that is not one."""
    if not root.exists():
        return
    if not root.is_dir() or (any(root.iterdir()) and not is_demo_dataset(root)):
        raise FileExistsError(f"{root} exists and is not a demo data set; choose another --out")
    for child in root.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child.name.endswith(".metadata.xlsx"):
            child.unlink()
    (root / DEMO_RECORD).unlink(missing_ok=True)


def is_demo_dataset(root: str | os.PathLike) -> bool:
    """Whether ``root`` was written by this generator (it leaves a marker file)."""
    marker = Path(root) / DEMO_MARKER
    return marker.is_file() and marker.read_text().startswith(DEMO_NOTE[:40])


def demo_dataset_complete(root: str | os.PathLike, images: int | None = None) -> bool:
    """Whether ``root`` holds a finished demo set (of ``images`` images, when given)."""
    record = Path(root) / DEMO_RECORD
    if not is_demo_dataset(root) or not record.is_file():
        return False
    try:
        written = json.loads(record.read_text())
    except json.JSONDecodeError:
        return False
    return written.get("version") == DEMO_VERSION and (images is None or written.get("images") == images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m covid_mobilenet.demo",
        description="Write a synthetic data set in the COVID-19 Radiography Database layout.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DEMO_DIR, help="data set root to write (default: %(default)s)")
    demo = load_config()["demo"]  # by default, the set run_all.py --demo trains on
    parser.add_argument("--images", type=int, default=demo["images"],
                        help="total number of images (default: %(default)s, as run_all.py --demo)")
    parser.add_argument("--seed", type=int, default=demo["seed"],
                        help="random seed; the same seed writes the same files (default: %(default)s, as run_all.py --demo)")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="side of each image in pixels (default: %(default)s, as the real set)")
    args = parser.parse_args(argv)
    if args.images < 16:
        parser.error("--images must be at least 16 (4 per class)")
    root = generate_demo_dataset(args.out, images=args.images, seed=args.seed, image_size=args.image_size)
    print(f"Wrote {args.images} demo images to {root}: {class_counts(args.images)}")


if __name__ == "__main__":
    main()
