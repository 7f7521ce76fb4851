"""Planning a sweep: every run's full, checked parameters.

Each run is the experiment notebook with its own parameters: the notebook's defaults, then the
configuration's settings from experiments.json, then the mode's overrides (demo, fast), then the
command line's; one run per configuration and training seed. A bad value anywhere stops the sweep
before it starts.
"""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..common.config import baseline_of, experiment_parameters
from ..common.paths import PROJECT_ROOT
from ..common.paths import resolve_path
from ..common.run_layout import holdout_experiment, region_experiment, run_dir, seed_folder
from ..data.demo import DEFAULT_DEMO_DIR
from ..data.masks import REGIONS
from ..model import demo_backbone
from ..run.params import ParameterError, check_parameters, notebook_defaults

SET_BY_THE_SWEEP = {"experiment": "--only", "results_dir": "--results-dir", "graph_dir": "--graph-dir", "fast": "--fast",
                    "seed": "--seeds or --seed-values", "input_region": "--regions", "holdout_source": "--holdout-sources"}
FAST_OVERRIDES = {"train_base": False, "fast": True}  # --fast: frozen backbone, head trained on cached features


@dataclass(frozen=True)
class Mode:
    """Where a kind of sweep reads and writes, and what it changes in every configuration."""

    name: str  # "real" or "demo"
    results_dir: str
    graph_dir: str
    data_dir: str | None
    overrides: dict = field(default_factory=dict)
    fast: bool = False  # the frozen-backbone experiment (run_all.py --fast), reported on its own
    learning_rate_factor: float = 1.0  # the demo's one factor on every configuration's learning rate
    backbone: dict | None = None  # the demo: pretraining settings of its stand-in for ImageNet weights

    @property
    def demo(self) -> bool:
        return self.name == "demo"

    @property
    def label(self) -> str:
        return self.name + (" frozen-backbone (fast)" if self.fast else "")


def make_mode(config: dict, *, demo: bool, fast: bool = False, results_dir=None, graph_dir=None, data_dir=None) -> Mode:
    """The real sweep writes results/ and Graph/; the demo sweep results/demo/ and Graph/demo/.

    The fast sweep is another experiment (a frozen backbone, not the study's fine-tuning): its
    results go to a ``fast/`` folder inside those, so they are never mixed with the study's.
    """
    def given(path):  # a path typed on the command line is relative to where it was typed
        return None if path is None else str(Path(path).expanduser().resolve())

    fast_folder = "/fast" if fast else ""
    overrides = dict(FAST_OVERRIDES) if fast else {}
    if demo:
        demo_config = config.get("demo", {})
        fast_overrides = demo_config.get("fast_overrides", {}) if fast else {}
        return Mode(
            "demo",
            given(results_dir) or f"results/demo{fast_folder}",
            given(graph_dir) or f"Graph/demo{fast_folder}",
            given(data_dir) or os.path.relpath(DEFAULT_DEMO_DIR, PROJECT_ROOT),
            {**demo_config.get("overrides", {}), **fast_overrides, **overrides},
            fast,
            demo_config.get("learning_rate_factor", 1.0),
            demo_config.get("backbone"),
        )
    return Mode(
        "real", given(results_dir) or f"results{fast_folder}", given(graph_dir) or f"Graph{fast_folder}",
        given(data_dir), overrides, fast,
    )


@dataclass
class Job:
    """One run: a configuration trained with one seed, in ``<results_dir>/<experiment>/seed-<seed>/``."""

    params: dict

    @property
    def experiment(self) -> str:
        return self.params["experiment"]

    @property
    def name(self) -> str:
        return f"{self.experiment}/{seed_folder(self.params['seed'])}"

    @property
    def run_dir(self) -> Path:
        return run_dir(self.params)

    @property
    def executed_notebook(self) -> Path:
        return self.run_dir / f"{self.experiment}.ipynb"


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from --set; VALUE is read as a Python literal when it is one (1e-4, None, True)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ParameterError(f"--set {text!r}: expected KEY=VALUE, for example --set batch_size=64")
    if key in SET_BY_THE_SWEEP:
        raise ParameterError(f"--set {key}=...: {key} is set by the sweep; use {SET_BY_THE_SWEEP[key]} instead")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


def select(config: dict, only: list[str] | None) -> list[str]:
    names = list(config["experiments"])
    if not only:
        return names
    wanted = [name.strip() for item in only for name in item.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ParameterError(f"--only: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return [name for name in names if name in wanted]


def training_seeds(count: int | None, values: list[int] | None, default: int) -> list[int]:
    """The sweep's training seeds: ``values`` as given, else ``count`` seeds from the notebook's ``seed`` on."""
    if values:
        if len(set(values)) != len(values) or min(values) < 0:
            raise ParameterError(f"--seed-values {','.join(map(str, values))}: seeds must be distinct integers >= 0")
        return list(values)
    if count is not None and count < 1:
        raise ParameterError(f"--seeds {count}: give at least 1")
    return [default + i for i in range(count or 1)]


def plan(config: dict, names: list[str], mode: Mode, cli_overrides: dict, seeds: list[int] | None = None) -> list[Job]:
    """Every job's full, checked parameters, one job per configuration and training seed; a bad value
    anywhere stops the sweep before it starts. The split's seed is the same for every training seed."""
    defaults = notebook_defaults()
    jobs = []
    for name in names:
        for seed in seeds or [defaults["seed"]]:
            jobs.append(_plan_one(config, name, seed, defaults, mode, cli_overrides))
    return jobs


def plan_regions(config: dict, mode: Mode, cli_overrides: dict, seeds: list[int] | None = None) -> list[Job]:
    """The training-time shortcut protocol (Sourget et al. 2024): the baseline configuration trained on each
    input region (full images, lungs only, no lungs), each run tested on every region by its notebook. The
    full-image run is the baseline's own run of the sweep, so a finished sweep's is reused."""
    defaults = notebook_defaults()
    baseline = baseline_of(config)
    jobs = []
    for region in REGIONS:
        for seed in seeds or [defaults["seed"]]:
            job = _plan_one(config, baseline, seed, defaults, mode, {**cli_overrides, "input_region": region})
            job.params["experiment"] = region_experiment(baseline, region)
            jobs.append(job)
    return jobs


def plan_holdouts(config: dict, mode: Mode, cli_overrides: dict, seeds: list[int] | None = None,
                  classes: list[str] | None = None) -> tuple[list[Job], dict]:
    """Leave one source out (run_all.py --holdout-sources): the baseline trained once per (class, source) where
    the class has another source, with that source's images of the class moved to test (``holdout_source``); and
    the plan: the pairs, and the classes that cannot be tested with why. ``classes``: only these classes."""
    from ..data.locate import locate_dataset
    from ..data.scan import listed_files
    from ..data.sources import HOLDOUT_COPIES, holdout_pairs, sources_per_class

    root = locate_dataset(None if mode.data_dir is None else resolve_path(mode.data_dir))
    listed = [(file.relative_to(root).as_posix(), label) for file, label in listed_files(root)[0]]  # not decoded: the scan comes later
    per_class = sources_per_class(root, pd.DataFrame(listed, columns=["path", "label"]))
    unknown = sorted(set(classes or []) - set(per_class))
    if unknown:
        raise ParameterError(f"--holdout-sources: unknown class(es) {', '.join(unknown)}; the data set has {', '.join(per_class)}")
    testable, untestable = holdout_pairs({c: n for c, n in per_class.items() if not classes or c in classes})
    defaults, baseline, jobs = notebook_defaults(), baseline_of(config), []
    for label, source in testable:
        for seed in seeds or [defaults["seed"]]:
            job = _plan_one(config, baseline, seed, defaults, mode, {**cli_overrides, "holdout_source": f"{label}={source}"})
            job.params["experiment"] = holdout_experiment(baseline, label, source)
            jobs.append(job)
    plan = {"baseline": baseline, "root": str(root), "sources_per_class": per_class,
            "testable": [{"class": c, "source": s, "experiment": holdout_experiment(baseline, c, s)} for c, s in testable],
            "untestable": untestable, "copies": HOLDOUT_COPIES}
    return jobs, plan


def _plan_one(config: dict, name: str, seed: int, defaults: dict, mode: Mode, cli_overrides: dict) -> Job:
    settings = experiment_parameters(config["experiments"][name])
    if "learning_rate" in settings and mode.learning_rate_factor != 1:
        settings["learning_rate"] = scaled_learning_rate(settings["learning_rate"], mode.learning_rate_factor)
    params = {
        **defaults,
        **settings,
        **mode.overrides,
        **cli_overrides,
        "experiment": name,
        "seed": seed,
        "results_dir": mode.results_dir,
        "graph_dir": mode.graph_dir,
    }
    if mode.data_dir is not None and "data_dir" not in cli_overrides:
        params["data_dir"] = mode.data_dir
    # The demo's pretrained backbone is made after this check (prepare_demo_backbone), so its file
    # may not exist yet: the check sees no weights, the run gets the file's path.
    pending_backbone = mode.backbone is not None and "weights" not in cli_overrides
    if pending_backbone:
        params["weights"] = None
    try:
        params = check_parameters(params)
    except ParameterError as exc:
        raise ParameterError(f"Experiment {name}: {exc} (settings from experiments.json, the mode and the command line)") from None
    if pending_backbone:
        params["weights"] = str(demo_backbone.weights_path(mode.backbone, params["image_size"]))
    return Job(params)


def scaled_learning_rate(learning_rate: float, factor: float) -> float:
    """``learning_rate * factor`` without binary noise in the record (1e-5 * 10 is 1e-4, not 0.00010000000000000002)."""
    return float(f"{learning_rate * factor:.10g}")
