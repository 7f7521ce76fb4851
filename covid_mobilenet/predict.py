"""The command ``python -m covid_mobilenet.predict``: a trained model applied to images (``product/predict.py``)."""
import sys

from .product.predict import main

if __name__ == "__main__":
    sys.exit(main())
