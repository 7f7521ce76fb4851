"""The command ``python -m covid_mobilenet.app``: a local web page for a trained run (``product/app.py``)."""
import sys

from .product.app import main

if __name__ == "__main__":
    sys.exit(main())
