"""int8 against float32 LiteRT, side by side on one trained run's whole test split (``product/export.py`` measures)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..analysis.results import RunNotFound, best_run
from ..common.paths import PROJECT_ROOT
from ..product.export import export_run


def quantization_run() -> Path | None:
    """The best finished run on the real data, else the best demo run, else None."""
    for allow_demo, folder in ((False, PROJECT_ROOT / "results"), (True, PROJECT_ROOT / "results" / "demo")):
        try:
            return best_run(folder, allow_demo=allow_demo)
        except RunNotFound:
            continue
    return None


def measure_quantization(run: Path | None) -> dict:
    """int8 against float32 LiteRT, side by side on one run's whole test split (export.py does the measuring)."""
    if run is None:
        return {"skipped": "no finished run with a saved model: run `python run_all.py --demo` (or the real sweep) first"}
    with tempfile.TemporaryDirectory() as folder:
        record = export_run(run, Path(folder), threads=1)
    ratios = record["int8_vs_float32"]
    return {
        "run": str(run), "demo": record["demo"], "test_images": record["test_images"], "threads": record["threads"],
        "formats": record["formats"],
        "int8_vs_float32": {"latency_ratio": ratios["latency_ratio"], "size_ratio": ratios["size_ratio"],
                            "accuracy_difference_vs_float32": 100 * ratios["accuracy_difference_vs_float32"]},  # points
    }
