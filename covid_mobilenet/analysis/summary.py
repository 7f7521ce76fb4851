"""The comparison of all experiments: writes the tables, the graph, ``summary.md`` and the README's results sections.

Every number comes from a run's ``metrics.json`` and ``predictions.csv``; the study's reported numbers from
``experiments.json``. A missing, failed or unreadable experiment is a row marked as such, never a crash.
The tables, the words and the figures are made in ``tables.py``, ``text.py`` and ``figures.py``.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from ..common.config import baseline_of
from ..common.files import save_figure, write_atomic, write_csv
from ..common.paths import README_FILE
from ..common.readme import replace_readme_section
from ..common.run_layout import seed_folder
from . import audit_summary, comparison, external_summary, shortcut_summary
from .claim import claim_checklist, claim_markdown
from .calibration_report import calibration_markdown, source_lines
from .figures import comparison_figure
from .results import collect_results, read_result
from .tables import majority_share, runs_table, summary_table
from .text import (HOW_TO_READ, claim_lines, dataset_lines, effect_lines, markdown_table, percent, readme_section,
                   regions_section)

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
FAST_RESULTS_START = "<!-- results-fast:start -->"  # the frozen-backbone experiment's own section
FAST_RESULTS_END = "<!-- results-fast:end -->"
COMPARISON_GRAPH = "The_result_of_MobileNet_fine_tuning.png"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
RUNS_CSV = "runs.csv"  # one row per run (configuration and seed)


def write_summary(
    results_dir: str | os.PathLike,
    graph_dir: str | os.PathLike,
    *,
    config: dict,
    demo: bool,
    update_readme: bool,
    fast: bool = False,
    seeds: list[int] | None = None,
    readme: str | os.PathLike = README_FILE,
) -> dict[str, Path]:
    """Write summary.csv, runs.csv, summary.md and the comparison graph; in real mode, optionally the README.

    ``seeds``: the training seeds to summarise (default: every seed folder found). ``fast``: the
    frozen-backbone experiment (run_all.py --fast), summarised without the study's numbers and into
    the README's own section for it.
    """
    if demo and update_readme:
        raise ValueError("Demo results never go into the README: run the summary with update_readme=False.")
    results_dir, graph_dir = Path(results_dir), Path(graph_dir)
    collected = collect_results(results_dir, config, allow_demo=demo, seeds=seeds)
    baseline = baseline_of(config)
    comparisons = comparison.compare_with_baseline(collected, baseline)
    verdicts = comparison.judge_claims(config.get("claims", []) if not fast else [], comparisons)
    table = summary_table(collected, config, comparisons)
    title = ("Demo (synthetic data)" if demo else "MobileNet fine-tuning") if not fast else (
        "Demo (synthetic data), frozen backbone" if demo else "MobileNet with a frozen backbone")
    paths = {
        "csv": write_csv(results_dir / SUMMARY_CSV, table),
        "runs": write_csv(results_dir / RUNS_CSV, runs_table(collected)),
        "graph": save_figure(comparison_figure(table, title, with_study=not fast), graph_dir / COMPARISON_GRAPH),
    }
    header = [f"# {title}", ""]
    if fast:
        header += [
            "The backbone is frozen and its features cached (`run_all.py --fast`); each configuration trains only "
            "its head. This is another experiment than the study's fine-tuning, so the study's numbers are not shown.",
            "",
        ]
    if demo:
        demo_config = config.get("demo", {})
        changes = {**demo_config.get("overrides", {}), **(demo_config.get("fast_overrides", {}) if fast else {})}
        header += [
            "**Demo run on synthetic images: these numbers say nothing about chest X-rays.**",
            "",
            demo_config.get("description", ""),
            "",
            "Demo settings applied to every configuration: "
            + ", ".join(f"`{k}={v}`" for k, v in changes.items())
            + (f"; every learning rate multiplied by {demo_config['learning_rate_factor']:g}"
               if demo_config.get("learning_rate_factor", 1) != 1 else "")
            + ".",
            "",
        ]
        if fast and demo_config.get("fast_description"):
            header += [demo_config["fast_description"], ""]
    effects = effect_lines(table)
    if effects:
        header += ["What each setting does, with the other two held at the first configuration's values (mean test accuracy):",
                   "", *effects, ""]
    majority = majority_share(collected)
    if majority is not None:
        header += [f"Always answering the commonest class would score {percent(majority)} on the test split.", ""]
    body = [*dataset_lines(collected), "", markdown_table(table, with_study=not fast, baseline=baseline), "", HOW_TO_READ]
    claims = claim_lines(verdicts, table, baseline)
    if claims:
        body += ["", *claims]
    looked_at, region_lines, shortcut_paths = shortcut_summary.write_shortcut_summary(
        results_dir, graph_dir, collected, baseline, seeds=seeds, read_result=partial(read_result, allow_demo=demo), title=title)
    paths.update(shortcut_paths)
    if looked_at:
        body += ["", *looked_at]
    calibrated = calibration_markdown(table)
    if calibrated:
        body += ["", *calibrated, *[f"\n{line}" for line in source_lines(collected, baseline)]]
    problems = [f"- {r.name} {seed_folder(r.seed) if r.seed is not None else ''}: {r.status}: {r.problem}"
                for runs in collected.values() for r in runs if r.status != "done"]
    if problems:
        body += ["", "Without results:", *problems]
    audit, holdout, audit_paths = audit_part(results_dir, graph_dir, collected, baseline, demo, title, read_result)
    paths.update(audit_paths)
    body += audit
    external, external_readme, external_paths = external_summary.write_external(
        results_dir, graph_dir, collected, config, baseline, title, readme)
    paths.update(external_paths)
    paths["markdown"] = write_atomic(results_dir / SUMMARY_MD, "\n".join(header + body + external) + "\n")
    if update_readme:
        graph_link = os.path.relpath(paths["graph"], Path(readme).parent)
        markers = (FAST_RESULTS_START, FAST_RESULTS_END) if fast else (RESULTS_START, RESULTS_END)
        changed = replace_readme_section(readme, readme_section(table, collected, body, graph_link, fast=fast), markers)
        if not fast and shortcut_summary.REGIONS_START in Path(readme).read_text():  # a README of before the section has none
            changed |= replace_readme_section(readme, regions_section(region_lines, paths.get("regions_graph"), readme),
                                              (shortcut_summary.REGIONS_START, shortcut_summary.REGIONS_END))
        if not fast and audit_summary.HOLDOUT_START in Path(readme).read_text():
            changed |= replace_readme_section(readme, holdout_section(holdout, paths.get("holdout_graph"), readme),
                                              (audit_summary.HOLDOUT_START, audit_summary.HOLDOUT_END))
        if not fast and external_summary.EXTERNAL_START in Path(readme).read_text():
            changed |= replace_readme_section(readme, external_summary.external_section(external_readme),
                                              (external_summary.EXTERNAL_START, external_summary.EXTERNAL_END))
        if changed:
            paths["readme"] = Path(readme)
    return paths


def audit_part(results_dir: Path, graph_dir: Path, collected: dict, baseline: str, demo: bool, title: str,
               read_result) -> tuple[list[str], list[str], dict]:
    """The data set's audit in the summary: near-duplicates, the source probe, the held-out sources, the CLAIM
    checklist; (body lines, the held-out-source lines alone, paths)."""
    audit = audit_summary.read_audit(results_dir, collected)
    holdout, paths = audit_summary.write_holdout(results_dir, graph_dir, baseline, partial(read_result, allow_demo=demo), title)
    lines = ["", "## The data set, audited", ""]
    lines += [*audit_summary.duplicates_lines(collected), ""]
    lines += [*audit_summary.probe_section(audit), ""] if audit else []
    if holdout:
        lines += ["**Leaving one source out** (`run_all.py --holdout-sources`):", "", *holdout, ""]
    rows = sum(line.startswith("| ") and not line.startswith("| Class") and not line.startswith("| :") for line in holdout)
    lines += claim_markdown(claim_checklist(collected, audit, rows, demo=demo))
    return lines, holdout, paths


def holdout_section(lines: list[str], graph: Path | None, readme) -> str:
    """The README's held-out-source section: from real runs, or how to fill it."""
    if not lines:
        return ("No run leaving a source out has been recorded on the real data in this repository yet: "
                "`python run_all.py --holdout-sources` fills this section.")
    link = [] if graph is None else [f"![Accuracy on each held-out source]({os.path.relpath(graph, Path(readme).parent)})"]
    return "\n".join([*lines, "", *link])
