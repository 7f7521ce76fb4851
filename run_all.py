#!/usr/bin/env python3
"""Regenerate every experiment of the study, then the summary table, graphs and README section.

Each experiment is notebooks/mobilenet_finetune.ipynb run by papermill with that experiment's
parameters (experiments.json). Finished experiments whose parameters have not changed are
skipped; an interrupted one resumes from its last finished epoch; a failed one does not stop
the others.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# TensorFlow's C++ start-up messages, here and in every notebook kernel (they inherit the environment).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXAMPLES = """examples:
  python run_all.py --demo                      synthetic data, offline, a few minutes on a laptop
  python run_all.py                             the real data set, all seven configurations
  python run_all.py --fast                      frozen backbone, cached features: the seven in minutes on a CPU
  python run_all.py --only mn_resultset1,mn_resultset4 --epochs 5
  python run_all.py --set batch_size=64 --jobs 2
  python run_all.py --seeds 3                   every configuration with three training seeds, compared image by image
  python run_all.py --demo --regions            the baseline trained on full images, lungs only and no lungs, each
                                                tested on all three: does the model need the lungs?
  python run_all.py --demo --export             then the best run as LiteRT float32/float16/int8, measured, with a model card

outputs: results/<experiment>/seed-<seed>/ (executed notebook, metrics.json, predictions.csv, history.csv,
shortcuts.csv, gradcam.png, TensorBoard logs), Graph/<n>-seed-<seed>.png, results/summary.csv, runs.csv and summary.md, Graph/The_result_of_MobileNet_fine_tuning.png, and the
README's results section. --demo writes to results/demo/ and Graph/demo/ and never the README;
--fast writes to results/fast/ and Graph/fast/ and the README's frozen-backbone section."""


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas, e.g. 1,2,3") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_all.py", description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--demo", action="store_true",
                        help="run on the synthetic demo set (generated when absent) with the demo overrides of experiments.json")
    parser.add_argument("--fast", action="store_true",
                        help="the frozen-backbone experiment: MobileNet's features computed once per split and cached, "
                             "each configuration trains its head on them (minutes on a CPU); results in results/fast/")
    parser.add_argument("--only", action="append", metavar="NAMES",
                        help="comma-separated experiment names to run (default: all); may be repeated")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="train every configuration with N training seeds (the notebook's seed, then the next ones); "
                             "the split stays the same, so the seeds of all configurations are tested on the same images")
    parser.add_argument("--seed-values", metavar="S1,S2,...", type=_seed_list,
                        help="the training seeds to use, e.g. --seed-values 1,2,3 (instead of --seeds)")
    parser.add_argument("--regions", action="store_true",
                        help="instead of the seven configurations, train the baseline on each input region (full images, "
                             "lungs only, no lungs: the data set's lung masks) and test each on every region; results in "
                             "<experiment>-lungs/ and <experiment>-no_lungs/ beside the sweep's, and in the summary")
    parser.add_argument("--export", action="store_true",
                        help="after the sweep, export the best finished run (highest test accuracy) to LiteRT float32, "
                             "float16 and int8, measured on its test split, with its model card (python -m covid_mobilenet.export)")
    parser.add_argument("--epochs", type=int, help="epochs for every experiment (default: the notebook's, or the demo's)")
    parser.add_argument("--image-size", type=int, help="image side in pixels for every experiment")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any notebook parameter for every experiment, e.g. --set batch_size=64 --set weights=None")
    parser.add_argument("--data-dir", help="the data set folder (default: data/COVID-19_Radiography_Dataset, else Kaggle; "
                                           "with --demo: data/demo/COVID-19_Radiography_Dataset)")
    parser.add_argument("--force", action="store_true", help="rerun experiments even when finished with the same parameters")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="experiments run at once; with GPUs, each gets its own through CUDA_VISIBLE_DEVICES "
                             "(default: 1; with --demo or --fast 2, which overlaps one notebook's start-up with another's training)")
    parser.add_argument("--config", default="experiments.json", help="the configurations file (default: %(default)s)")
    parser.add_argument("--results-dir", help="where experiment folders go (default: results, or results/demo)")
    parser.add_argument("--graph-dir", help="where graphs go (default: Graph, or Graph/demo)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel that runs the notebooks (default: python3)")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2 if args.demo or args.fast else 1
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.seeds is not None and args.seed_values:
        parser.error("give --seeds or --seed-values, not both")
    if args.regions and args.only:
        parser.error("--regions trains the baseline of the configurations file (its 'baseline'); leave out --only")
    return args


def cli_overrides(args: argparse.Namespace) -> dict:
    from covid_mobilenet.sweep import parse_assignment

    overrides = dict(parse_assignment(item) for item in args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    # Imported after parsing, so that --help answers at once.
    from tqdm import tqdm

    from covid_mobilenet import sweep
    from covid_mobilenet.data import DatasetError
    from covid_mobilenet.weights import WeightsError
    from covid_mobilenet.params import ParameterError, notebook_defaults, resolve_path
    from covid_mobilenet.summary import ConfigError, load_config

    try:
        config_file = resolve_path(args.config)
        config = load_config(config_file)
        mode = sweep.make_mode(config, demo=args.demo, fast=args.fast, results_dir=args.results_dir, graph_dir=args.graph_dir, data_dir=args.data_dir)
        seeds = sweep.training_seeds(args.seeds, args.seed_values, notebook_defaults()["seed"])
        if args.regions:
            jobs = sweep.plan_regions(config, mode, cli_overrides(args), seeds)
        else:
            jobs = sweep.plan(config, sweep.select(config, args.only), mode, cli_overrides(args), seeds)
        if mode.demo:
            sweep.prepare_demo_data(mode, config, jobs)
        sweep.preflight(jobs, mode)
    except (ParameterError, ConfigError, DatasetError, WeightsError, sweep.SweepError) as exc:
        print(f"run_all.py: {exc}", file=sys.stderr)
        return 2

    print(f"{mode.label} sweep{' of the input regions' if args.regions else ''}: {len(jobs)} runs "
          f"({len(jobs) // len(seeds)} {'regions' if args.regions else 'configurations'} x {len(seeds)} "
          f"seed{'s' if len(seeds) > 1 else ''}), results in {resolve_path(mode.results_dir)}")
    outcomes, to_run = [], []
    for job in jobs:
        finished, reason = sweep.previous_run(job)
        if finished and not args.force:
            outcomes.append(sweep.Outcome(job.name, "skipped", detail=reason, test_accuracy=sweep.metrics_accuracy(job)))
        else:
            print(f"{job.name}: {'forced' if args.force else reason}")
            sweep.set_aside_previous_results(job, args.force)
            to_run.append(job)

    progress = tqdm(total=len(jobs), initial=len(outcomes), desc="runs", unit="run", position=0)

    def report(outcome: sweep.Outcome) -> None:
        progress.update()
        note = f"test accuracy {outcome.test_accuracy:.4f}" if outcome.test_accuracy is not None else outcome.detail
        tqdm.write(f"{outcome.name}: {outcome.status} in {outcome.seconds:.0f} s; {note}")

    try:
        outcomes += sweep.run_jobs(to_run, kernel=args.kernel, parallel=args.jobs, on_done=report, cell_progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        progress.close()
        print("\nInterrupted. Finished experiments are kept; run the same command again to resume.", file=sys.stderr)
        return 130
    progress.close()

    order = {job.name: i for i, job in enumerate(jobs)}
    outcomes.sort(key=lambda outcome: order[outcome.name])
    summary = sweep.run_summary(mode, config_file, args.kernel, seeds)
    print()
    print(sweep.closing_table(outcomes + [summary]))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; summary: {resolve_path(mode.results_dir) / 'summary.md'}")
    exported = []
    if args.export:
        exported = [sweep.export_best(mode)]
        print(f"\nexport {exported[0].status} in {exported[0].seconds:.0f} s: {exported[0].detail}")
    failed = [outcome for outcome in outcomes + [summary] + exported if outcome.status == "failed"]
    if failed:
        print(f"\n{len(failed)} failed; the executed notebooks show where:", file=sys.stderr)
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.executed_notebook or ''}\n    {outcome.detail}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
