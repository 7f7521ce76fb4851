"""The speed benchmark: every figure measured side by side in one run, on generated data of the real size.

    python -m covid_mobilenet.benchmark              # 2,000 images of 299x299 at image_size 224, about 15 min on 2 cores
    python -m covid_mobilenet.benchmark --full-size  # adds the memory check: one fast configuration on 21,165 images

It prints a table and writes ``results/bench.json`` with:

- ``pipeline_speedup``: images/s of the project's tf.data pipeline (decode and resize once,
  cache, shuffle, batch, prefetch) from its second epoch on, over those of the plain
  ``keras.utils.image_dataset_from_directory`` on the ``images/`` folders, same images,
  image size and batch size (first-epoch figures too);
- ``training_vs_ceiling``: training images/s of the study's model fed by the pipeline,
  over the same model trained on batches already held in memory as tensors;
- ``fast_sweep_speedup``: wall time of the seven configurations with a frozen backbone
  trained end to end, over the same seven through the feature cache (the notebook's
  steps, without kernel start-up; epochs stated);
- ``precision``: training images/s in float32 and in the reduced precision this hardware
  offers (bfloat16 on a CPU with bfloat16 instructions, float16 on a GPU), which
  ``precision="auto"`` reads on a CPU;
- ``int8_latency_ratio`` and ``int8_accuracy_difference``: a trained run (``--run``, default the best
  finished run on the real data, else the best demo run, labelled so) exported to LiteRT
  (``export.py``): the int8 model's median single-image latency over the float32 model's, and its
  test accuracy minus the float32 model's, in points, both measured in this run on the whole test split;
- ``peak_rss_gib``: this process's peak resident memory; with ``--full-size``,
  ``full_size.peak_rss_gib`` is the peak of the notebook kernel that ran one fast configuration;
- the raw figures and the machine (CPU, cores, GPUs, versions).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from . import PROJECT_ROOT, experiment, report  # noqa: E402
from .data import IMAGES_FOLDER, scan_dataset  # noqa: E402
from .demo import demo_dataset_complete, generate_demo_dataset  # noqa: E402
from .files import write_json  # noqa: E402
from .model import build_model, compile_model  # noqa: E402
from .params import check_parameters, notebook_defaults  # noqa: E402
from .pipeline import SplitPipelines, decoded  # noqa: E402
from .runtime import cpu_has_bfloat16  # noqa: E402
from .summary import experiment_parameters, load_config  # noqa: E402

BENCH_FILE = PROJECT_ROOT / "results" / "bench.json"
DATA_DIR = PROJECT_ROOT / "data" / "bench"
FULL_SIZE_IMAGES = 21_165


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="generated 299x299 PNG images (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="image side the models see (default: %(default)s, the study's)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s, the study's)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed epoch of the ceiling comparison (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each configuration in the fast-sweep comparison (default: %(default)s)")
    parser.add_argument("--full-size", action="store_true",
                        help=f"also run one fast configuration on {FULL_SIZE_IMAGES:,} generated images and record its peak memory")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the generated sets go (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=BENCH_FILE, help="(default: %(default)s)")
    parser.add_argument("--run", type=Path, help="the trained run whose LiteRT exports are compared (default: the best "
                                                 "finished real run, else the best demo run)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    root = ensure_data(args.data_dir / f"{args.images}", args.images)
    index = scan_dataset(root)
    print(f"{len(index.images)} images under {root}; image_size {args.image_size}, batch {args.batch_size}\n")

    bench = {"settings": {**vars(args), "data_dir": str(args.data_dir), "output": str(args.output),
                          "run": None if args.run is None else str(args.run)}}
    bench["pipeline"] = measure_pipeline(root, index, args.image_size, args.batch_size)
    bench["training"], in_memory = measure_training(index, args.image_size, args.batch_size, args.steps)
    bench["precision"] = measure_precision(bench["training"], in_memory, len(index.class_names), args.image_size)
    bench["fast_sweep"] = measure_fast_sweep(root, args.image_size, args.batch_size, args.epochs)
    bench["pipeline_speedup"] = bench["pipeline"]["project"]["later_epochs"] / bench["pipeline"]["baseline"]["later_epochs"]
    bench["training_vs_ceiling"] = bench["training"]["pipeline"] / bench["training"]["ceiling"]
    bench["fast_sweep_speedup"] = bench["fast_sweep"]["end_to_end_seconds"] / bench["fast_sweep"]["cached_seconds"]
    bench["quantization"] = measure_quantization(args.run or quantization_run())
    if "int8_vs_float32" in bench["quantization"]:
        bench["int8_latency_ratio"] = bench["quantization"]["int8_vs_float32"]["latency_ratio"]
        bench["int8_accuracy_difference"] = bench["quantization"]["int8_vs_float32"]["accuracy_difference_vs_float32"]
    bench["peak_rss_gib"] = report.peak_rss_gib()
    bench["machine"] = machine()
    bench["seconds"] = time.perf_counter() - started
    write_json(args.output, bench)  # before the long memory check, so that nothing measured is lost
    if args.full_size:
        bench["full_size"] = measure_full_size(args.data_dir / "full", args.image_size)
        bench["seconds"] = time.perf_counter() - started
        write_json(args.output, bench)
    print("\n" + table(bench))
    print(f"\nwritten to {args.output}")
    return 0


def quantization_run() -> Path | None:
    """The best finished run on the real data, else the best demo run, else None."""
    from .predict import PredictError, best_run

    for allow_demo, folder in ((False, PROJECT_ROOT / "results"), (True, PROJECT_ROOT / "results" / "demo")):
        try:
            return best_run(folder, allow_demo=allow_demo)
        except PredictError:
            continue
    return None


def measure_quantization(run: Path | None) -> dict:
    """int8 against float32 LiteRT, side by side on one run's whole test split (export.py does the measuring)."""
    from .export import export_run

    if run is None:
        return {"skipped": "no finished run with a saved model: run `python run_all.py --demo` (or the real sweep) first"}
    with tempfile.TemporaryDirectory() as folder:
        record = export_run(run, Path(folder), threads=1)
    ratios = record["int8_vs_float32"]
    return {
        "run": str(run), "demo": record["demo"], "test_images": record["test_images"], "threads": record["threads"],
        "formats": record["formats"],
        "int8_vs_float32": {"latency_ratio": ratios["latency_ratio"], "size_ratio": ratios["size_ratio"],
                            "accuracy_difference_vs_float32": 100 * ratios["accuracy_difference_vs_float32"]},  # points
    }


def ensure_data(root: Path, images: int) -> Path:
    """A generated set of ``images`` 299x299 PNGs in the real layout (masks included), reused when complete."""
    root = root / "COVID-19_Radiography_Dataset"
    if not demo_dataset_complete(root, images):
        print(f"Generating {images} images in {root}")
        generate_demo_dataset(root, images=images, seed=0)
    return root


# ---------------------------------------------------------------- the input pipeline


def measure_pipeline(root: Path, index, image_size: int, batch_size: int, epochs: int = 3) -> dict:
    """Images/s of each epoch, the project's pipeline against Keras' image_dataset_from_directory."""
    pipelines = _training_pipeline(index, image_size, batch_size)
    project = pipelines.training_epochs(0, epochs)
    with tempfile.TemporaryDirectory() as folders:
        # The baseline reads class folders of images; the real layout keeps masks beside images/,
        # so it is pointed at each class's images/ folder through a link.
        for name in index.class_names:
            os.symlink(root / name / IMAGES_FOLDER, Path(folders) / name)
        baseline = keras.utils.image_dataset_from_directory(
            folders, image_size=(image_size, image_size), batch_size=batch_size, shuffle=True, seed=0,
            follow_links=True, verbose=False,
        )
        baseline_rates = [_images_per_second(baseline) for _ in range(epochs)]
    project_rates = _images_per_second_per_epoch(project, pipelines.steps_per_epoch, epochs)
    result = {
        "images": pipelines.sizes["train"],
        "baseline": {"epochs": baseline_rates, "first_epoch": baseline_rates[0], "later_epochs": float(np.median(baseline_rates[1:]))},
        "project": {"epochs": project_rates, "first_epoch": project_rates[0], "later_epochs": float(np.median(project_rates[1:]))},
    }
    print(f"pipeline images/s by epoch: image_dataset_from_directory {_rounded(baseline_rates)}, project {_rounded(project_rates)}")
    return result


def _training_pipeline(index, image_size: int, batch_size: int) -> SplitPipelines:
    """The pipeline training reads (decoded once, cached in memory, shuffled per epoch), over every image."""
    paths = [str(index.root / p) for p in index.images["path"]]
    classes = {name: i for i, name in enumerate(index.class_names)}
    labels = [classes[label] for label in index.images["label"]]
    return SplitPipelines({"train": decoded(paths, labels, image_size=image_size)}, {"train": len(paths)}, batch_size, seed=0)


def _images_per_second(dataset: tf.data.Dataset) -> float:
    count, start = 0, time.perf_counter()
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def _images_per_second_per_epoch(dataset: tf.data.Dataset, steps_per_epoch: int, epochs: int) -> list[float]:
    """The project's epochs come as one stream of batches; time each epoch's share of it."""
    per_epoch = steps_per_epoch
    rates, count, start = [], 0, time.perf_counter()
    for i, (images, _) in enumerate(dataset, start=1):
        count += int(images.shape[0])
        if i % per_epoch == 0:
            rates.append(count / (time.perf_counter() - start))
            count, start = 0, time.perf_counter()
    return rates


# ---------------------------------------------------------------- training against its ceiling


def measure_training(index, image_size: int, batch_size: int, steps: int, rounds: int = 2) -> tuple[dict, tf.data.Dataset]:
    """Training images/s of the study's model (fine-tuned, as the study did) fed by the project's pipeline,
    against the same model on the same batches held in memory as tensors (returned too)."""
    pipelines = _training_pipeline(index, image_size, batch_size)
    for _ in pipelines.training_epochs(0, 1):
        pass  # the first epoch decodes and caches: the timed ones below are epochs 2 and later
    in_memory = list(pipelines.training_epochs(1, 2).take(steps))
    ceiling = tf.data.Dataset.from_tensor_slices((tf.stack([x for x, _ in in_memory]), tf.stack([y for _, y in in_memory])))

    model = _study_model(len(index.class_names), image_size)
    timer = _EpochSeconds()
    # Not timed: each source's first fit traces the training step for its batch shape.
    model.fit(ceiling, epochs=1, shuffle=False, verbose=0)
    model.fit(pipelines.training_epochs(2, 3).take(steps), epochs=1, shuffle=False, verbose=0)
    rates = {"pipeline": [], "ceiling": []}
    for round_ in range(rounds):  # alternated, so that drift in the machine's speed hits both alike
        model.fit(pipelines.training_epochs(3 + round_, 4 + round_).take(steps), epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        rates["pipeline"].append(steps * batch_size / timer.seconds)
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        rates["ceiling"].append(steps * batch_size / timer.seconds)
    result = {name: float(np.median(values)) for name, values in rates.items()}
    result.update({"runs": rates, "steps": steps, "batch_size": batch_size, "model": "MobileNet-F-D(8), train_base=True, float32"})
    print(f"training images/s: pipeline {_rounded(rates['pipeline'])}, in-memory tensors {_rounded(rates['ceiling'])}")
    return result, ceiling


def measure_precision(training: dict, ceiling: tf.data.Dataset, num_classes: int, image_size: int) -> dict:
    """The reduced precision this hardware has, against float32 (the ceiling figure), same model and batches."""
    reduced = "mixed_float16" if tf.config.list_physical_devices("GPU") else ("mixed_bfloat16" if cpu_has_bfloat16() else None)
    result = {"float32": {"images_per_second": training["ceiling"]}}
    if reduced is None:
        print("precision: float32 only (no bfloat16 instructions on this CPU)")
        return result
    keras.mixed_precision.set_global_policy(reduced)
    try:
        model, timer = _study_model(num_classes, image_size), _EpochSeconds()
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0)  # traces: not timed
        model.fit(ceiling, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    result[reduced] = {"images_per_second": training["steps"] * training["batch_size"] / timer.seconds}
    print(f"training images/s: {reduced} {result[reduced]['images_per_second']:.1f}, float32 {training['ceiling']:.1f}")
    return result


def _study_model(num_classes: int, image_size: int) -> keras.Model:
    model = build_model(num_classes, image_size=image_size, hidden_layers=1, dense_units=8, dropout=0.5,
                        weights=None, train_base=True, seed=0)
    return compile_model(model, 1e-5)


class _EpochSeconds(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self._start


# ---------------------------------------------------------------- the fast sweep


def measure_fast_sweep(root: Path, image_size: int, batch_size: int, epochs: int) -> dict:
    """The seven configurations with a frozen backbone: trained end to end, then through the feature cache.

    Each configuration goes through the notebook's steps (setup, data, model, training with its
    backup, evaluation of every split) in this process, as a sweep's notebooks would without
    their kernels' start-up; the cached side includes computing the features.
    """
    config = load_config()
    with tempfile.TemporaryDirectory() as scratch:
        base = {
            **notebook_defaults(), "data_dir": str(root), "results_dir": f"{scratch}/results", "graph_dir": f"{scratch}/Graph",
            "feature_dir": f"{scratch}/features", "image_size": image_size, "batch_size": batch_size, "epochs": epochs,
            "weights": None, "train_base": False, "precision": "float32",
        }
        seconds = {}
        for fast in (False, True):
            started = time.perf_counter()
            for name, settings in config["experiments"].items():
                params = check_parameters({**base, **experiment_parameters(settings), "experiment": f"{name}-{fast}", "fast": fast})
                _run_steps(params)
            seconds[fast] = time.perf_counter() - started
            print(f"seven frozen-backbone configurations, {epochs} epochs: {'feature cache' if fast else 'end to end'} {seconds[fast]:.0f} s")
    return {"end_to_end_seconds": seconds[False], "cached_seconds": seconds[True], "epochs": epochs,
            "configurations": len(config["experiments"])}


def _run_steps(params: dict) -> None:
    runtime = experiment.setup(params)
    data = experiment.prepare_data(params, runtime)
    model = experiment.build(params, data, runtime)
    history = experiment.train(model, data, params)
    predictions = experiment.predict(model, data)
    # the shortcut checks too, as every notebook runs them: in fast mode they need the backbone again
    analysis = experiment.look_for_shortcuts(experiment.full_model(model, data, params), data, predictions, params, runtime)
    experiment.evaluate(model, data, predictions, params, history, runtime, analysis)
    del model, data
    keras.backend.clear_session(free_memory=True)  # as a new notebook kernel would start: nothing held over


# ---------------------------------------------------------------- memory at full size


def measure_full_size(data_dir: Path, image_size: int) -> dict:
    """One fast configuration on a generated set of the real size, run by run_all.py in its own kernel."""
    root = ensure_data(data_dir, FULL_SIZE_IMAGES)
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, str(PROJECT_ROOT / "run_all.py"), "--demo", "--fast", "--only", "mn_resultset1", "--force",
            "--data-dir", str(root), "--image-size", str(image_size), "--jobs", "1",
            "--results-dir", f"{scratch}/results", "--graph-dir", f"{scratch}/Graph", "--set", f"feature_dir={scratch}/features",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=PROJECT_ROOT)
        metrics = json.loads((Path(scratch) / "results" / "mn_resultset1" / "metrics.json").read_text())
    result = {
        "images": metrics["dataset"]["total_images"],
        "image_size": image_size,
        "peak_rss_gib": metrics["peak_rss_gib"],
        "feature_seconds": metrics["features"]["seconds"],
        "train_seconds": metrics["train_seconds"],
        "epochs": metrics["epochs_run"],
        "wall_seconds": time.perf_counter() - started,
        "command": " ".join(command[1:]),
    }
    print(f"full size: {result['images']} images at {image_size} px, kernel peak memory {result['peak_rss_gib']:.2f} GiB")
    return result


# ---------------------------------------------------------------- report


def machine() -> dict:
    env = report.environment()
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in tf.config.list_physical_devices("GPU")]
    return {"cpu": report.cpu_name(), "cpu_count": os.cpu_count(), "gpus": gpus,
            **{key: env[key] for key in ("device", "python", "tensorflow", "keras", "numpy", "platform", "git_commit")}}


def table(bench: dict) -> str:
    pipeline, training, sweep = bench["pipeline"], bench["training"], bench["fast_sweep"]
    rows = [
        ("pipeline_speedup", bench["pipeline_speedup"],
         f"project {pipeline['project']['later_epochs']:.0f} vs image_dataset_from_directory "
         f"{pipeline['baseline']['later_epochs']:.0f} images/s from epoch 2 (epoch 1: "
         f"{pipeline['project']['first_epoch']:.0f} vs {pipeline['baseline']['first_epoch']:.0f})"),
        ("training_vs_ceiling", bench["training_vs_ceiling"],
         f"{training['pipeline']:.1f} vs {training['ceiling']:.1f} images/s (in-memory tensors)"),
        ("fast_sweep_speedup", bench["fast_sweep_speedup"],
         f"{sweep['end_to_end_seconds']:.0f} s end to end vs {sweep['cached_seconds']:.0f} s cached, "
         f"{sweep['configurations']} configurations x {sweep['epochs']} epochs"),
    ]
    rows += [(f"precision {name}", None, f"{figures['images_per_second']:.1f} training images/s")
             for name, figures in bench["precision"].items()]
    quantization = bench["quantization"]
    if "int8_vs_float32" in quantization:
        rows.append(("int8_latency_ratio", bench["int8_latency_ratio"],
                     f"LiteRT int8 vs float32, median single-image latency, {quantization['threads']} thread, "
                     f"{quantization['test_images']} test images of {quantization['run']}{' (demo)' if quantization['demo'] else ''}"))
        rows.append(("int8_accuracy_difference", bench["int8_accuracy_difference"],
                     "test accuracy of int8 minus float32, in points; int8 file "
                     f"{100 * quantization['int8_vs_float32']['size_ratio']:.0f}% of float32"))
    else:
        rows.append(("int8_latency_ratio", None, quantization["skipped"]))
    if "full_size" in bench:
        full = bench["full_size"]
        rows.append(("full_size.peak_rss_gib", full["peak_rss_gib"],
                     f"one fast configuration, {full['images']} images at {full['image_size']} px"))
    rows.append(("peak_rss_gib", bench["peak_rss_gib"], "this benchmark process"))
    lines = [f"{'figure':<24} {'value':>8}  measured"]
    lines += [f"{name:<24} {'' if value is None else f'{value:.2f}':>8}  {detail}" for name, value, detail in rows]
    lines.append(f"machine: {bench['machine']['device']}; TensorFlow {bench['machine']['tensorflow']}")
    return "\n".join(lines)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 1) for v in values]


if __name__ == "__main__":
    sys.exit(main())
