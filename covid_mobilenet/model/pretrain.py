"""Pretraining the demo's backbone: MobileNet trained from scratch on the synthetic pretext task
(``data/pretext.py``), its backbone's weights saved for the demo's runs (``demo_backbone.py`` decides
where, and when this runs). The command is ``python -m covid_mobilenet.demo_backbone``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..common.files import atomic_path, file_sha256, write_json
from .demo_backbone import manifest_path

THUMBNAIL = 8  # the pretext's second target: the picture at 8x8


def pretrain(out: Path, *, image_size: int, images: int, epochs: int, batch_size: int, learning_rate: float, seed: int) -> dict:
    """Train MobileNet on the pretext task; write its backbone's weights to ``out``, then the manifest."""
    import keras
    import numpy as np

    from ..data.pretext import PRETEXT_ATTRIBUTES, pretext_set

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
    with atomic_path(out) as temporary:
        backbone.save_weights(temporary)
    manifest = {
        "what": "MobileNet (include_top=False) pretrained on covid_mobilenet.data.pretext's synthetic shapes and textures: "
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
