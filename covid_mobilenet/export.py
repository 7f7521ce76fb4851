"""The command ``python -m covid_mobilenet.export``: a run's model to LiteRT, measured, with its model card
(``product/export.py``)."""
import sys

from .product.export import main

if __name__ == "__main__":
    sys.exit(main())
