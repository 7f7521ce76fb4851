"""MobileNet fine-tuning on the COVID-19 Radiography data set, reproducibly.

Modules, each with one job:

- ``data``: find the data set, list and validate its images, split them.
- ``pipeline``: the tf.data input pipeline over a split.
- ``demo``: a synthetic data set in the real layout, for offline runs and tests.
"""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["PROJECT_ROOT"]
