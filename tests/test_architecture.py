"""The package's layout is a contract: imports go one way, the sweep stays free of TensorFlow, the notebook and
``run_experiment`` make the same calls, and no module grows into two jobs."""
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

PACKAGE = PROJECT / "covid_mobilenet"
STAGES = ["common", "data", "model", "analysis", "run", "product", "sweep", "bench"]
COMMANDS = ["predict", "evaluate", "export", "app", "audit", "benchmark", "demo", "demo_backbone"]
MAX_LINES = 300


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert command, "lint-imports is not installed: pip install -r requirements-dev.txt"
    return subprocess.run([command, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_imports_keep_the_layered_contract():
    done = lint_imports(PROJECT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"Contracts: 4 kept, 0 broken", done.stdout), done.stdout[-2000:]


@pytest.mark.parametrize("module, line, contract", [
    ("analysis/results.py", "from ..model import architecture", "Stages of the data's path"),  # analysis never reads the model
    ("data/split.py", "from ..run import params", "Stages of the data's path"),  # an upward import
    ("sweep/plan.py", "from ..bench import cli", "Stages of the data's path"),  # two siblings of one layer
    ("analysis/tables.py", "import tensorflow", "Analyses read run files"),
    ("sweep/outcomes.py", "from ..data import pipeline", "The sweep never loads TensorFlow"),  # through a module that does
    ("data/layout.py", "from . import split", "No import cycles"),  # split imports layout
])
def test_the_contract_catches_a_wrong_import(tmp_path, module, line, contract):
    """A copy of the package with one import added inside a function, where it hides from a reader."""
    shutil.copytree(PACKAGE, tmp_path / "covid_mobilenet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", tmp_path)
    with open(tmp_path / "covid_mobilenet" / module, "a") as source:
        source.write(f"\n\ndef _sneaked_in():\n    {line}\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout[-2000:]
    broken = [text for text in done.stdout.splitlines() if "BROKEN" in text]
    assert any(contract in text for text in broken), done.stdout[-3000:]


def test_run_all_the_sweep_and_slurm_never_load_tensorflow():
    code = (
        "import sys, run_all\n"
        "from covid_mobilenet.sweep import local, notebooks, outcomes, plan, preflight, slurm\n"
        "run_all.parse_args(['--demo'])\n"
        "print(sorted(name for name in ('tensorflow', 'keras', 'tensorboard') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_package_init_only_says_what_its_stage_does():
    for stage in ["", *STAGES]:
        init = PACKAGE / stage / "__init__.py"
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant), init
        assert "import" in body[0].value.value or stage == "", f"{init} should say what its stage may import"


def test_the_folders_are_the_stages_and_the_top_level_holds_only_the_commands():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES)
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == sorted(["__init__", *COMMANDS])
    for command in COMMANDS:
        assert 'if __name__ == "__main__":' in (PACKAGE / f"{command}.py").read_text(), command


def test_no_module_does_two_jobs_by_its_length_nor_shadows_the_standard_library():
    modules = sorted(PACKAGE.rglob("*.py"))
    long = {str(p.relative_to(PACKAGE)): n for p in modules if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
    shadowing = [str(p.relative_to(PACKAGE)) for p in modules if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"named like a standard library module: {shadowing}"


def notebook_steps(notebook: Path) -> list[str]:
    """The ``steps.<name>(...)`` calls of a notebook's code cells, in order."""
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code" and
                     "parameters" not in cell["metadata"].get("tags", []))
    return calls_on(ast.parse(code), "steps")


def calls_on(tree: ast.AST, owner: str | None) -> list[str]:
    """Names of the calls ``owner.<name>(...)`` (or plain ``<name>(...)`` when owner is None), in source order."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            function = node.func
            if owner and isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name) and function.value.id == owner:
                found.append((node.lineno, node.col_offset, function.attr))
            elif owner is None and isinstance(function, ast.Name):
                found.append((node.lineno, node.col_offset, function.id))
    return [name for *_, name in sorted(found)]


def test_the_notebook_and_run_experiment_make_the_same_calls_in_the_same_order():
    from covid_mobilenet.common.paths import EXPERIMENT_NOTEBOOK

    module = ast.parse((PACKAGE / "run" / "steps.py").read_text())
    functions = {node.name: node for node in module.body if isinstance(node, ast.FunctionDef)}
    in_function = [name for name in calls_on(functions["run_experiment"], None) if name in functions]
    in_notebook = notebook_steps(EXPERIMENT_NOTEBOOK)
    assert in_notebook == ["check", "setup", "prepare_data", "build", "train", "recalibrate_batchnorm", "split_predictions",
                           "full_model", "look_for_shortcuts", "calibrate", "fit_guard", "evaluate", "save_outputs"]
    assert in_function == in_notebook


def test_the_contributing_guides_layout_names_every_stage_and_module():
    text = (PROJECT / "CONTRIBUTING.md").read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
    missing = [f"{stage}/" for stage in STAGES if f"{stage}/" not in layout]
    missing += [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if p.name != "__init__.py" and p.stem not in layout]
    assert not missing, f"CONTRIBUTING.md's Layout section does not name: {missing}"
    assert "```mermaid" in text[text.index("## Architecture"):], "CONTRIBUTING.md's architecture section draws the stages"


def test_files_are_published_through_the_one_atomic_helper():
    """Only common/files.py renames a freshly written file into place; the sweep's rename sets an old result aside."""
    renames = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "os.replace(" in p.read_text()}
    assert renames == {"common/files.py", "sweep/preflight.py"}
