"""The command ``python -m covid_mobilenet.benchmark``: the speed and memory figures, side by side (``bench/cli.py``)."""
import sys

from .bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
