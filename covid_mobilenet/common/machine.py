"""Facts about the machine and the code a result came from: versions, device, CPU, git commit, peak memory.

TensorFlow is imported only inside ``environment``, when a run records it."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from .revision import git_commit


def environment() -> dict:
    """Versions, device and code revision, so a result can be traced to what produced it."""
    import keras
    import numpy as np
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
        "git_commit": git_commit(),
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


def peak_rss_gib() -> float | None:
    """The largest resident memory this process has had, in GiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform != "darwin" else peak / (1 << 30)  # KiB on Linux, bytes on macOS
