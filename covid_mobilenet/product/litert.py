"""LiteRT: converting a SavedModel into flatbuffers (float32, float16 weights, full-integer int8) and running
one, an image at a time, with the timing ``export`` reports. ``ai-edge-litert``'s interpreter, or
``tf.lite.Interpreter`` where that is missing."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..analysis.metrics import EPSILON

WARMUP = 10  # single-image calls before any is timed


def interpreter_class():
    """LiteRT's interpreter and its op resolver choices, or TensorFlow's copy of them where ai-edge-litert is not
    installed; and the runtime's name."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType, "tf.lite"


def with_temperature(model, temperature: float):
    """``model`` followed by temperature scaling, softmax(log p / T), as one Keras model to export: the LiteRT
    files then give calibrated probabilities themselves (T is folded into them, not left to the code that runs them)."""
    import keras

    class TemperatureScaling(keras.layers.Layer):
        def call(self, probabilities):
            logits = keras.ops.log(keras.ops.maximum(probabilities, EPSILON)) / temperature
            return keras.ops.softmax(logits, axis=-1)

    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="pixels")
    return keras.Model(inputs, TemperatureScaling(name="temperature_scaling")(model(inputs)), name=f"{model.name}_calibrated")


def convert(saved_model: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    """One LiteRT flatbuffer of the SavedModel: float32, float16 weights, or full-integer int8 (uint8 in and out)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        def representative_dataset():
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


class LiteModel:
    """A LiteRT model run one image at a time, quantizing its input and dequantizing its output as it needs."""

    def __init__(self, path: Path, threads: int):
        interpreter, resolvers, self.runtime = interpreter_class()
        self.interpreter = interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        try:  # the default XNNPACK delegate is applied at the first call: a blank image tries it before any timing
            self(np.zeros(self.input["shape"][1:], np.uint8))
        except RuntimeError as exc:
            if "XNNPACK" not in str(exc):
                raise
            # On some CPUs and models XNNPACK claims a node it then cannot prepare (google/XNNPACK#11036, seen here with
            # int8 models at 32 px on a CPU without AVX-512); LiteRT's own kernels run the same flatbuffer.
            self.interpreter = interpreter(model_path=str(path), num_threads=threads,
                                           experimental_op_resolver_type=resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            self.interpreter.allocate_tensors()
            self.runtime += " with its own kernels (the XNNPACK delegate failed to prepare this model)"

    @property
    def input_dtype(self):
        return self.input["dtype"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        if self.input["dtype"] == np.float32:
            value = image[None].astype(np.float32)
        else:  # quantized input: q = x / scale + zero (for raw pixels the scale is about 1)
            info = np.iinfo(self.input["dtype"])
            value = np.clip(np.round(image[None] / scale + zero), info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], value)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self.output["index"])[0]
        scale, zero = self.output["quantization"]
        return (out.astype(np.float32) - zero) * scale if self.output["dtype"] != np.float32 else out


def measure(predict_one, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """(probabilities of every image, median seconds per image after WARMUP single-image calls)."""
    for image in pixels[:WARMUP]:
        predict_one(image)
    outputs, seconds = [], []
    for image in pixels:
        started = time.perf_counter()
        outputs.append(np.asarray(predict_one(image), dtype=np.float64))
        seconds.append(time.perf_counter() - started)
    return np.stack(outputs), float(np.median(seconds))


def keras_single_image(model):
    """The Keras model called on one image, compiled once (the fair single-image latency of Keras)."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda image: call(image[None])[0].numpy()
