"""The command ``python -m covid_mobilenet.demo``: writes the synthetic demo set (``data/demo.py``)."""
import sys

from .data.demo import main

if __name__ == "__main__":
    sys.exit(main())
