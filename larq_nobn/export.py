"""Deployment: fold weight standardization away and convert with larq-compute-engine.

```python
from larq_nobn import export
flatbuffer = export.convert(model)                 # bytes of a TFLite model
agreement = export.top1_agreement(model, flatbuffer, images)
```
Needs the `lce` extra: `pip install larq-nobn[lce]`.
"""

import collections

import larq as lq
import numpy as np
import tensorflow as tf

from larq_nobn.layers import ScaledWSQuantConv2D, silence_starved_weights_warning

_WS_ONLY_KEYS = ("gamma", "eps", "gain_initializer")


def _lce():
    try:
        import larq_compute_engine
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "Export needs larq-compute-engine: pip install 'larq-nobn[lce]'"
        ) from error
    return larq_compute_engine


def fold_weight_standardization(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model with every scaled-WS convolution made a plain one.

    Each `ScaledWSQuantConv2D` becomes a `larq.layers.QuantConv2D` whose kernel is the
    effective kernel `gain * Q(W_hat)`, computed once. For a binary layer that kernel is
    `+-c` per output channel: it gets larq's identity quantizer marked 1-bit
    (`NoOp(precision=1)`), so the folded model computes bit for bit what the original
    computes, larq's summary still counts the kernel as binary, and larq-compute-engine
    sees an ordinary binary convolution with a per-channel scale. Every other layer and
    weight is copied.

    Args:
        model: a functional Keras model.

    Returns:
        A new model computing the same function (to float32 rounding).
    """
    config = model.get_config()
    folded = {}
    for layer_config in config["layers"]:
        layer = model.get_layer(layer_config["config"]["name"])
        if isinstance(layer, ScaledWSQuantConv2D):
            layer_config["class_name"] = "QuantConv2D"
            for key in (*_WS_ONLY_KEYS, "input_quantizer", "kernel_quantizer"):
                layer_config["config"].pop(key, None)
            layer_config["config"]["input_quantizer"] = lq.quantizers.serialize(
                layer.input_quantizer
            )
            binary = getattr(layer.kernel_quantizer, "precision", None) == 1
            layer_config["config"]["kernel_quantizer"] = (
                lq.quantizers.serialize(lq.quantizers.NoOp(precision=1)) if binary else None
            )
            layer_config["config"]["kernel_constraint"] = None
            layer_config["config"].pop("module", None)
            layer_config.pop("module", None)
            layer_config.pop("registered_name", None)
            with lq.context.quantized_scope(True):
                effective = layer._get_quantizer("kernel")(layer.kernel.latent_variable)
            folded[layer.name] = [effective.numpy()] + [
                w.numpy() for w in layer.weights if w.name.split("/")[-1].startswith("bias")
            ]
    with silence_starved_weights_warning():
        clone = tf.keras.Model.from_config(
            config, custom_objects={"QuantConv2D": lq.layers.QuantConv2D}
        )
    for layer in model.layers:
        target = clone.get_layer(layer.name)
        if layer.name in folded:
            target.set_weights(folded[layer.name])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return clone


def convert(model: tf.keras.Model, fold: bool = True, **kwargs) -> bytes:
    """A TFLite flatbuffer of `model` through larq-compute-engine.

    Args:
        model: a functional Keras model (e.g. a zoo model, in stage 2 for binary weights).
        fold: fold the weight standardization first (`fold_weight_standardization`).
        **kwargs: passed to `larq_compute_engine.convert_keras_model`.

    Returns:
        The flatbuffer bytes.
    """
    if fold:
        model = fold_weight_standardization(model)
    return _lce().convert_keras_model(model, **kwargs)


def op_counts(flatbuffer: bytes) -> collections.Counter:
    """How many operators of each kind (builtin names, custom codes such as LceBconv2d)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    counts = collections.Counter()
    for subgraph in tflite.subgraphs:
        for op in subgraph.operators:
            code = tflite.operatorCodes[op.opcodeIndex]
            if code.customCode:
                counts[code.customCode.decode()] += 1
            else:
                builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
                counts[builtin_names.get(builtin, str(builtin))] += 1
    return counts


def predict(flatbuffer: bytes, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Runs the flatbuffer in larq-compute-engine's interpreter, one image at a time."""
    interpreter = _lce().testing.Interpreter(flatbuffer, num_threads=num_threads)
    return np.concatenate([interpreter.predict(image[None]) for image in images])


def top1_agreement(model: tf.keras.Model, flatbuffer: bytes, images: np.ndarray) -> float:
    """Fraction of `images` whose top-1 class is the same in Keras and in the flatbuffer."""
    keras_top1 = np.argmax(model(images, training=False).numpy(), axis=-1)
    return float(np.mean(np.argmax(predict(flatbuffer, images), axis=-1) == keras_top1))
