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

from larq_nobn import quiet
from larq_nobn.layers import LearnableBias, ScaledWSQuantConv2D, silence_starved_weights_warning

_WS_ONLY_KEYS = ("gamma", "eps", "gain_initializer", "kernel_scale")


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
    return _rebuild(model, config, folded)


def _rebuild(model: tf.keras.Model, config: dict, weights: dict[str, list]) -> tf.keras.Model:
    """A model from an edited `config` of `model`, with `model`'s weights, except where
    `weights` gives a layer's new ones."""
    with silence_starved_weights_warning():
        clone = tf.keras.Model.from_config(
            config, custom_objects={"QuantConv2D": lq.layers.QuantConv2D}
        )
    for layer in clone.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def _sign_quantizers() -> tuple[type, ...]:
    """larq's input quantizers whose forward pass is sign(x) (+1 at 0)."""
    names = ("SteSign", "ApproxSign", "SwishSign")
    return tuple(getattr(lq.quantizers, n) for n in names if hasattr(lq.quantizers, n))


def fold_scales_before_signs(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model without the rescalings that only a sign sees.

    In the BN-free networks a block input is scaled by beta, shifted by a learnable bias
    and binarized: `sign(beta * x + b)`. For beta > 0 that is `sign(x + b / beta)`, so
    where a `Rescaling(beta)` (no offset) feeds a `LearnableBias` whose outputs go only to
    the sign input quantizers of convolutions, the bias is divided by beta and reads `x`
    directly; a rescaling left with no consumer is removed. On an engine this drops one
    multiplication over a feature map per block. The binarized values are the same except
    where `beta * x + b` rounds to the other side of 0 than `x + b / beta`, a tie at the
    float32 rounding level.

    Args:
        model: a functional Keras model.

    Returns:
        A new model; `model` itself is left as it is.
    """
    config = model.get_config()
    by_name = {c["config"]["name"]: c for c in config["layers"]}
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for layer_config in config["layers"]:
        for node in layer_config["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]].append(layer_config["config"]["name"])
    outputs = {output[0] for output in config["output_layers"]}
    signs = _sign_quantizers()

    def feeds_signs_only(name: str) -> bool:
        layers = [model.get_layer(n) for n in consumers[name]]
        return (
            bool(layers)
            and name not in outputs
            and all(isinstance(getattr(layer, "input_quantizer", None), signs) for layer in layers)
        )

    new_biases = {}
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.Rescaling):
            continue
        scale = np.asarray(layer.scale, dtype=np.float64)
        if scale.size != 1 or not float(scale) > 0 or np.any(np.asarray(layer.offset) != 0):
            continue
        rescaling = by_name[layer.name]
        if len(rescaling["inbound_nodes"]) != 1:
            continue
        for name in list(consumers[layer.name]):
            bias = model.get_layer(name)
            if type(bias) is not LearnableBias or not feeds_signs_only(name):
                continue
            by_name[name]["inbound_nodes"] = rescaling["inbound_nodes"]
            new_biases[name] = [w / float(scale) for w in bias.get_weights()]
            consumers[layer.name].remove(name)
        if not consumers[layer.name] and layer.name not in outputs:
            config["layers"].remove(rescaling)
    return _rebuild(model, config, new_biases)


def convert(model: tf.keras.Model, fold: bool = True, **kwargs) -> bytes:
    """A TFLite flatbuffer of `model` through larq-compute-engine.

    Args:
        model: a functional Keras model (e.g. a zoo model, in stage 2 for binary weights).
        fold: fold the weight standardization (`fold_weight_standardization`) and the
            rescalings that only a sign sees (`fold_scales_before_signs`) first.
        **kwargs: passed to `larq_compute_engine.convert_keras_model`.

    Returns:
        The flatbuffer bytes.
    """
    if fold:
        model = fold_scales_before_signs(fold_weight_standardization(model))
    # Saving for the converter skips the quantizer objects larq keeps as layers, with one
    # warning each; they are not part of the graph it converts.
    with quiet.logger_filtered("tensorflow", "Skipping full serialization of TF-Keras layer"):
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
