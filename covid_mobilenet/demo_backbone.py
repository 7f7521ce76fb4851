"""The demo's stand-in for ImageNet weights: a MobileNet pretrained offline on the pretext task.

The study fine-tunes a *pretrained* MobileNet; offline, the ImageNet weights cannot be had. The
demo therefore pretrains MobileNet once on ``pretext.py``'s synthetic shapes and textures (never
on the demo's images or classes), keeps the backbone's weights in ``cache/demo_backbone/`` and
loads them through the notebook's ordinary ``weights=<file>`` parameter.

The file name carries a key of everything that made it (the pretraining settings, the image
size, and the source of this module and of the pretext generator), so a change to any of them
makes a new file and the experiments that used the old one run again. A manifest written last
holds the file's SHA-256: a file cut short or damaged is found and rebuilt.

Everything but ``pretrain`` is free of TensorFlow, so that run_all.py can find or build the
backbone without loading it (pretraining runs as ``python -m covid_mobilenet.demo_backbone``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from . import PROJECT_ROOT
from .files import file_sha256, write_json

DEFAULT_CACHE = PROJECT_ROOT / "cache" / "demo_backbone"
# The code that decides what the weights are: a change here makes a new backbone.
RECIPE_FILES = [Path(__file__).with_name("pretext.py"), Path(__file__)]
THUMBNAIL = 8  # the pretext's second target: the picture at 8x8
SETTINGS = ("images", "epochs", "batch_size", "learning_rate", "seed")


class BackboneError(RuntimeError):
    """The demo backbone could not be pretrained; the message says why."""


def backbone_key(recipe: dict, image_size: int) -> str:
    """SHA-256 of the pretraining settings, the image size and the recipe's source code."""
    digest = hashlib.sha256(json.dumps({**_settings(recipe), "image_size": image_size}, sort_keys=True).encode())
    for source in RECIPE_FILES:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def weights_path(recipe: dict, image_size: int, cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Where the backbone for ``recipe`` at ``image_size`` is kept (whether or not it exists yet)."""
    return Path(cache_dir) / f"mobilenet_{image_size}px_{backbone_key(recipe, image_size)[:16]}.weights.h5"


def manifest_path(weights: Path) -> Path:
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


def pretrain(out: Path, *, image_size: int, images: int, epochs: int, batch_size: int, learning_rate: float, seed: int) -> dict:
    """Train MobileNet on the pretext task; write its backbone's weights to ``out``, then the manifest."""
    import keras
    import numpy as np

    from .pretext import PRETEXT_ATTRIBUTES, pretext_set

    started = time.perf_counter()
    pictures, attributes = pretext_set(images, image_size, seed)
    held_out, held_out_attributes = pretext_set(max(64, images // 8), image_size, seed + 1)
    keras.utils.set_random_seed(seed)
    backbone = keras.applications.MobileNet(input_shape=(image_size, image_size, 3), include_top=False, weights=None)
    for layer in backbone.layers:
        # Keras' 0.99 lets BatchNorm's statistics lag far behind weights that move fast from scratch.
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    # Two outputs: which shapes and textures are present (sigmoid), and the picture itself at 8x8
    # (standardised), which makes the features keep where things are, not only what they are.
    inputs = keras.Input((image_size, image_size, 3))
    features = keras.layers.Flatten()(backbone(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
    present = keras.layers.Dense(len(PRETEXT_ATTRIBUTES), activation="sigmoid", name="present")(features)
    thumbnail = keras.layers.Dense(THUMBNAIL * THUMBNAIL, name="thumbnail")(features)
    model = keras.Model(inputs, [present, thumbnail])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=["binary_crossentropy", "mse"],
                  metrics=[["binary_accuracy"], []])
    small = _thumbnails(pictures)
    mean, scale = small.mean(0), small.std()
    targets = (attributes, (small - mean) / scale)
    held_out_targets = (held_out_attributes, (_thumbnails(held_out) - mean) / scale)
    history = model.fit(pictures, targets, batch_size=batch_size, epochs=epochs,
                        validation_data=(held_out, held_out_targets), verbose=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{os.getpid()}.{out.name}")
    backbone.save_weights(temporary)
    os.replace(temporary, out)
    manifest = {
        "what": "MobileNet (include_top=False) pretrained on covid_mobilenet.pretext's synthetic shapes and textures: "
                "the demo's stand-in for ImageNet weights, not ImageNet",
        "image_size": image_size, "images": images, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "seed": seed,
        "pretext_attributes": list(PRETEXT_ATTRIBUTES),
        "held_out_binary_accuracy": float(history.history["val_present_binary_accuracy"][-1]),
        "held_out_thumbnail_mse": float(history.history["val_thumbnail_loss"][-1]),  # 1.0: no better than the mean
        "chance_binary_accuracy": float(np.maximum(held_out_attributes.mean(0), 1 - held_out_attributes.mean(0)).mean()),
        "seconds": time.perf_counter() - started,
        "weights_sha256": file_sha256(out),
    }
    write_json(manifest_path(out), manifest)  # last: the backbone is complete
    return manifest


def _thumbnails(pictures):
    """Each picture's first channel averaged down to THUMBNAIL x THUMBNAIL, flattened, in [0, 1]."""
    import numpy as np

    count, size = pictures.shape[:2]
    cells = np.array_split(np.arange(size), THUMBNAIL)
    gray = pictures[..., 0].astype(np.float32) / 255
    return np.stack([gray[:, r][:, :, c].mean(axis=(1, 2)) for r in cells for c in cells], axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m covid_mobilenet.demo_backbone",
        description="Pretrain MobileNet on the synthetic pretext task and save its backbone's weights "
                    "(run_all.py --demo does this by itself when the demo needs it).",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .weights.h5 file to write")
    parser.add_argument("--image-size", type=int, required=True, help="image side in pixels, as the runs that load it")
    parser.add_argument("--images", type=int, required=True, help="pretext pictures to train on")
    parser.add_argument("--epochs", type=int, required=True, help="passes over them")
    parser.add_argument("--batch-size", type=int, required=True, help="pictures per step")
    parser.add_argument("--learning-rate", type=float, required=True, help="Adam's learning rate")
    parser.add_argument("--seed", type=int, required=True, help="seed of the pictures and of the initial weights")
    args = parser.parse_args(argv)
    if not args.out.name.endswith(".weights.h5"):
        parser.error("--out must end with .weights.h5 (Keras' weights format)")
    manifest = pretrain(args.out, image_size=args.image_size, images=args.images, epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
    print(f"Pretrained in {manifest['seconds']:.0f} s; held-out pretext accuracy {manifest['held_out_binary_accuracy']:.3f} "
          f"(always guessing the commoner answer: {manifest['chance_binary_accuracy']:.3f}), thumbnail error "
          f"{manifest['held_out_thumbnail_mse']:.2f} (1.0: no better than the mean picture); wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
