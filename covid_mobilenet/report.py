"""Writing a run's outputs: atomic files, graphs, and the record of the environment."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import PROJECT_ROOT


def save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=110, bbox_inches="tight")
    os.replace(temporary, path)
    return path


def graph_name(experiment: str, seed: int) -> str:
    """The study's graph file name, the experiment name's trailing number, with the seed (mn_resultset3 -> 3-seed-42.png)."""
    match = re.search(r"(\d+)$", experiment)
    return f"{match.group(1) if match else experiment}-seed-{seed}.png"


def plot_history(history: pd.DataFrame, title: str) -> Figure:
    """Accuracy and loss per epoch, training against validation, like the study's graphs."""
    figure = Figure(figsize=(11, 4))
    for axes, metric in zip(figure.subplots(1, 2), ("accuracy", "loss")):
        axes.plot(history["epoch"], history[metric], "o-", label=f"train {metric}")
        axes.plot(history["epoch"], history[f"val_{metric}"], "s-", label=f"val {metric}")
        axes.set(xlabel="epoch", ylabel=metric, title=f"{title}: {metric}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], title: str) -> Figure:
    matrix = np.asarray(confusion)
    figure = Figure(figsize=(5.5, 4.8))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=30, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    for row in ticks:
        for column in ticks:
            value = matrix[row, column]
            color = "white" if value > matrix.max() / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color)
    return figure


HPARAMS = ("hidden_layers", "dense_units", "learning_rate", "dropout", "batch_size", "epochs", "image_size",
           "seed", "split_seed", "train_base", "fast", "precision", "input_region")


def write_hparams(log_dir: str | os.PathLike, metrics: dict) -> Path:
    """The TensorBoard HParams plugin's record of a finished run: its parameters and final test metrics,
    so that `tensorboard --logdir results` lists every run of a sweep in one table."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams

    params = metrics["params"]
    log_dir = Path(log_dir) / "hparams"
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        hparams.hparams({name: params[name] for name in HPARAMS if name in params},
                        trial_id=f"{params['experiment']}/seed-{params['seed']}")
        test = metrics["test"]
        for name in ("accuracy", "macro_f1", "balanced_accuracy", "loss"):
            tf.summary.scalar(f"test/{name}", test[name], step=metrics["epochs_run"])
        tf.summary.scalar("train_seconds", metrics["train_seconds"], step=metrics["epochs_run"])
    writer.close()
    return log_dir


def environment() -> dict:
    """Versions, device and code revision, so a result can be traced to what produced it."""
    import keras
    import sklearn
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name) for gpu in gpus]
        device = f"GPU: {', '.join(names)}"
    else:
        device = f"CPU: {cpu_name()} ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "platform": platform.platform(),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # which GPU run_all.py --jobs gave this run
        "git_commit": _git_commit(),
    }


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def cpuinfo(field: str) -> str | None:
    """A field of the first processor in /proc/cpuinfo (Linux); None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    """HEAD's commit, with '-dirty' when tracked code differs from it; None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "covid_mobilenet", "notebooks"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if changed else "")


def peak_rss_gib() -> float | None:
    """The largest resident memory this process has had, in GiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform != "darwin" else peak / (1 << 30)  # KiB on Linux, bytes on macOS
