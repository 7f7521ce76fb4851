"""Data in: the data set's layout, finding it (or downloading it), checking every image, the split, the lung
masks and image sources, the tf.data pipeline, and the synthetic demo set and pretext pictures made offline.

May import ``common`` only. Everything here but ``pipeline`` is free of TensorFlow.
"""
