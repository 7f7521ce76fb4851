"""What a run does with the hardware it finds: the precision policy, and one device or several.

- ``precision="auto"``: mixed_float16 on a GPU of compute capability 7.0 or more
  (tensor cores); on a CPU, mixed_bfloat16 only where the CPU has bfloat16
  instructions *and* this machine's benchmark (``results/bench.json``) measured it
  faster than float32, else float32. The output layer stays float32 in every policy.
- Several GPUs visible to one run: ``tf.distribute.MirroredStrategy``, one replica per
  GPU, ``batch_size`` per replica (the global batch is scaled by the replicas, the
  learning rate is not).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from ..common.machine import cpu_name, cpuinfo
from ..common.paths import BENCH_FILE

CPU_BFLOAT16_FLAGS = {"avx512_bf16", "amx_bf16"}


@dataclass
class Runtime:
    precision: str
    precision_reason: str
    strategy: tf.distribute.Strategy
    devices: list[str]

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def global_batch(self, batch_size: int) -> int:
        return batch_size * self.replicas

    def describe(self) -> dict:
        return {
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "strategy": type(self.strategy).__name__,
            "replicas": self.replicas,
            "devices": self.devices,
        }


def configure(precision: str, devices: list[str] | None = None) -> Runtime:
    """Set Keras' global precision policy and pick the distribution strategy.

    ``devices``: the devices to replicate over (default: every visible GPU when there are
    two or more); a test passes two logical CPUs.
    """
    gpus = tf.config.list_physical_devices("GPU")
    chosen, reason = choose_precision(precision, [_compute_capability(gpu) for gpu in gpus], cpu_flags(), BENCH_FILE)
    keras.mixed_precision.set_global_policy(chosen)
    if devices is None:
        devices = [device.name for device in tf.config.list_logical_devices("GPU")]
    if len(devices) >= 2:
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        strategy = tf.distribute.get_strategy()  # the default: one device
        devices = devices or [device.name for device in tf.config.list_logical_devices("CPU")][:1]
    return Runtime(chosen, reason, strategy, list(devices))


def choose_precision(
    setting: str, gpu_capabilities: list[tuple[int, int] | None], flags: set[str], bench_file: Path
) -> tuple[str, str]:
    """(policy name, why) for a ``precision`` parameter on this hardware."""
    if setting != "auto":
        return setting, "set by the precision parameter"
    if gpu_capabilities:
        if all(cc is not None and cc >= (7, 0) for cc in gpu_capabilities):
            return "mixed_float16", f"GPU compute capability {min(gpu_capabilities)} >= 7.0"
        return "float32", "GPU below compute capability 7.0 (no tensor cores)"
    if not flags & CPU_BFLOAT16_FLAGS:
        return "float32", "CPU without bfloat16 instructions"
    measured = _measured_cpu_precision(bench_file)
    if measured is None:
        return "float32", f"CPU has bfloat16 instructions, but {bench_file.name} has no bfloat16 measurement for this machine"
    float32, bfloat16 = measured
    if bfloat16 > float32:
        return "mixed_bfloat16", f"the benchmark measured {bfloat16:.1f} images/s with bfloat16 against {float32:.1f} with float32"
    return "float32", f"the benchmark measured {bfloat16:.1f} images/s with bfloat16, not faster than {float32:.1f} with float32"


def _measured_cpu_precision(bench_file: Path) -> tuple[float, float] | None:
    """(float32, mixed_bfloat16) training images/s from this machine's benchmark, if it measured both."""
    try:
        bench = json.loads(Path(bench_file).read_text())
        machine, figures = bench["machine"], bench["precision"]
        if machine["cpu"] != cpu_name() or machine["cpu_count"] != os.cpu_count() or machine.get("gpus"):
            return None
        return float(figures["float32"]["images_per_second"]), float(figures["mixed_bfloat16"]["images_per_second"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


def cpu_has_bfloat16() -> bool:
    return bool(cpu_flags() & CPU_BFLOAT16_FLAGS)


def _compute_capability(gpu) -> tuple[int, int] | None:
    try:
        return tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability"))
    except (TypeError, ValueError):
        return None
