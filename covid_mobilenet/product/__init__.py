"""The trained model as a product: loading a run's model and predicting on images (with Grad-CAM), exporting it
to LiteRT (float32, float16, int8) measured on its test split, and its model card.

Reads run files and the model: may import ``analysis`` (which run is best), ``model``, ``data`` and ``common``;
never the run's steps or the sweep.
"""
