"""Measured figures in one place: what the README and the docs quote is what results/bench.json holds."""
import json
import shutil

import pytest

from covid_mobilenet.bench import cli
from covid_mobilenet.common import figures
from covid_mobilenet.common.paths import BENCH_FILE, PROJECT_ROOT

BENCH = json.loads(BENCH_FILE.read_text())


def test_every_quoted_figure_is_the_one_bench_json_holds():
    quoting = figures.quoting_files()
    assert {path.name for path in quoting} >= {"README.md", "CONTRIBUTING.md", "performance.md"}
    problems = [problem for path in quoting for problem in figures.disagreements(path, BENCH)]
    assert not problems, "\n".join(problems) + "\nrerun the benchmark, or `python -m covid_mobilenet.benchmark --demo-timing`"
    quoted = {quote["name"] for path in quoting for quote in figures.QUOTE.finditer(path.read_text())}
    assert {"demo_seconds", "reference_speed", "fast_sweep_speedup", "full_size_cold"} <= quoted, \
        "the README quotes the demo's time and the docs the benchmark's figures"


def test_the_one_table_of_figures_is_generated_from_bench_json():
    text = figures.TABLE_PAGE.read_text()
    start, end = figures.TABLE_MARKERS
    shown = text[text.index(start) + len(start):text.index(end)].strip()
    assert shown == figures.table(BENCH)
    assert "not measured" not in shown, "every figure of the table has been measured"


def test_a_planted_disagreement_is_caught_named_and_refreshed_away(tmp_path):
    for name in ("README.md", "CONTRIBUTING.md"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / "docs", tmp_path / "docs")
    readme = tmp_path / "README.md"
    right = figures.value("demo_seconds", BENCH)
    planted = readme.read_text().replace(f"<!-- figure: demo_seconds -->{right}<!-- /figure -->",
                                         "<!-- figure: demo_seconds -->296 s<!-- /figure -->", 1)
    readme.write_text(planted.replace("<!-- figure: pipeline_speedup -->", "<!-- figure: pipeline_speedups -->", 1)
                      + "\n<!-- figure: pipeline_speedups -->43.4<!-- /figure -->\n")
    found = figures.disagreements(readme, BENCH)
    assert any("demo_seconds is quoted as '296 s'" in problem and f"gives {right!r}" in problem
               and problem.startswith(f"{readme}:") for problem in found), found
    assert any("unknown figure 'pipeline_speedups'" in problem for problem in found), found

    figures.refresh_all(BENCH, tmp_path)
    assert figures.disagreements(readme, BENCH) == [f"{readme}:{len(readme.read_text().splitlines())}: unknown figure "
                                                    f"'pipeline_speedups'; the figures are {', '.join(sorted(figures.FIGURES))}"]
    assert f"<!-- figure: demo_seconds -->{right}<!-- /figure -->" in readme.read_text()


def test_a_figure_never_measured_says_which_command_measures_it():
    with pytest.raises(figures.FigureError, match=r"'demo_fast_seconds' is not in bench.json .*run_all.py --demo --fast"):
        figures.value("demo_fast_seconds", {})
    assert "| `demo_fast_seconds` | not measured |" in figures.table({})


TIMING = {"total_seconds": 433.2, "phases": {"demo backbone": 145.0, "7 runs (2 at once)": 265.0}, "runs_seconds": 265.0,
          "runs": 7, "configurations": 7, "demo": True, "fast": False, "backbone_pretrained": True,
          "git_commit": "0123456789abcdef", "date": "2026-12-05"}


@pytest.mark.parametrize("change, problem", [
    ({"demo": False}, "not a demo sweep"),
    ({"runs": 3}, "only 3 of its 7 runs ran"),
    ({"backbone_pretrained": False}, "backbone was cached already"),
])
def test_only_a_first_demo_is_recorded_as_the_demos_time(tmp_path, change, problem, capsys):
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({**TIMING, **change}))
    output = tmp_path / "bench.json"
    assert cli.main(["--demo-timing", str(timing), "--output", str(output)]) == 2
    assert problem in capsys.readouterr().err and not output.exists()
    assert "backbone was cached already" in cli.demo_timing_problem({**TIMING, "fast": True, "backbone_pretrained": False}), \
        "--demo --fast is timed from a fresh clone too, as its figure says"
    assert cli.demo_timing_problem({**TIMING, "fast": True}) is None


def test_a_first_demos_time_is_recorded_beside_the_machines_reference_speed(tmp_path, monkeypatch):
    from covid_mobilenet.bench import throughput

    measured = []
    monkeypatch.setattr(throughput, "measure_training", lambda index, *args: measured.append(len(index.images)) or (
        {"ceiling": 21.35}, None))
    timing, output = tmp_path / "timing.json", tmp_path / "bench.json"
    timing.write_text(json.dumps(TIMING))
    output.write_text(json.dumps({"fast_sweep_speedup": 8.9}))
    assert cli.main(["--demo-timing", str(timing), "--output", str(output), "--images", "24",
                     "--data-dir", str(tmp_path / "data")]) == 0
    bench = json.loads(output.read_text())
    assert measured == [24] and bench["fast_sweep_speedup"] == 8.9, "the other figures are kept"
    assert bench["demo"]["reference_speed"] == 21.35 and bench["demo"]["total_seconds"] == 433.2
    assert [figures.value(name, bench) for name in ("demo_seconds", "demo_backbone", "demo_runs", "demo_commit",
                                                    "demo_reference_speed")] == \
        ["433 s", "145 s", "265 s", "0123456", "21.4 images/s"]


def between(text: str, start: str, end: str) -> str:
    return text[text.index(start) + len(start):text.index(end)].strip()


def test_the_study_page_shows_experiments_jsons_reported_table_and_the_readme_points_to_it():
    from covid_mobilenet.analysis import tables, text
    from covid_mobilenet.common.config import load_config

    config = load_config()
    none = {name: [] for name in config["experiments"]}
    table = tables.summary_table(none, config)
    page = (PROJECT_ROOT / text.STUDY_PAGE).read_text()
    assert between(page, "<!-- study:start -->", "<!-- study:end -->") == text.reference_table(table)
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert between(readme, "<!-- results:start -->", "<!-- results:end -->") == text.readme_section(table, none, [], "g.png")
    assert "93.27%" not in readme, "the study's figures live on its page, not among the results"
