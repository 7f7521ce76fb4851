"""The demo's stand-in for ImageNet weights: a MobileNet pretrained offline on the pretext task.

The study fine-tunes a *pretrained* MobileNet; offline, the ImageNet weights cannot be had. The
demo therefore pretrains MobileNet once on ``data/pretext.py``'s synthetic shapes and textures (never
on the demo's images or classes), keeps the backbone's weights in ``cache/demo_backbone/`` and
loads them through the notebook's ordinary ``weights=<file>`` parameter.

The file name carries a key of everything that made it (the pretraining settings, the image
size, and the source of the pretext generator, of the pretraining and of this module), so a change
to any of them makes a new file and the experiments that used the old one run again. A manifest
written last holds the file's SHA-256: a file cut short or damaged is found and rebuilt.

Free of TensorFlow, so that run_all.py can find or build the backbone without loading it: the
pretraining itself (``pretrain.py``) runs as ``python -m covid_mobilenet.demo_backbone``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from ..common.files import file_sha256
from ..common.paths import PROJECT_ROOT

DEFAULT_CACHE = PROJECT_ROOT / "cache" / "demo_backbone"
# The code that decides what the weights are: a change here makes a new backbone.
RECIPE_MODULES = ("covid_mobilenet.data.pretext", "covid_mobilenet.model.pretrain", "covid_mobilenet.model.demo_backbone")
SETTINGS = ("images", "epochs", "batch_size", "learning_rate", "seed")


class BackboneError(RuntimeError):
    """The demo backbone could not be pretrained; the message says why."""


def backbone_key(recipe: dict, image_size: int) -> str:
    """SHA-256 of the pretraining settings, the image size and the recipe's source code."""
    digest = hashlib.sha256(json.dumps({**_settings(recipe), "image_size": image_size}, sort_keys=True).encode())
    for source in recipe_files():
        digest.update(source.read_bytes())
    return digest.hexdigest()


def recipe_files() -> list[Path]:
    """The source files of RECIPE_MODULES, found without importing them (pretraining needs TensorFlow)."""
    return [Path(importlib.util.find_spec(name).origin) for name in RECIPE_MODULES]


def weights_path(recipe: dict, image_size: int, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Where the backbone for ``recipe`` at ``image_size`` is kept (whether or not it exists yet)."""
    return Path(cache_dir) / f"mobilenet_{image_size}px_{backbone_key(recipe, image_size)[:16]}.weights.h5"


def manifest_path(weights: Path) -> Path:
    """The manifest beside a weights file: how it was made, and its SHA-256."""
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")


def is_complete(weights: Path) -> bool:
    """Whether ``weights`` exists and matches the SHA-256 its manifest recorded when it was written."""
    try:
        manifest = json.loads(manifest_path(weights).read_text())
        return weights.is_file() and file_sha256(weights) == manifest["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_backbone(
    recipe: dict, image_size: int, cache_dir: str | os.PathLike = DEFAULT_CACHE, say: Callable[[str], None] = print
) -> Path:
    """The backbone's weights file, pretrained first when it is absent, incomplete or damaged."""
    weights = weights_path(recipe, image_size, cache_dir)
    if is_complete(weights):
        return weights
    if weights.exists() or manifest_path(weights).exists():
        say(f"The cached demo backbone {weights} is damaged or incomplete (its SHA-256 does not match its manifest); "
            "pretraining it again")
        weights.unlink(missing_ok=True)
        manifest_path(weights).unlink(missing_ok=True)
    settings = _settings(recipe)
    say(f"Pretraining the demo backbone (a stand-in for ImageNet weights) at {image_size} px on "
        f"{settings['images']} synthetic pretext pictures, {settings['epochs']} epochs; done once, then reused")
    command = [sys.executable, "-m", "covid_mobilenet.demo_backbone", "--out", str(weights), "--image-size", str(image_size)]
    for name in SETTINGS:
        command += [f"--{name.replace('_', '-')}", str(settings[name])]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=PROJECT_ROOT)
    if finished.returncode != 0 or not is_complete(weights):
        raise BackboneError(f"Pretraining the demo backbone failed (exit status {finished.returncode}); its output is above. "
                            f"Command: {' '.join(command)}")
    say(f"Demo backbone ready in {time.perf_counter() - started:.0f} s: {weights}")
    return weights


def _settings(recipe: dict) -> dict:
    missing = [name for name in SETTINGS if name not in recipe]
    if missing:
        raise KeyError(f"the demo backbone's settings (experiments.json demo.backbone) lack {', '.join(missing)}")
    return {name: recipe[name] for name in SETTINGS}
