"""run_all.py --backend slurm against a real Slurm (scripts/local_slurm.sh), the batch script, and kernels
started at once.

Where sbatch is absent the Slurm tests skip; under CI (.ci/run sets COVID_MOBILENET_REQUIRE_SLURM=1 after
starting the local cluster) they fail instead, so a CI run without Slurm cannot pass.
"""
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from covid_mobilenet.sweep import notebooks
from covid_mobilenet.sweep.plan import Job
from covid_mobilenet.sweep.slurm import SUBMITTED_FILE

from tests.conftest import PROJECT, TINY, comparable, folders, run_all, run_all_here, tiny_backbone_config

SLURM_REQUIRED = os.environ.get("COVID_MOBILENET_REQUIRE_SLURM") == "1"
RUNS = ["mn_resultset1", "mn_resultset2"]  # two of the local demo_sweep's, so the files and numbers can be compared
SLURM_TINY = [*TINY, "--backend", "slurm", "--poll", "1"]


def slurm_answers() -> str | None:
    """None when a Slurm controller answers here; else why not."""
    if shutil.which("sbatch") is None:
        return "no sbatch on this machine (sudo scripts/local_slurm.sh install && sudo scripts/local_slurm.sh start)"
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    if listed.returncode != 0 or not listed.stdout.strip():
        return f"no Slurm controller answers (sudo scripts/local_slurm.sh start): {listed.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = slurm_answers()
    if problem:
        if SLURM_REQUIRED:
            pytest.fail(f"COVID_MOBILENET_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


def squeue(*args: str) -> str:
    return subprocess.run(["squeue", "-h", "-r", *args], capture_output=True, text=True).stdout.strip()


def task_of(results: Path, run: str) -> str:
    """The Slurm job id (array_task) that runs ``run``, from the driver's record."""
    return json.loads((results / "slurm" / SUBMITTED_FILE).read_text())[f"{run}/seed-42"]["job_id"]


def files_of(run_dir: Path) -> set[str]:
    """A run folder's files, TensorBoard's event files by folder only (their names hold the time and host),
    without export/ (which the export test adds to the shared local sweep's best run)."""
    return {str(path.relative_to(run_dir).parent if path.name.startswith("events.out") else path.relative_to(run_dir))
            for path in run_dir.rglob("*") if path.is_file() and path.relative_to(run_dir).parts[0] != "export"}


# --- the batch script, without Slurm --------------------------------------------------------------------------

def test_dry_run_shows_the_batch_script_with_every_option_and_changes_nothing(tmp_path, tiny_root):
    done = run_all_here("--demo", *folders(tmp_path, tiny_root), "--only", ",".join(RUNS), "--backend", "slurm", "--dry-run",
                   "--partition", "gpu-a100", "--account", "radiology-lab", "--time", "1:30:00", "--gpus", "2",
                   "--cpus", "6", "--mem", "24", "--max-at-once", "1", "--setup", "module load cuda/12.4",
                   "--setup", "source ~/venvs/covid/bin/activate")
    assert done.returncode == 0, done.stderr
    script = done.stdout[done.stdout.index("#!/bin/bash"):]
    for line in ["#SBATCH --partition=gpu-a100", "#SBATCH --account=radiology-lab", "#SBATCH --time=90",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6", "#SBATCH --mem=24G",
                 "#SBATCH --array=0-1%1", "#SBATCH --job-name=covid-mobilenet-demo", f"#SBATCH --chdir={PROJECT}",
                 "#SBATCH --signal=USR2@120", "module load cuda/12.4", "source ~/venvs/covid/bin/activate"]:
        assert line in script.splitlines(), f"{line!r} not in:\n{script}"
    # setup lines come before the task's command, which runs this Python on the pickled run
    lines = script.splitlines()
    command = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines.index("module load cuda/12.4") < command
    assert f"{sys.executable} -u -m submitit.core._submit {tmp_path / 'results' / 'slurm'}/%j" in lines[command]
    assert f"--output={tmp_path / 'results' / 'slurm'}/%A_%a/%A_%a_0_log.out" in script
    assert "2 runs would run as one Slurm job array: mn_resultset1/seed-42, mn_resultset2/seed-42" in done.stdout
    assert not (tmp_path / "results").exists(), "a dry run writes nothing"


def test_demo_defaults_ask_for_no_gpu_and_real_runs_for_one(tmp_path, tiny_root):
    demo = run_all_here("--demo", *folders(tmp_path, tiny_root), "--only", "mn_resultset1", "--backend", "slurm", "--dry-run")
    assert "--gpus-per-node" not in demo.stdout and "#SBATCH --mem=4G" in demo.stdout and "#SBATCH --time=30" in demo.stdout
    assert "--array" not in demo.stdout, "a single run is a plain job"
    real = run_all_here("--only", "mn_resultset1", "--backend", "slurm", "--dry-run", "--results-dir", str(tmp_path / "real"),
                        "--data-dir", str(tmp_path / "no-data"), "--set", "weights=None")
    assert "#SBATCH --gpus-per-node=1" in real.stdout and "#SBATCH --mem=32G" in real.stdout and "#SBATCH --time=120" in real.stdout
    assert real.returncode == 2 and "this run could not start" in real.stderr and str(tmp_path / "no-data") in real.stderr, \
        "the script is shown, and what would stop the run is said"


@pytest.mark.parametrize("args, message", [
    (["--partition", "gpu"], "need --backend slurm"),
    (["--no-wait"], "need --backend slurm"),
    (["--backend", "slurm", "--time", "ninety"], "expected minutes"),
    (["--backend", "slurm", "--cpus", "0"], "--cpus 0: must be at least 1"),
    (["--backend", "slurm", "--time", "0:03:00"], "--time 3: give at least 5 minutes"),
    (["--backend", "cloud"], "invalid choice"),
    # a newline in an option that goes into the batch script would add #SBATCH lines of its own
    (["--backend", "slurm", "--dry-run", "--partition", "gpu\n#SBATCH --uid=0"], "--partition 'gpu\\n#SBATCH --uid=0': holds a control"),
    (["--backend", "slurm", "--dry-run", "--account", "lab\r"], "--account 'lab\\r': holds a control"),
    (["--backend", "slurm", "--dry-run", "--setup", "module load cuda", "--setup", "x\x1b[2J"], "--setup 'x\\x1b[2J': holds a control"),
])
def test_slurm_options_are_checked_before_anything_runs(args, message):
    done = run_all_here("--demo", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_time_limits_read_as_minutes():
    sys.path.insert(0, str(PROJECT))
    from run_all import _minutes

    assert [_minutes(text) for text in ("90", "1:30", "1:30:00", "0:00:30", "2:00:01")] == [90, 90, 90, 1, 121]


# --- kernels started at once (papermill issue 511) ----------------------------------------------------------------

def _start_a_kernel(index: int) -> tuple[str, str, str]:
    async def run():
        manager = notebooks._kernel_manager_logging_to(Path(os.environ["KERNEL_LOGS"]) / f"{index}.log")(kernel_name="python3")
        await manager.start_kernel()
        client = manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=120)
            reply = await client.execute_interactive(f"answer = {index} * 2", timeout=60)
            return manager.transport, manager.ip, reply["content"]["status"]
        finally:
            client.stop_channels()
            await manager.shutdown_kernel()

    return asyncio.run(run())


@pytest.mark.slow
def test_kernels_started_at_once_each_get_their_own_sockets(tmp_path, monkeypatch):
    """Starts six kernels at once: their sockets are the claim."""
    monkeypatch.setenv("KERNEL_LOGS", str(tmp_path))
    with ProcessPoolExecutor(6) as pool:
        started = list(pool.map(_start_a_kernel, range(6)))
    assert [status for _, _, status in started] == ["ok"] * 6
    if os.name == "posix":
        assert {transport for transport, _, _ in started} == {"ipc"}
        assert len({ip for _, ip, _ in started}) == 6, "every kernel has sockets of its own"
        assert not any(Path(f"{ip}-1").exists() for _, ip, _ in started), "the sockets are removed with the kernel"


@pytest.mark.slow
def test_a_kernel_that_never_ran_a_cell_gets_one_more_try_and_a_notebook_failure_does_not(tmp_path, monkeypatch):
    """Starts kernels: papermill's failures before and after the first cell."""
    import papermill

    job = Job({"experiment": "mn_resultset1", "seed": 42, "results_dir": str(tmp_path), "graph_dir": str(tmp_path)})
    calls = []

    def kernel_fails_to_start(input_path, output_path, **kw):
        calls.append(output_path)
        if len(calls) == 1:
            Path(output_path).write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": None}]}))
            raise RuntimeError("Kernel died before replying to kernel_info")

    monkeypatch.setattr(papermill, "execute_notebook", kernel_fails_to_start)
    monkeypatch.setattr(notebooks.time, "sleep", lambda seconds: None)
    outcome = notebooks.execute(job, "python3")
    assert len(calls) == 2, "the start-up failure was tried again"
    assert outcome.status == "failed" and "metrics.json" in outcome.detail  # the fake second try wrote no results

    calls.clear()

    def dies_mid_notebook(input_path, output_path, **kw):
        calls.append(output_path)
        Path(output_path).write_text(json.dumps({"cells": [{"cell_type": "code", "execution_count": 1}]}))
        raise RuntimeError("Kernel died")

    monkeypatch.setattr(papermill, "execute_notebook", dies_mid_notebook)
    outcome = notebooks.execute(job, "python3")
    assert len(calls) == 1 and outcome.status == "failed" and "Kernel died" in outcome.detail


# --- a real Slurm ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_sweep(slurm, tiny_root, tmp_path_factory):
    """The demo sweep of RUNS submitted to Slurm while the test preempts one task after its first epoch (SIGUSR2,
    as Slurm sends it) and cancels the other: (folder, the first driver's result, then those of --summary-only, of
    a rerun with --no-wait, and of the summary command it printed, run once its task has finished)."""
    tmp = tmp_path_factory.mktemp("slurm")
    results = tmp / "results"
    args = [sys.executable, "run_all.py", "--demo", *folders(tmp, tiny_root), *SLURM_TINY, "--only", ",".join(RUNS),
            "--config", str(tiny_backbone_config())]
    driver = subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, second = (results / run / "seed-42" for run in RUNS)
        wait_until(lambda: (second / "kernel.log").exists(), 300, "the second task's notebook to start")
        subprocess.run(["scancel", task_of(results, RUNS[1])], check=True)
        wait_until(lambda: (first / "backup" / "keras" / "training_metadata.json").exists(), 300,
                   "the first task's first epoch")
        preempted = task_of(results, RUNS[0])
        subprocess.run(["scancel", "--signal=USR2", preempted], check=True)
        # Slurm holds a requeued job for two minutes (reason BeginTime). Once the killed instance is gone (a
        # job started before that fails: "Job credential revoked"), let it start at once.
        wait_until(lambda: "BeginTime" in squeue("-j", preempted, "-o", "%r"), 120, "the requeued task to wait")
        wait_until(lambda: not squeue("-s", "-j", preempted), 60, "the preempted instance's step to end")
        time.sleep(3)
        subprocess.run(["scontrol", "update", f"JobId={preempted}", "StartTime=now"], check=True)
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    first_run = subprocess.CompletedProcess(args, driver.returncode, out, err)
    partial = run_all(*args[2:], "--summary-only")

    rerun = run_all(*args[2:], "--no-wait")
    array = re.search(r"Submitted Slurm job (\d+)", rerun.stdout)
    if array:
        wait_until(lambda: not squeue("-j", array.group(1)), 300, "the rerun's task to finish")
    later = re.search(r"summary: (python run_all\.py .*)", rerun.stdout)
    summary = run_all(*shlex.split(later.group(1))[2:]) if later else None
    return tmp, first_run, partial, rerun, summary


@pytest.mark.slow
@pytest.mark.slurm
def test_a_cancelled_task_is_reported_with_its_notebook_and_slurm_log(slurm_sweep):
    """Slurm's shared sweep: a task cancelled while its notebook trains."""
    tmp, first, _, _, _ = slurm_sweep
    assert first.returncode == 1, first.stdout + first.stderr
    row = next(line for line in first.stdout.splitlines() if line.startswith(f"{RUNS[1]}/seed-42 "))
    assert "failed" in row and "Slurm CANCELLED" in row
    log = re.search(r"Slurm log (\S+)", row).group(1)
    assert Path(log).parent.parent == tmp / "results" / "slurm" and log.endswith("_log.out")
    assert str(tmp / "results" / RUNS[1] / "seed-42" / f"{RUNS[1]}.ipynb") in first.stderr, "the notebook is named"
    assert re.search(rf"^{RUNS[0]}/seed-42 +ran ", first.stdout, re.MULTILINE)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_preempted_task_is_requeued_and_resumes_from_its_backup(slurm_sweep, demo_sweep):
    """Slurm's shared sweep: a task preempted after its first epoch, resumed."""
    tmp = slurm_sweep[0]
    run = tmp / "results" / RUNS[0] / "seed-42"
    assert "Resuming from the backup" in (run / f"{RUNS[0]}.ipynb").read_text()
    log = Path(json.loads((tmp / "results" / "slurm" / SUBMITTED_FILE).read_text())[f"{RUNS[0]}/seed-42"]["log"])
    assert "this job is preempted" in log.with_name(log.name.replace("_log.out", "_log.err")).read_text()
    assert not (run / "backup").exists()
    # Same seed, same numbers: preempted, requeued and resumed on Slurm equals uninterrupted on this machine.
    local = json.loads((demo_sweep[0] / "results" / RUNS[0] / "seed-42" / "metrics.json").read_text())
    assert comparable(json.loads((run / "metrics.json").read_text())) == comparable(local)


@pytest.mark.slow
@pytest.mark.slurm
def test_summary_only_trains_nothing_and_names_what_is_missing(slurm_sweep):
    """Slurm's shared sweep: the summary's kernel runs on what finished."""
    partial = slurm_sweep[2]
    assert partial.returncode == 1, partial.stdout + partial.stderr
    assert re.search(rf"^{RUNS[0]}/seed-42 +skipped ", partial.stdout, re.MULTILINE)
    assert re.search(rf"^{RUNS[1]}/seed-42 +missing ", partial.stdout, re.MULTILINE)
    assert f"leaves out 1 run without results ({RUNS[1]}/seed-42)" in partial.stderr
    assert "Submitted" not in partial.stdout


def test_summary_only_without_any_finished_run_says_so(tmp_path, tiny_root):
    done = run_all_here("--demo", *folders(tmp_path, tiny_root), "--only", ",".join(RUNS), "--summary-only")
    assert done.returncode == 1 and "no run has finished" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_a_rerun_submits_only_what_is_missing_and_the_summary_comes_later(slurm_sweep):
    """Slurm's shared sweep: the missing run is submitted and trains."""
    tmp, _, _, rerun, summary = slurm_sweep
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Submitted Slurm job" in rerun.stdout and ": 1 task;" in rerun.stdout, rerun.stdout
    assert f"{RUNS[1]}/seed-42: not run yet" in rerun.stdout and f"{RUNS[0]}/seed-42:" not in rerun.stdout
    assert "scancel" in rerun.stdout and "--summary-only" in rerun.stdout
    assert summary is not None and summary.returncode == 0, (summary.stdout + summary.stderr) if summary else rerun.stdout
    assert "Demo run on synthetic images" in (tmp / "results" / "summary.md").read_text()
    assert (tmp / "results" / "slurm").stat().st_mode & 0o777 == 0o700, "the pickled tasks are the owner's alone"


@pytest.mark.slow
@pytest.mark.slurm
def test_the_slurm_sweep_leaves_the_same_files_and_numbers_as_the_local_one(slurm_sweep, demo_sweep):
    """Slurm's shared sweep against the shared local one."""
    tmp = slurm_sweep[0]
    local = demo_sweep[0]
    for run in RUNS:
        ours, theirs = tmp / "results" / run / "seed-42", local / "results" / run / "seed-42"
        assert files_of(ours) == files_of(theirs)
        assert comparable(json.loads((ours / "metrics.json").read_text())) == comparable(json.loads((theirs / "metrics.json").read_text()))
        assert (tmp / "Graph" / f"{run[-1]}-seed-42.png").is_file()
    top = {path.name for path in (tmp / "results").iterdir()} - {"slurm"}
    assert top <= {path.name for path in (local / "results").iterdir()}
    assert {"summary.csv", "summary.md", "runs.csv", "summary.ipynb"} <= top
    assert (tmp / "Graph" / "The_result_of_MobileNet_fine_tuning.png").is_file()


@pytest.mark.slow
@pytest.mark.slurm
def test_ctrl_c_leaves_the_tasks_running_and_a_rerun_does_not_submit_them_again(slurm, tiny_root, tmp_path):
    """Submits a run to Slurm that trains while the driver is interrupted."""
    args = [sys.executable, "run_all.py", "--demo", *folders(tmp_path, tiny_root), *SLURM_TINY,
            "--only", "mn_resultset3", "--config", str(tiny_backbone_config())]
    # As from a terminal: a test session started in the background (`cmd &` without job control) ignores
    # SIGINT, and its children would inherit that.
    driver = subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    submitted = tmp_path / "results" / "slurm" / SUBMITTED_FILE
    try:
        wait_until(submitted.exists, 300, "the submission")
        time.sleep(0.5)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=60)
        job = task_of(tmp_path / "results", "mn_resultset3")
        assert driver.returncode == 130, out + err
        assert f"scancel {job}" in err and "--summary-only" in err
        assert squeue("-j", job), "the task is still in Slurm"

        again = run_all(*args[2:])
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"still in Slurm as job {job}; not run again" in again.stdout
        assert "Submitted Slurm job" not in again.stdout
    finally:
        if driver.poll() is None:
            driver.kill()
        if submitted.exists():
            subprocess.run(["scancel", task_of(tmp_path / "results", "mn_resultset3")])


def test_the_folder_of_pickled_tasks_is_its_owners_alone(tmp_path):
    """submitit's pickled tasks are code the tasks run: results/slurm/ is created 0700, and narrowed when it was not."""
    from covid_mobilenet.sweep import slurm

    created = slurm.private_folder(slurm.slurm_folder(tmp_path / "results"))
    assert created.stat().st_mode & 0o777 == 0o700
    created.chmod(0o777)
    assert slurm.private_folder(created).stat().st_mode & 0o777 == 0o700


def test_without_sbatch_the_slurm_backend_says_what_to_do(tmp_path, tiny_root, monkeypatch):
    from covid_mobilenet.sweep import slurm

    monkeypatch.setattr(slurm.shutil, "which", lambda command: None)
    with pytest.raises(slurm.SlurmError, match="sbatch, sacct, squeue, scancel not found.*local_slurm.sh"):
        slurm.check_slurm_available()


def test_local_slurm_stop_stops_only_the_daemons_it_started(tmp_path):
    """scripts/local_slurm.sh stop kills by its own pid files: a daemon of the same name it did not start (another
    Slurm's, here a decoy named slurmd) is left alone. Runs against a state folder of its own, not the test cluster's."""
    if os.geteuid() != 0:
        pytest.skip("local_slurm.sh stop needs root")
    state = tmp_path / "state"
    (state / "run").mkdir(parents=True)
    decoy = tmp_path / "bin" / "slurmd"
    decoy.parent.mkdir()
    shutil.copy("/bin/sleep", decoy)
    ours, theirs = subprocess.Popen([str(decoy), "300"]), subprocess.Popen([str(decoy), "300"])
    try:
        (state / "run" / "slurmd.pid").write_text(f"{ours.pid}\n")
        (state / "run" / "started").write_text(f"slurmd {state / 'run' / 'slurmd.pid'}\n")
        done = subprocess.run(["bash", "scripts/local_slurm.sh", "stop"], cwd=PROJECT, capture_output=True, text=True,
                              timeout=60, env={**os.environ, "LOCAL_SLURM_DIR": str(state)})
        assert done.returncode == 0, done.stderr
        assert ours.wait(timeout=10) is not None, "the slurmd it started is stopped"
        assert theirs.poll() is None, "a slurmd it did not start is left alone"
        assert (state / "run" / "started").read_text() == ""
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()


@pytest.mark.slurm
def test_the_local_cluster_keeps_its_own_accounting_database_and_user(slurm):
    """Its database user and database are its own (another set-up's `slurm` user, with another password, is no
    obstacle), and slurmdbd logs in with the password the script set."""
    conf = dict(line.split("=", 1) for line in Path("/etc/slurm/slurmdbd.conf").read_text().splitlines() if "=" in line)
    assert (conf["StorageUser"], conf["StorageLoc"]) == ("covid_mobilenet_slurmdbd", "covid_mobilenet_slurm_acct")
    login = subprocess.run(["mysql", "-u", conf["StorageUser"], f"-p{conf['StoragePass']}", "-N", "-e", "SELECT 1",
                            conf["StorageLoc"]], capture_output=True, text=True, timeout=30)
    assert login.returncode == 0 and login.stdout.strip() == "1", login.stderr
