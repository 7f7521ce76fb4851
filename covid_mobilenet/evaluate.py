"""The command ``python -m covid_mobilenet.evaluate``: a trained run on another collection (``product/external.py``)."""
import sys

from .product.external import main

if __name__ == "__main__":
    sys.exit(main())
