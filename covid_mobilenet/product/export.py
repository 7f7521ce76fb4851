"""Ship a trained model: LiteRT flatbuffers in float32, float16 and int8, each measured on the test split.

    python -m covid_mobilenet.export results/<experiment>/seed-<seed> [--out FOLDER] [--threads N]

The run's ``model.keras`` is exported as a TensorFlow SavedModel (``model.export``) and converted
with ``tf.lite.TFLiteConverter.from_saved_model`` (``from_keras_model`` does not take Keras 3
models) into:

- ``model_float32.tflite``: the same weights;
- ``model_float16.tflite``: weights stored in float16 (half the size), computed in float32;
- ``model_int8.tflite``: full-integer quantization, uint8 pixels in and uint8 probabilities out,
  quantized with at most ``--representative-images`` training images as its representative data set (never test images).

A run calibrated by temperature scaling (``metrics.json``'s ``calibration``) has its temperature T folded into
all three: they end with softmax(log p / T) and give the calibrated probabilities themselves, which are
checked against the Keras model's probabilities scaled by the same T (``temperature_scaling`` in export.json).

Each is run with the LiteRT interpreter (``litert.py``) over the whole test split: accuracy, agreement with the Keras model's predictions,
file size, and the median single-image latency after warm-up with a fixed thread count. The
figures go to ``export.json``, and ``MODEL_CARD.md`` is written beside them from the run's files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..common.files import file_sha256, write_atomic, write_json  # noqa: E402
from ..common.paths import README_FILE  # noqa: E402
from ..common.readme import replace_readme_section  # noqa: E402
from ..common.run_layout import METRICS_FILE, MODEL_FILE  # noqa: E402
from ..analysis.calibration import temperature_scale  # noqa: E402
from .litert import WARMUP, LiteModel, convert, keras_single_image, measure, with_temperature  # noqa: E402
from .model_card import export_table, readme_section, write_model_card  # noqa: E402

EXPORT_FOLDER = "export"
EXPORT_RECORD = "export.json"
MODEL_CARD = "MODEL_CARD.md"
VARIANTS = ("float32", "float16", "int8")
REPRESENTATIVE_IMAGES = 200  # int8's representative data set (LiteRT's name); "calibration" is temperature scaling
REPRESENTATIVE_SEED = 0
EXPORT_START, EXPORT_END = "<!-- export:start -->", "<!-- export:end -->"  # the README's table, real runs only


class ExportError(RuntimeError):
    """The run cannot be exported as it is; the message says why and what to do."""


def run_files(run: Path, data_dir: Path | None = None) -> tuple[dict, pd.DataFrame, Path]:
    """The run's metrics, its split table and the data set root (``data_dir`` when the data moved), checked."""
    run = Path(run)
    metrics_file, model_file = run / METRICS_FILE, run / MODEL_FILE
    if not metrics_file.is_file() or not model_file.is_file():
        raise ExportError(f"{run} is not a finished run with a saved model (it needs {METRICS_FILE} and {MODEL_FILE}); "
                          "pass results/<experiment>/seed-<seed> of a run made by this version of the project.")
    metrics = json.loads(metrics_file.read_text())
    split_file = run.parent.parent / metrics["dataset"]["split_file"]
    if not split_file.is_file():
        raise ExportError(f"The run's split table {split_file} is missing; it names the training and test images.")
    root = Path(data_dir or metrics["dataset"]["root"])
    if not root.is_dir():
        raise ExportError(f"The data set the run used, {root}, is not on this machine: export calibrates on its "
                          "training images and measures on its test images. Pass --data-dir with its new place.")
    return metrics, pd.read_csv(split_file), root


def load_pixels(root: Path, paths, image_size: int) -> np.ndarray:
    """uint8 images decoded exactly as the training pipeline decodes them."""
    import tensorflow as tf

    from ..data.pipeline import load_image

    dataset = tf.data.Dataset.from_tensor_slices([str(root / p) for p in paths]).map(
        lambda path: load_image(path, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return np.stack(list(dataset.as_numpy_iterator())) if len(paths) else np.zeros((0, image_size, image_size, 3), np.uint8)


def export_run(run: Path, out: Path | None = None, *, threads: int = 1, representative: int = REPRESENTATIVE_IMAGES,
               data_dir: Path | None = None, say=print) -> dict:
    """Export, measure, and write export.json and MODEL_CARD.md into ``out`` (default: <run>/export)."""
    import keras
    import tensorflow as tf

    try:  # Keras gets the same threads as LiteRT; possible only before TensorFlow's first operation
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        say("TensorFlow was already running in this process: the Keras latency uses its thread settings")
    keras_threads = tf.config.threading.get_intra_op_parallelism_threads() or "TensorFlow's default"
    run = Path(run)
    metrics, split, root = run_files(run, data_dir)
    out = Path(out) if out is not None else run / EXPORT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    class_names, image_size = metrics["dataset"]["class_names"], metrics["params"]["image_size"]
    model = keras.saving.load_model(run / MODEL_FILE, compile=False, safe_mode=True)  # no code from the file is run

    test = split[split["split"] == "test"].sort_values("path")
    train = split[split["split"] == "train"].sort_values("path")
    chosen = train.sample(min(representative, len(train)), random_state=REPRESENTATIVE_SEED)["path"]
    say(f"decoding {len(test)} test and {len(chosen)} representative (training) images for int8")
    test_pixels, representative_pixels = load_pixels(root, test["path"], image_size), load_pixels(root, chosen, image_size)
    labels = np.array([class_names.index(label) for label in test["label"]])

    saved_model = out / "saved_model"
    temperature = metrics.get("calibration", {}).get("temperature")
    exported = model if temperature is None else with_temperature(model, temperature)
    exported.export(str(saved_model), format="tf_saved_model", verbose=False)
    keras_probabilities, keras_latency = measure(keras_single_image(model), test_pixels)
    keras_predicted = keras_probabilities.argmax(axis=1)
    if temperature is not None:  # what the exports must give: the Keras model's probabilities, calibrated
        keras_probabilities = temperature_scale(keras_probabilities, temperature)
    rows = [{"format": "Keras (.keras, float32)", "file": MODEL_FILE, "bytes": (run / MODEL_FILE).stat().st_size,
             "accuracy": float((keras_predicted == labels).mean()), "agreement_with_keras": 1.0,
             "median_latency_ms": 1000 * keras_latency, "runtime": f"Keras {keras.__version__}"}]
    for variant in VARIANTS:
        started = time.perf_counter()
        flatbuffer = convert(saved_model, variant, representative_pixels if variant == "int8" else None)
        path = out / f"model_{variant}.tflite"
        write_atomic(path, flatbuffer)
        lite = LiteModel(path, threads)
        probabilities, latency = measure(lite, test_pixels)
        predicted = probabilities.argmax(axis=1)
        rows.append({"format": f"LiteRT {variant}", "file": path.name, "bytes": len(flatbuffer),
                     "sha256": file_sha256(path), "input_dtype": np.dtype(lite.input_dtype).name,
                     "accuracy": float((predicted == labels).mean()),
                     "agreement_with_keras": float((predicted == keras_predicted).mean()),
                     "max_probability_difference": float(np.abs(probabilities - keras_probabilities).max()),
                     "median_latency_ms": 1000 * latency, "runtime": lite.runtime,
                     "convert_seconds": time.perf_counter() - started})
        say(f"{variant}: {len(flatbuffer) / 1e6:.2f} MB, accuracy {rows[-1]['accuracy']:.4f}, "
            f"agreement {rows[-1]['agreement_with_keras']:.4f}, {1000 * latency:.2f} ms/image")
    by_format = {row["format"]: row for row in rows}
    float32, int8 = by_format["LiteRT float32"], by_format["LiteRT int8"]
    record = {
        "run": str(run), "experiment": metrics["experiment"], "seed": metrics["params"]["seed"],
        "demo": bool(metrics["dataset"].get("demo")), "image_size": image_size, "class_names": class_names,
        "test_images": int(len(test)), "split_sha256": metrics["dataset"]["split_sha256"],
        "representative_images": {"images": int(len(chosen)), "split": "train", "seed": REPRESENTATIVE_SEED},
        "temperature_scaling": (
            {"folded": False, "why": "the run has no calibration record (made before runs were calibrated)"}
            if temperature is None else
            {"folded": True, "temperature": temperature, "where": "in every LiteRT model: a last layer softmax(log p / T)",
             "max_difference_vs_keras_calibrated": {row["format"]: row["max_probability_difference"] for row in rows[1:]}}),
        "threads": threads, "keras_threads": keras_threads, "warmup_calls": WARMUP, "latency": "median over single-image calls on the test split",
        "formats": rows,
        "int8_vs_float32": {"size_ratio": int8["bytes"] / float32["bytes"],
                            "latency_ratio": int8["median_latency_ms"] / float32["median_latency_ms"],
                            "accuracy_difference_vs_float32": int8["accuracy"] - float32["accuracy"],
                            "accuracy_difference_vs_keras": int8["accuracy"] - rows[0]["accuracy"]},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "interpreter": rows[-1]["runtime"]},
    }
    write_json(out / EXPORT_RECORD, record)
    write_model_card(out / MODEL_CARD, metrics, record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run's folder, results/<experiment>/seed-<seed>")
    parser.add_argument("--out", type=Path, help="where the exports go (default: <run>/export)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for every latency (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, help="the data set's folder, when it is no longer where the run found it")
    parser.add_argument("--no-readme", action="store_true", help="leave the README's export table alone (a real run fills it)")
    parser.add_argument("--representative-images", type=int, default=REPRESENTATIVE_IMAGES,
                        help="training images int8's ranges are measured on, its representative data set "
                             "(default: %(default)s; never test images)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.representative_images < 1:
        parser.error("--threads and --representative-images must be at least 1")
    try:
        record = export_run(args.run, args.out, threads=args.threads, representative=args.representative_images, data_dir=args.data_dir)
    except ExportError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    print(export_table(record))
    if not record["demo"] and not args.no_readme:  # demo exports never reach the README
        if replace_readme_section(README_FILE, readme_section(record), (EXPORT_START, EXPORT_END)):
            print(f"updated the export table in {README_FILE}")
    print(f"\nwrote {Path(args.out or args.run / EXPORT_FOLDER)}: {EXPORT_RECORD}, {MODEL_CARD}, "
          + ", ".join(f"model_{v}.tflite" for v in VARIANTS))
    return 0
