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
  python run_all.py --demo                      synthetic data, offline, on a CPU (its time: docs/demo.md)
  python run_all.py                             the real data set, all seven configurations
  python run_all.py --fast                      frozen backbone, cached features: the seven in minutes on a CPU
  python run_all.py --only mn_resultset1,mn_resultset4 --epochs 5
  python run_all.py --set batch_size=64 --jobs 2
  python run_all.py --seeds 3                   every configuration with three training seeds, compared image by image
  python run_all.py --demo --regions            the baseline trained on full images, lungs only and no lungs, each
                                                tested on all three: does the model need the lungs?
  python run_all.py --demo --export             then the best run as LiteRT float32/float16/int8, measured, with a model card
  python run_all.py --demo --holdout-sources    the baseline trained without each (class, source) in turn, tested on it:
                                                what does the model lose on a collection it never saw?
  python run_all.py --external path/to/hospital_b=hospital-b
                                                then every finished run evaluated on another collection, and the
                                                summary's internal-vs-external table (--demo --external: a generated one)
  python run_all.py --backend slurm --partition gpu --time 90 --setup "module load cuda"
                                                the pending runs as one Slurm job array (docs/cluster.md)
  python run_all.py --backend slurm --dry-run   the batch script that would be submitted, and the runs in it

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
    parser.add_argument("--holdout-sources", nargs="*", metavar="CLASS",
                        help="train the baseline once per (class, source) where the class has another source, with that "
                             "source's images of the class held out of training and tested on (default: every class)")
    parser.add_argument("--export", action="store_true",
                        help="after the sweep, export the best finished run (highest test accuracy) to LiteRT float32, "
                             "float16 and int8, measured on its test split, with its model card (python -m covid_mobilenet.export)")
    parser.add_argument("--external", action="append", nargs="?", const="", metavar="DIR[=NAME]",
                        help="after the sweep, evaluate every finished run on another collection (one folder per class, "
                             "as the data set's; python -m covid_mobilenet.evaluate), checked before anything trains; "
                             "repeatable. With --demo and no folder: a generated second hospital")
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
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs that would run (and with --backend slurm show the batch script); run nothing")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing: build the summary from the runs that have finished (after --no-wait, say)")
    cluster = parser.add_argument_group(
        "Slurm", "with --backend slurm the pending runs go to Slurm as one job array (submitit), each task one "
                 "notebook on a shared filesystem; run_all.py waits and shows progress. Defaults: 1 GPU, 8 CPUs, 32 GB, "
                 "120 min per task (--demo: no GPU, 2 CPUs, 4 GB, 30 min)")
    cluster.add_argument("--backend", choices=["local", "slurm"], default="local",
                         help="where the runs run: this machine (default) or a Slurm cluster")
    cluster.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    cluster.add_argument("--account", help="Slurm account to charge (default: yours)")
    cluster.add_argument("--time", type=_minutes, metavar="MINUTES",
                         help="time limit per task, in minutes or H:MM:SS; a task that reaches it is requeued and resumes "
                              "from its last finished epoch (up to 3 times)")
    cluster.add_argument("--gpus", type=int, metavar="N", help="GPUs per task")
    cluster.add_argument("--cpus", type=int, metavar="N", help="CPUs per task")
    cluster.add_argument("--mem", type=int, metavar="GB", help="memory per task in GB")
    cluster.add_argument("--max-at-once", type=int, metavar="N", help="tasks of the array running at once (default: no limit)")
    cluster.add_argument("--setup", action="append", default=[], metavar="LINE",
                         help="a shell line each task runs first, e.g. --setup 'module load cuda' (may be repeated)")
    cluster.add_argument("--no-wait", action="store_true",
                         help="return once submitted, printing the job id and the command that builds the summary later")
    cluster.add_argument("--poll", type=float, default=30, metavar="SECONDS",
                         help="how often to ask Slurm (sacct) for the tasks' states while waiting (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2 if args.demo or args.fast else 1
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.seeds is not None and args.seed_values:
        parser.error("give --seeds or --seed-values, not both")
    if args.regions and args.only:
        parser.error("--regions trains the baseline of the configurations file (its 'baseline'); leave out --only")
    if args.holdout_sources is not None and (args.only or args.regions):
        parser.error("--holdout-sources trains the baseline of the configurations file; leave out --only and --regions")
    if args.backend == "local" and (args.no_wait or args.setup or any(
            getattr(args, name) is not None for name in ("partition", "account", "time", "gpus", "cpus", "mem", "max_at_once"))):
        parser.error("the Slurm options (--partition, --time, --no-wait, ...) need --backend slurm")
    for name in ("gpus", "cpus", "mem", "max_at_once", "time"):
        value, least = getattr(args, name), 0 if name == "gpus" else 1
        if value is not None and value < least:
            parser.error(f"--{name.replace('_', '-')} {value}: must be at least {least}")
    for name, values in (("partition", [args.partition]), ("account", [args.account]), ("setup", args.setup)):
        for value in values:
            if value is not None and any(ord(character) < 32 or ord(character) == 127 for character in value):
                parser.error(f"--{name} {value!r}: holds a control character (a newline would add lines to the batch "
                             "script); give it on one line, without control characters")
    if args.time is not None and args.time < 5:
        parser.error(f"--time {args.time}: give at least 5 minutes; a task is warned 2 minutes before its limit "
                     "to be requeued, and a shorter limit would requeue it before it trains")
    return args


def _minutes(text: str) -> int:
    """--time: minutes (90) or H:MM:SS (1:30:00) or H:MM (1:30), as whole minutes, rounded up."""
    parts = text.split(":")
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        numbers = []
    if not numbers or len(numbers) > 3 or min(numbers) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected minutes (90) or H:MM:SS (1:30:00)")
    if len(numbers) == 1:
        return numbers[0]
    seconds = numbers[0] * 3600 + numbers[1] * 60 + (numbers[2] if len(numbers) == 3 else 0)
    return -(-seconds // 60)


def slurm_options(args: argparse.Namespace):
    """The tasks' requests: the command line's, else the defaults for real runs or for the demo."""
    from covid_mobilenet.sweep.slurm import SlurmOptions

    defaults = dict(time_min=30, gpus=0, cpus=2, mem_gb=4) if args.demo else dict(time_min=120, gpus=1, cpus=8, mem_gb=32)
    given = dict(time_min=args.time, gpus=args.gpus, cpus=args.cpus, mem_gb=args.mem)
    return SlurmOptions(
        partition=args.partition, account=args.account, max_at_once=args.max_at_once, setup=tuple(args.setup),
        **{key: defaults[key] if value is None else value for key, value in given.items()},
    )


def cli_overrides(args: argparse.Namespace) -> dict:
    from covid_mobilenet.sweep.plan import parse_assignment

    overrides = dict(parse_assignment(item) for item in args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    phases = {}  # where the time goes, said at the end: the demo backbone's pretraining, the runs, ...
    # Imported after parsing, so that --help answers at once.
    from covid_mobilenet.common.config import ConfigError, load_config
    from covid_mobilenet.common.paths import resolve_path
    from covid_mobilenet.data.layout import DatasetError
    from covid_mobilenet.model.weights import WeightsError
    from covid_mobilenet.run.params import ParameterError, notebook_defaults
    from covid_mobilenet.sweep import external, plan, preflight
    from covid_mobilenet.sweep.outcomes import Outcome, metrics_accuracy
    from covid_mobilenet.sweep.slurm import still_queued

    try:
        config_file = resolve_path(args.config)
        config = load_config(config_file)
        mode = plan.make_mode(config, demo=args.demo, fast=args.fast, results_dir=args.results_dir, graph_dir=args.graph_dir, data_dir=args.data_dir)
        seeds = plan.training_seeds(args.seeds, args.seed_values, notebook_defaults()["seed"])
        holdout_plan = None
        if args.regions:
            jobs = plan.plan_regions(config, mode, cli_overrides(args), seeds)
        elif args.holdout_sources is not None:
            if mode.demo and not args.dry_run:
                preflight.prepare_demo_data(mode, config)  # its sources are needed to plan
            jobs, holdout_plan = plan.plan_holdouts(config, mode, cli_overrides(args), seeds, args.holdout_sources)
            if not jobs:
                raise preflight.SweepError("--holdout-sources: no class has two sources: " + "; ".join(
                    f"{u['class']}: {u['reason']}" for u in holdout_plan["untestable"]))
        else:
            jobs = plan.plan(config, plan.select(config, args.only), mode, cli_overrides(args), seeds)
        externals = external.parse_external(args.external, mode)
        if mode.demo and not (args.dry_run or args.summary_only):
            preflight.prepare_demo_data(mode, config)
        if not args.dry_run:
            external.check_external(externals, mode)  # before anything trains (the demo's copies the demo set)
        if not (args.dry_run or args.summary_only):
            jobs = preflight.preflight(jobs, mode, holdout_plan=holdout_plan)
            if holdout_plan is not None and not jobs:
                raise preflight.SweepError("--holdout-sources: no held-out source leaves its class anything to train on: "
                                           + "; ".join(f"{u['class']} {u['sources']}: {u['reason']}" for u in holdout_plan["untestable"]))
            if mode.demo:
                pretraining = time.perf_counter()
                if preflight.prepare_demo_backbone(mode, jobs):
                    phases["demo backbone"] = time.perf_counter() - pretraining
    except (ParameterError, ConfigError, DatasetError, WeightsError, preflight.SweepError) as exc:  # ExternalError too
        print(f"run_all.py: {exc}", file=sys.stderr)
        return 2

    results_dir = resolve_path(mode.results_dir)
    if holdout_plan is not None and not args.dry_run:
        from covid_mobilenet.common.files import write_json
        from covid_mobilenet.common.run_layout import HOLDOUT_PLAN_FILE

        write_json(results_dir / HOLDOUT_PLAN_FILE, holdout_plan)  # the summary lists the untestable classes from it
    kind = "input regions" if args.regions else "held-out sources" if holdout_plan is not None else ""
    print(f"{mode.label} sweep{' of the ' + kind if kind else ''}: {len(jobs)} runs "
          f"({len(jobs) // len(seeds)} {kind or 'configurations'} x {len(seeds)} "
          f"seed{'s' if len(seeds) > 1 else ''}), results in {results_dir}")
    outcomes, to_run = [], []
    queued = still_queued(jobs, results_dir)  # by an earlier --backend slurm; none without Slurm
    for job in jobs:
        finished, reason = preflight.previous_run(job)
        if job.name in queued:
            outcomes.append(Outcome(job.name, "queued", detail=f"still in Slurm as job {queued[job.name]}; not run again"))
        elif finished and not args.force:
            outcomes.append(Outcome(job.name, "skipped", detail=reason, test_accuracy=metrics_accuracy(job)))
        elif args.summary_only:
            outcomes.append(Outcome(job.name, "missing", detail=reason))
        else:
            print(f"{job.name}: {'forced' if args.force else reason}")
            if not args.dry_run:
                preflight.set_aside_previous_results(job, args.force)
            to_run.append(job)

    if args.dry_run:
        return dry_run(args, to_run, results_dir, mode)
    if args.summary_only:
        if not any(outcome.status == "skipped" for outcome in outcomes):
            print(f"run_all.py: --summary-only: no run has finished in {results_dir} yet; run the sweep first "
                  f"(the same command without --summary-only), or wait for its Slurm tasks.", file=sys.stderr)
            return 1
        return finish(args, mode, config_file, seeds, jobs, outcomes, started, externals, partial_ok=False)
    early = {}  # the data set's audit, when it ran in the slot the last local runs left free
    if args.backend == "slurm":
        ran = run_in_slurm(args, to_run, results_dir, mode, argv)
    else:
        running = time.perf_counter()
        ran = run_locally(args, to_run, len(jobs), len(outcomes), beside_last=lambda: early.update(audit_early(mode, jobs)))
        phases[RUNS_PHASE] = time.perf_counter() - running
    if isinstance(ran, int):  # interrupted, or submitted without waiting
        return ran
    return finish(args, mode, config_file, seeds, jobs, outcomes + ran, started, externals, phases=phases,
                  audited=early.get("audit"))


def progress_bar(total: int, done: int):
    from tqdm import tqdm

    progress = tqdm(total=total, initial=done, desc="runs", unit="run", position=0)

    def report(outcome) -> None:
        progress.update()
        note = f"test accuracy {outcome.test_accuracy:.4f}" if outcome.test_accuracy is not None else outcome.detail
        tqdm.write(f"{outcome.name}: {outcome.status} in {outcome.seconds:.0f} s; {note}")

    return progress, report


RUNS_PHASE = "runs"  # the local pool's time, named with its count once the sweep is done
AUDIT_BESIDE = "audit (beside the last runs)"  # the audit in a slot the last runs left free: part of the runs' time


def run_locally(args, to_run, total: int, done: int, beside_last=None):
    from covid_mobilenet.sweep.local import run_jobs

    progress, report = progress_bar(total, done)
    try:
        return run_jobs(to_run, kernel=args.kernel, parallel=args.jobs, on_done=report, cell_progress=sys.stderr.isatty(),
                        beside_last=beside_last)
    except KeyboardInterrupt:
        print("\nInterrupted. Finished experiments are kept; run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        progress.close()


def run_in_slurm(args, to_run, results_dir, mode, argv):
    """Submit the pending runs as one array; wait for it with progress, or return at once with --no-wait."""
    import shlex

    from covid_mobilenet.sweep import slurm

    if not to_run:
        return []
    try:
        tasks = slurm.submit(to_run, results_dir, slurm_options(args), args.kernel, mode.name)
    except slurm.SlurmError as exc:
        print(f"run_all.py: {exc}", file=sys.stderr)
        return 2
    array = slurm.array_id(tasks)
    given = [arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--no-wait"]
    later = shlex.join(["python", "run_all.py", *given, "--summary-only"])
    print(f"Submitted Slurm job {array}: {len(tasks)} task{'s' if len(tasks) > 1 else ''}; "
          f"logs in {slurm.slurm_folder(results_dir)}/{array}_<task>/")
    how = (f"  watch:   squeue -j {array}   (or sacct -j {array})\n  cancel:  scancel {array}\n"
           f"  resume:  the same command again submits only the runs without results\n  summary: {later}")
    if args.no_wait:
        print(f"Not waiting (--no-wait). When the tasks have finished, build the summary:\n{how}")
        return 0
    progress, report = progress_bar(len(to_run), 0)
    try:
        return slurm.wait(tasks, to_run, on_done=report, poll_s=args.poll,
                          on_poll=lambda counts: progress.set_postfix_str(
                              ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))))
    except KeyboardInterrupt:
        print(f"\nStopped waiting. The tasks keep running in Slurm (job {array}); finished runs are kept.\n{how}",
              file=sys.stderr)
        return 130
    finally:
        progress.close()


def dry_run(args, to_run, results_dir, mode) -> int:
    """--dry-run: what would run, with --backend slurm the exact batch script, and what would stop it (the data, the
    weights; status 2); nothing is changed."""
    print(f"--dry-run: {len(to_run)} run{'s' if len(to_run) != 1 else ''} would run"
          f"{' as one Slurm job array' if args.backend == 'slurm' and len(to_run) > 1 else ''}: "
          f"{', '.join(job.name for job in to_run) or 'none'}")
    if args.backend == "slurm" and to_run:
        from covid_mobilenet.sweep import slurm

        print("\nThe batch script (task i runs the i-th run above):\n")
        print(slurm.batch_script(to_run, results_dir, slurm_options(args), mode.name))
    from covid_mobilenet.sweep.preflight import dry_run_problems

    problems = dry_run_problems(to_run, mode)
    if problems:
        print(f"run_all.py: --dry-run: {'these runs' if len(to_run) > 1 else 'this run'} could not start:\n"
              + "\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
        return 2
    return 0


def audit_early(mode, jobs) -> dict:
    """The data set's audit beside the last runs, when the sweep's first run (the one it is made from) has finished."""
    from covid_mobilenet.common.run_layout import METRICS_FILE
    from covid_mobilenet.sweep.notebooks import audit_data

    return {"audit": audit_data(mode, jobs)} if (jobs[0].run_dir / METRICS_FILE).is_file() else {}


def finish(args, mode, config_file, seeds, jobs, outcomes, started, externals=(), partial_ok=True, phases=None,
           audited=None) -> int:
    """The data set's audit (unless ``audited`` beside the last runs), the evaluations on other collections, the
    summary over what has finished, the closing table, the export; 1 when anything failed."""
    from covid_mobilenet.common.paths import resolve_path
    from covid_mobilenet.sweep.external import evaluate_external
    from covid_mobilenet.sweep.notebooks import audit_data, export_best, run_summary
    from covid_mobilenet.sweep.outcomes import closing_table, write_timing

    order = {job.name: i for i, job in enumerate(jobs)}
    outcomes.sort(key=lambda outcome: order[outcome.name])
    early_audit = audited is not None
    audited = audited or audit_data(mode, jobs)  # the data set's audit, from a finished run, before the summary reads it
    evaluated = evaluate_external(list(externals), [job.run_dir for job in jobs])  # before the summary reads them
    summary = run_summary(mode, config_file, args.kernel, seeds)
    print()
    print(closing_table(outcomes + [audited, *evaluated, summary]))
    total = time.perf_counter() - started
    phases = phases or {}
    ran = f"{sum(outcome.status != 'skipped' for outcome in outcomes)} runs ({args.jobs} at once)"
    spent = {(ran if name == RUNS_PHASE else name): seconds for name, seconds in phases.items()}
    spent.update({outcome.name: outcome.seconds for outcome in [audited, *evaluated, summary]})
    beside = {AUDIT_BESIDE: spent.pop(audited.name)} if early_audit else {}  # within the runs' time, not after it
    write_timing(mode, total, {**spent, **beside}, phases.get(RUNS_PHASE), outcomes, len(jobs), "demo backbone" in phases)
    print(f"\ntotal {total:.0f} s: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in {**spent, **beside}.items())
          + f", the rest (checks, start-up) {max(total - sum(spent.values()), 0):.0f} s; summary: "
            f"{resolve_path(mode.results_dir) / 'summary.md'}")
    exported = []
    if args.export:
        exported = [export_best(mode)]
        print(f"\nexport {exported[0].status} in {exported[0].seconds:.0f} s: {exported[0].detail}")
    failed = [outcome for outcome in outcomes + [audited, *evaluated, summary] + exported if outcome.status == "failed"]
    if failed:
        print(f"\n{len(failed)} failed; the executed notebooks show where:", file=sys.stderr)
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.executed_notebook or ''}\n    {outcome.detail}", file=sys.stderr)
        return 1
    unfinished = [outcome for outcome in outcomes if outcome.status in ("missing", "queued")]
    if unfinished and not partial_ok:
        print(f"\nThe summary leaves out {len(unfinished)} run{'s' if len(unfinished) > 1 else ''} without results "
              f"({', '.join(outcome.name for outcome in unfinished)}); run the sweep's command to finish them.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
