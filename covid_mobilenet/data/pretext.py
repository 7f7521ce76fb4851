"""A synthetic pretext task for the demo backbone: generic shapes and textures, no chest X-rays.

The real study fine-tunes MobileNet from ImageNet weights, which cannot be downloaded offline.
The demo stands in for them with a MobileNet pretrained here on this task: grayscale pictures
of simple shapes and textures at random places, sizes and contrasts on uneven backgrounds, one
of the ``PRETEXT_CLASSES`` per picture. Like ImageNet it knows nothing of the demo's four
classes, its lungs or its images; it teaches the generic filters (edges, blobs of a size,
stripes, speckle) that fine-tuning then builds on.

Free of TensorFlow: the pictures are NumPy arrays, deterministic for a seed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

PRETEXT_ATTRIBUTES = (
    "one_ellipse",        # a large soft dark ellipse
    "two_ellipses",       # a pair of them side by side
    "large_blob",         # one or two broad bright or dark spots
    "large_blob_left",    # ... whose first lies in the left half
    "small_blobs",        # a scatter of small spots
    "small_blobs_low",    # ... mostly in the lower half
    "streaks",            # short soft line segments
    "stripes",            # a periodic grating
    "speckle",            # fine grain
    "small_frame",        # the whole composition shrunk towards the centre
)


def render_pretext(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size) uint8 picture and its attributes (0/1, in PRETEXT_ATTRIBUTES order).

    Each element is present or not at random, independently, at a random place, size and
    contrast, so the network has to say what is present, how much of it and where.
    """
    present = dict.fromkeys(PRETEXT_ATTRIBUTES, 0)
    scale = 0.8 if rng.uniform() < 0.3 else 1.0
    present["small_frame"] = int(scale < 1)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x, y = 0.5 + (x - 0.5) / scale, 0.5 + (y - 0.5) / scale
    picture = 0.3 + 0.4 * rng.uniform() + 0.12 * _smooth_noise(rng, size, int(rng.integers(2, 6)))
    ellipses = int(rng.choice([0, 1, 2]))
    present["one_ellipse"], present["two_ellipses"] = int(ellipses == 1), int(ellipses == 2)
    centres = [(rng.uniform(0.35, 0.65), rng.uniform(0.4, 0.6))] if ellipses == 1 else [
        (0.5 - gap, cy) for gap, cy in [(rng.uniform(0.15, 0.22), rng.uniform(0.4, 0.6))]] + [
        (1 - (0.5 - gap), cy) for gap, cy in [(rng.uniform(0.15, 0.22), rng.uniform(0.4, 0.6))]] if ellipses == 2 else []
    for cx, cy in centres:
        rx, ry = rng.uniform(0.08, 0.16), rng.uniform(0.2, 0.32)
        picture -= rng.uniform(0.15, 0.3) / (1 + np.exp(np.minimum(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 - 1, 5) * 10))
    if rng.uniform() < 0.5:
        present["large_blob"] = 1
        spots = [rng.uniform(0.15, 0.85, 2) for _ in range(rng.integers(1, 3))]
        present["large_blob_left"] = int(spots[0][0] < 0.5)
        for cx, cy in spots:
            picture += _signed(rng, 0.15, 0.35) * _blob(x, y, cx, cy, rng.uniform(0.06, 0.11))
    if rng.uniform() < 0.5:
        present["small_blobs"] = 1
        low = rng.uniform() < 0.5
        present["small_blobs_low"] = int(low)
        for _ in range(rng.integers(4, 10)):
            cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.55, 0.9) if low else rng.uniform(0.1, 0.9)
            picture += _signed(rng, 0.1, 0.25) * _blob(x, y, cx, cy, rng.uniform(0.02, 0.045))
    if rng.uniform() < 0.5:
        present["streaks"] = 1
        for _ in range(rng.integers(4, 10)):
            picture += rng.uniform(0.08, 0.2) * _segment(x, y, rng.uniform(0.15, 0.85, 4), rng.uniform(0.006, 0.015))
    if rng.uniform() < 0.3:
        present["stripes"] = 1
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.06, 0.16)
        grating = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period + rng.uniform(0, 6.3))
        picture += rng.uniform(0.04, 0.1) * grating * _blob(x, y, *rng.uniform(0.3, 0.7, 2), rng.uniform(0.15, 0.3))
    if rng.uniform() < 0.3:
        present["speckle"] = 1
        picture += rng.uniform(0.06, 0.15) * (rng.uniform(size=x.shape) < 0.1)
    picture = picture + rng.normal(0, 0.02, x.shape)
    pixels = np.clip(picture * 255, 0, 255).astype(np.uint8)
    return pixels, np.array([present[name] for name in PRETEXT_ATTRIBUTES], np.float32)


def pretext_set(images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``images`` pictures (N, size, size, 3 uint8) and their attributes (N, attributes), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    pictures, attributes = zip(*(render_pretext(rng, size) for _ in range(images)))
    return np.repeat(np.stack(pictures)[..., None], 3, axis=-1), np.stack(attributes)


def _signed(rng, low, high):
    return rng.uniform(low, high) * rng.choice([-1.0, 1.0])


def _blob(x, y, cx, cy, sigma):
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))


def _segment(x, y, ends, width):
    """A soft line from (x0, y0) to (x1, y1)."""
    x0, y0, x1, y1 = ends
    dx, dy = x1 - x0, y1 - y0
    along = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    distance = np.hypot(x - x0 - along * dx, y - y0 - along * dy)
    return np.exp(-(distance**2) / (2 * width**2))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
