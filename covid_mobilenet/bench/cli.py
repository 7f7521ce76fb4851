"""The speed benchmark: every figure measured side by side in one run, on generated data of the real size.

    python -m covid_mobilenet.benchmark              # 2,000 images of 299x299 at image_size 224, about 15 min on 2 cores
    python -m covid_mobilenet.benchmark --full-size  # adds the seven-configuration fast sweep on 21,165 images
    python -m covid_mobilenet.benchmark --full-size-only  # only that sweep (about 20 min), into bench.json
    python -m covid_mobilenet.benchmark --duplicates # only the near-duplicate figures (a few minutes), into bench.json
    python -m covid_mobilenet.benchmark --unfamiliar # only the unfamiliar-image guard's figures on a run (--run), into bench.json

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
- ``peak_rss_gib``: this process's peak resident memory;
- with ``--full-size``: the seven-configuration ``run_all.py --fast`` sweep on 21,165 generated images, with an empty
  feature cache (``full_size.cold``) and again with ``--force`` on the cache it left (``full_size.warm``): wall
  time, the backbone's pass, the heads' training, and the largest peak memory of its notebook kernels
  (``--full-size-only``: that sweep alone, with this machine's reference speed beside it);
- ``duplicates`` (``--duplicates``, ``bench/duplicates.py``): recall on known near-copies and false matches among
  known distinct films, and the seconds to fingerprint and group the 21,165-image set, first and cached;
- ``demo`` and ``demo_fast`` (``--demo-timing``): the first ``run_all.py --demo`` (and ``--demo --fast``) as it timed
  itself (``results/demo/timing.json``), with this machine's reference speed measured beside it;
- ``unfamiliar`` (``--unfamiliar``, ``bench/unfamiliar.py``): both scores of the unfamiliar-image guard on one trained
  run (``--run``, chosen as for the int8 figures): AUROC between its test images and real films, and non-radiographs,
  the share flagged, fitting seconds and file size; predict's time per image with and without the guard;
- the raw figures and the machine (CPU, cores, GPUs, versions).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..common import figures
from ..common import machine as this_machine
from ..common.files import write_json
from ..common.paths import BENCH_FILE, PROJECT_ROOT
from .report import table

# TensorFlow and the measurements are imported once the arguments are read: --help answers at once, without its logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FULL_SIZE_IMAGES = 21_165  # the real release's size

DATA_DIR = PROJECT_ROOT / "data" / "bench"
DEMO_TIMING = PROJECT_ROOT / "results" / "demo" / "timing.json"
KEPT = ("duplicates", "unfamiliar", "demo", "demo_fast", "full_size")  # measured apart, by their own options: a full run keeps them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="generated 299x299 PNG images (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="image side the models see (default: %(default)s, the study's)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per training batch (default: %(default)s, the study's)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed epoch of the ceiling comparison (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each configuration in the fast-sweep comparison (default: %(default)s)")
    parser.add_argument("--full-size", action="store_true",
                        help=f"also run the seven-configuration --fast sweep on {FULL_SIZE_IMAGES:,} generated images, with "
                             "an empty feature cache and again with the cache it left: time and peak memory")
    parser.add_argument("--full-size-only", action="store_true",
                        help="measure only the full-size sweep (cold and warm) and add it to the output file, beside "
                             "this machine's reference speed")
    parser.add_argument("--duplicates", action="store_true", help="measure only the near-duplicate search (recall, false "
                        f"matches, time on {FULL_SIZE_IMAGES:,} images) and add it to the output file")
    parser.add_argument("--unfamiliar", action="store_true", help="measure only the unfamiliar-image guard's two scores "
                        "on a trained run (--run) and add them to the output file")
    parser.add_argument("--unfamiliar-images", type=Path, default=None, help="a folder of real films the run never saw, "
                        "for --unfamiliar (default: the tests' real films, tests/real_films)")
    parser.add_argument("--demo-timing", type=Path, nargs="?", const=DEMO_TIMING, metavar="TIMING_JSON",
                        help="record the first demo's time, as run_all.py --demo wrote it (default: %(const)s; "
                             "results/demo/fast/timing.json for --demo --fast), beside this machine's reference speed")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the generated sets go (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=BENCH_FILE, help="the JSON file the figures go to; the project's "
                        "own (the default, %(default)s) also rewrites the figures the README and docs quote")
    parser.add_argument("--run", type=Path, help="the trained run whose LiteRT exports are compared (default: the best "
                                                 "finished real run, else the best demo run)")
    args = parser.parse_args(argv)
    if args.duplicates:
        return measure_duplicates(args)
    if args.unfamiliar:
        return measure_guard(args)
    if args.demo_timing:
        return record_demo_timing(args)
    if args.full_size_only:
        return measure_full_size_alone(args)

    from ..data.scan import scan_dataset
    from .quantization import measure_quantization, quantization_run
    from .sweeps import measure_fast_sweep, measure_full_size
    from .throughput import measure_pipeline, measure_precision, measure_training

    started = time.perf_counter()
    root = ensure_data(args.data_dir / f"{args.images}", args.images)
    index = scan_dataset(root)
    print(f"{len(index.images)} images under {root}; image_size {args.image_size}, batch {args.batch_size}\n")

    bench = {"settings": {**vars(args), "data_dir": str(args.data_dir), "output": str(args.output),
                          "run": None if args.run is None else str(args.run)}}
    if args.output.is_file():  # the near-duplicate and guard figures are measured apart (--duplicates, --unfamiliar): kept
        bench.update({key: value for key, value in json.loads(args.output.read_text()).items()
                      if key in KEPT})
    phases = bench["phase_seconds"] = {}  # where the benchmark's own time goes

    def timed(phase: str, measure, *measure_args):
        started_phase = time.perf_counter()
        result = measure(*measure_args)
        phases[phase] = time.perf_counter() - started_phase
        return result

    bench["pipeline"] = timed("pipeline", measure_pipeline, root, index, args.image_size, args.batch_size)
    bench["training"], in_memory = timed("training", measure_training, index, args.image_size, args.batch_size, args.steps)
    bench["precision"] = timed("precision", measure_precision, bench["training"], in_memory, len(index.class_names), args.image_size)
    bench["fast_sweep"] = timed("fast_sweep", measure_fast_sweep, root, args.image_size, args.batch_size, args.epochs)
    bench["pipeline_speedup"] = bench["pipeline"]["project"]["later_epochs"] / bench["pipeline"]["baseline"]["later_epochs"]
    bench["training_vs_ceiling"] = bench["training"]["pipeline"] / bench["training"]["ceiling"]
    bench["fast_sweep_speedup"] = bench["fast_sweep"]["end_to_end_seconds"] / bench["fast_sweep"]["cached_seconds"]
    bench["quantization"] = timed("quantization", measure_quantization, args.run or quantization_run())
    if "int8_vs_float32" in bench["quantization"]:
        bench["int8_latency_ratio"] = bench["quantization"]["int8_vs_float32"]["latency_ratio"]
        bench["int8_accuracy_difference"] = bench["quantization"]["int8_vs_float32"]["accuracy_difference_vs_float32"]
    bench["peak_rss_gib"] = this_machine.peak_rss_gib()
    bench["machine"] = machine()
    bench["seconds"] = time.perf_counter() - started
    write_json(args.output, bench)  # before the long memory check, so that nothing measured is lost
    if args.full_size:
        full_root = timed("full_size_data", ensure_data, args.data_dir / "full", FULL_SIZE_IMAGES)
        bench["full_size"] = timed("full_size", measure_full_size, full_root, args.image_size)
        bench["seconds"] = time.perf_counter() - started
    print("\n" + table(bench))
    print("time: " + ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in phases.items())
          + f"; total {bench['seconds']:.0f} s\n")
    publish(bench, args.output)
    return 0


def measure_duplicates(args) -> int:
    """``--duplicates``: the near-duplicate figures, added to the output file beside the others."""
    from .duplicates import grouping_time, known_pairs

    bench = json.loads(args.output.read_text()) if args.output.is_file() else {}
    figures = known_pairs()
    print(f"near-duplicates: recall {figures['recall']} ({100 * figures['recall_all']:.1f}% of {figures['copies']} copies); "
          f"{figures['false_matches']} false matches in {figures['distinct_pairs']:,} pairs of different films")
    figures["full_size"] = grouping_time(ensure_data(args.data_dir / "full", FULL_SIZE_IMAGES))
    bench["duplicates"] = {**figures, "machine": machine()}
    publish(bench, args.output)
    return 0


def measure_guard(args) -> int:
    """``--unfamiliar``: the unfamiliar-image guard's figures, added to the output file beside the others."""
    from ..common.readme import replace_readme_section
    from .quantization import quantization_run
    from .unfamiliar import GUARD_PAGE, PAGE_MARKERS, REAL_FILMS, measure_unfamiliar, page_block
    from .unfamiliar import table as guard_table

    bench = json.loads(args.output.read_text()) if args.output.is_file() else {}
    figures = measure_unfamiliar(args.run or quantization_run(), args.unfamiliar_images or REAL_FILMS)
    print(guard_table(figures))
    if "skipped" in figures:
        return 1
    bench["unfamiliar"] = {**figures, "machine": machine()}
    publish(bench, args.output)
    if args.output.resolve() == BENCH_FILE.resolve() and replace_readme_section(
            GUARD_PAGE, page_block(bench["unfamiliar"]), PAGE_MARKERS):
        print(f"updated the guard's table in {GUARD_PAGE}")
    return 0


def publish(bench: dict, output: Path) -> None:
    """bench.json written; when it is the project's own, every figure the README and the docs quote follows it."""
    write_json(output, bench)
    print(f"written to {output}")
    if output.resolve() == BENCH_FILE.resolve():
        for page in figures.refresh_all(bench):
            print(f"updated the quoted figures in {page}")


def record_demo_timing(args) -> int:
    """``--demo-timing``: the first demo's own timing (``run_all.py --demo`` writes it) into the output file, beside
    this machine's reference speed (the same measurement as ``training.ceiling``), so that its seconds can be compared
    across machines."""
    source = args.demo_timing
    try:
        timing = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        print(f"benchmark: cannot read the demo's timing {source} ({exc}); run `python run_all.py --demo` first, "
              "from a fresh clone: it writes the file at its end.", file=sys.stderr)
        return 2
    problem = demo_timing_problem(timing)
    if problem:
        print(f"benchmark: {source}: {problem}", file=sys.stderr)
        return 2
    speed = reference_speed(args)
    bench = json.loads(args.output.read_text()) if args.output.is_file() else {}
    key = "demo_fast" if timing["fast"] else "demo"
    bench[key] = {**timing, "reference_speed": speed, "machine": machine()}
    print(f"{key}: {timing['total_seconds']:.0f} s at {timing['git_commit'][:7]}, on a machine training "
          f"{speed:.1f} images/s (the benchmark's reference)")
    publish(bench, args.output)
    return 0


def measure_full_size_alone(args) -> int:
    """``--full-size-only``: the full-size sweep, cold and warm, added to the output file beside this machine's
    reference speed (measured after it, so the sweep starts on an idle machine)."""
    from .sweeps import measure_full_size

    full = measure_full_size(ensure_data(args.data_dir / "full", FULL_SIZE_IMAGES), args.image_size)
    full["reference_speed"] = reference_speed(args)
    full["machine"] = machine()
    bench = json.loads(args.output.read_text()) if args.output.is_file() else {}
    bench["full_size"] = full
    print(f"full size: cold {full['cold']['wall_seconds'] / 60:.1f} min, warm {full['warm']['wall_seconds'] / 60:.1f} "
          f"min, on a machine training {full['reference_speed']:.1f} images/s (the benchmark's reference)")
    publish(bench, args.output)
    return 0


def reference_speed(args) -> float:
    """This machine's training images/s on the benchmark's set (``training.ceiling``): what makes seconds measured on
    two machines comparable."""
    from ..data.scan import scan_dataset
    from .throughput import measure_training

    root = ensure_data(args.data_dir / f"{args.images}", args.images)
    training, _ = measure_training(scan_dataset(root), args.image_size, args.batch_size, args.steps)
    return training["ceiling"]


def demo_timing_problem(timing: dict) -> str | None:
    """Why a sweep's timing is not a first demo's (None when it is): only a demo that ran every configuration and
    pretrained its backbone (with --fast or without) measures what a new user waits for from a fresh clone."""
    if not timing.get("demo"):
        return "not a demo sweep's timing; the figure is the demo's (python run_all.py --demo)."
    if timing["runs"] < timing["configurations"]:
        return (f"only {timing['runs']} of its {timing['configurations']} runs ran (the others were finished already); "
                "time the first demo from a fresh clone.")
    if not timing["backbone_pretrained"]:
        return "the demo backbone was cached already; time the first demo from a fresh clone."
    return None


def ensure_data(root: Path, images: int) -> Path:
    """A generated set of ``images`` 299x299 PNGs in the real layout (masks included), reused when complete."""
    from ..data.demo import demo_dataset_complete, generate_demo_dataset

    root = root / "COVID-19_Radiography_Dataset"
    if not demo_dataset_complete(root, images):
        print(f"Generating {images} images in {root}")
        generate_demo_dataset(root, images=images, seed=0)
    return root


def machine() -> dict:
    """The machine the figures were measured on: CPU, cores, GPUs, versions."""
    import tensorflow as tf

    env = this_machine.environment()
    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in tf.config.list_physical_devices("GPU")]
    return {"cpu": this_machine.cpu_name(), "cpu_count": os.cpu_count(), "gpus": gpus,
            **{key: env[key] for key in ("device", "python", "tensorflow", "keras", "numpy", "platform", "git_commit")}}
