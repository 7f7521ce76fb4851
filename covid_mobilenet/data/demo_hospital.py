"""A second demo collection, another "hospital": the demo's films as another scanner makes them, for evaluating a
demo run outside its own split (``python -m covid_mobilenet.evaluate``).

The same anatomy and signs of each class as the demo set (``demo.render_xray``), of ordinary severity, but
another scanner's contrast curve (a gamma), more noise, a softer image, another class mix, and no planted marker:
a run that learned the demo's marker instead of the lungs has nothing to lean on here. Written in the data set's
layout (masks and metadata spreadsheets included), with ``hospital.json`` saying how it was made.

Public collections copy each other, so with ``copies_from`` (the demo set) a few of its films come along as another
collection would hold them (resized, re-encoded, brightened, cropped or grainier; their own masks), listed in
``hospital.json``: what the overlap check must find, and nothing else.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from ..common.files import write_atomic
from .demo import IMAGE_SIZE, MASK_SIZE, render_xray, write_spreadsheet
from .duplicates import TRANSFORMS, near_copy
from .layout import IMAGES_FOLDER, MASKS_FOLDER

SOURCE = "demo-hospital-2"
CLASS_MIX = {"COVID": 0.35, "Lung_Opacity": 0.2, "Normal": 0.35, "Viral Pneumonia": 0.1}  # the demo's: 17/28/48/6%
SCANNER = {"gamma": 1.35, "noise_sigma": 7.0, "blur_radius": 1.2}  # its contrast curve, grain and softness
RECORD = "hospital.json"
COPIES = 6  # films of the demo set that the second hospital holds as copies, with copies_from
COPIED_SOURCE = "copied from the demo set"


def scanner(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A film as the second hospital's scanner renders it: its contrast curve, softness and grain."""
    curved = 255.0 * (pixels.astype(np.float64) / 255.0) ** SCANNER["gamma"]
    soft = np.asarray(Image.fromarray(np.round(curved).astype(np.uint8), "L")
                      .filter(ImageFilter.GaussianBlur(SCANNER["blur_radius"])), np.float64)
    return np.clip(np.round(soft + rng.normal(0, SCANNER["noise_sigma"], soft.shape)), 0, 255).astype(np.uint8)


def generate_second_hospital(out_dir: str | os.PathLike, *, images: int = 200, seed: int = 1000,
                             image_size: int = IMAGE_SIZE, copies_from: str | os.PathLike | None = None,
                             copies: int = COPIES) -> Path:
    """Write the second hospital's collection under ``out_dir`` (its root) and return that root."""
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    counts = {label: max(4, round(images * share)) for label, share in CLASS_MIX.items()}
    copied = _chosen_copies(Path(copies_from), copies, rng) if copies_from is not None else []
    for label, count in counts.items():
        image_folder, mask_folder = root / label / IMAGES_FOLDER, root / label / MASKS_FOLDER
        image_folder.mkdir(parents=True, exist_ok=True)
        mask_folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in range(1, count + 1):
            pixels, mask = render_xray(rng, label, image_size)
            name = f"{label}-H2-{n}.png"
            Image.fromarray(scanner(pixels, rng), "L").save(image_folder / name)
            Image.fromarray((mask * 255).astype(np.uint8), "L").resize((MASK_SIZE, MASK_SIZE), Image.NEAREST).save(
                mask_folder / name)
            rows.append({"FILE NAME": f"{label}-H2-{n}", "FORMAT": "PNG", "SIZE": f"{image_size}*{image_size}",
                         "URL": SOURCE})
        for n, copy in enumerate((c for c in copied if c["class"] == label), start=1):
            name = f"{label}-H2-copy-{n}.png"
            original = Path(copies_from) / copy["copy_of"]
            near_copy(Image.open(original), copy["how"], rng).save(image_folder / name)
            mask = original.parent.parent / MASKS_FOLDER / original.name
            if mask.is_file():
                Image.open(mask).save(mask_folder / name)
            copy["file"] = f"{label}/{IMAGES_FOLDER}/{name}"
            rows.append({"FILE NAME": name[:-4], "FORMAT": "PNG", "SIZE": "", "URL": COPIED_SOURCE})
        write_spreadsheet(pd.DataFrame(rows), root / f"{label}.metadata.xlsx")
    write_atomic(root / RECORD, json.dumps({"source": SOURCE, "images": sum(counts.values()) + len(copied), "seed": seed,
                                             "class_counts": counts, "scanner": SCANNER, "planted_marker": None,
                                             "copies": copied}, indent=2) + "\n")
    return root


def _chosen_copies(demo_root: Path, copies: int, rng: np.random.Generator) -> list[dict]:
    """Which of the demo set's films the hospital holds as copies, and how each was changed."""
    films = sorted(p.relative_to(demo_root).as_posix() for p in demo_root.glob(f"*/{IMAGES_FOLDER}/*.png"))
    chosen = rng.choice(len(films), size=min(copies, len(films)), replace=False) if films else []
    return [{"copy_of": films[i], "class": films[i].split("/")[0], "how": TRANSFORMS[k % len(TRANSFORMS)]}
            for k, i in enumerate(sorted(chosen))]
