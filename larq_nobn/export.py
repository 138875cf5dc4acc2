"""Deployment: fold weight standardization away and convert with larq-compute-engine.

```python
from larq_nobn import export
flatbuffer = export.convert(model)                 # bytes of a TFLite model
agreement = export.top1_agreement(model, flatbuffer, images)
```
Needs the `lce` extra: `pip install larq-nobn[lce]`.
"""

import collections
import dataclasses
import logging
import tempfile

import larq as lq
import numpy as np
import tensorflow as tf

from larq_nobn.layers import (
    LearnableBias,
    QuantizedPReLU,
    ScaledWSQuantConv2D,
    silence_starved_weights_warning,
)
from larq_nobn.quantizers import SigmoidSign

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
    return _rebuild(model, config, _fold_weight_standardization(model, config))


def _fold_weight_standardization(model: tf.keras.Model, config: dict) -> dict[str, list]:
    """`fold_weight_standardization` as an edit of `config` in place: `model.get_config()`,
    possibly edited already by the other rewrites, which keep the layers this one reads.

    Returns:
        The weights of the new layers, by name.
    """
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
    return folded


def _rebuild(model: tf.keras.Model, config: dict, weights: dict[str, list]) -> tf.keras.Model:
    """A model from an edited `config` of `model`, with `model`'s weights, except where
    `weights` gives a layer's new ones (every layer `model` does not have needs them)."""
    with silence_starved_weights_warning():
        clone = tf.keras.Model.from_config(config, custom_objects=_custom_objects())
    for layer in clone.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def _custom_objects() -> dict[str, type]:
    """The classes of the layers that the rewrites put in a config."""
    return {"QuantConv2D": lq.layers.QuantConv2D, "ConstantOffset": ConstantOffset}


@tf.keras.utils.register_keras_serializable("larq_nobn")
class ConstantOffset(tf.keras.layers.Layer):
    """Adds a constant tensor of the inputs' shape (batch axis excluded): `inputs + offset`.

    The zero-padding correction of `pad_small_binary_inputs_with_ones`; its one weight is
    not trainable.
    """

    def build(self, input_shape):
        self.offset = self.add_weight(
            name="offset", shape=tuple(input_shape[1:]), initializer="zeros", trainable=False
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + tf.cast(self.offset, inputs.dtype)


def _kernel_exceeds_binary_input(layer: tf.keras.layers.Layer) -> bool:
    """Whether `layer` is a binary convolution with "same" zero padding whose (dilated)
    kernel is larger than its input in height or width."""
    if not isinstance(layer, lq.layers.QuantConv2D) or layer.padding != "same":
        return False
    if tf.is_tensor(layer.pad_values) or layer.pad_values != 0.0:
        return False
    if not isinstance(layer.input_quantizer, _sign_quantizers()):
        return False
    if getattr(layer.kernel_quantizer, "precision", None) != 1:
        return False
    if layer.data_format != "channels_last" or len(layer.inbound_nodes) != 1:
        return False
    spatial = layer.input_shape[1:3]
    kernel = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation_rate, strict=True)]
    return all(s is not None for s in spatial) and any(
        s < k for s, k in zip(spatial, kernel, strict=True)
    )


def _consumers(config: dict) -> dict[str, list[str]]:
    """The names of the layers that read each layer's outputs, from a functional config."""
    consumers: dict[str, list[str]] = collections.defaultdict(list)
    for layer_config in config["layers"]:
        for node in layer_config["inbound_nodes"]:
            for inbound in node:
                consumers[inbound[0]].append(layer_config["config"]["name"])
    return consumers


def _carry_offset(model: tf.keras.Model, name: str, offset: np.ndarray, consumers):
    """Where the constant `offset` on the outputs of layer `name` can be added instead:
    after the first `Add` that the outputs reach through single-consumer batch norms
    (inference: the offset scaled) and 1x1 subsampling poolings (the offset subsampled),
    and the offset there; None if they reach anything else first."""
    while len(consumers[name]) == 1:
        layer = model.get_layer(consumers[name][0])
        if isinstance(layer, tf.keras.layers.Add):
            return layer.name, offset
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.axis in ([3], [-1]):
            weights = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}
            factor = 1.0 / np.sqrt(weights["moving_variance"] + layer.epsilon)
            offset = offset * (factor * weights["gamma"] if layer.scale else factor)
        elif (
            isinstance(layer, tf.keras.layers.AveragePooling2D)
            and tuple(layer.pool_size) == (1, 1)
            and layer.padding == "valid"
            and layer.data_format == "channels_last"
        ):
            offset = offset[:: layer.strides[0], :: layer.strides[1]]
        else:
            return None
        name = layer.name
    return None


def pad_small_binary_inputs_with_ones(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model with the binary convolutions that larq-compute-engine
    would get wrong padded with ones, and corrected by a constant.

    A sign's outputs are bitpacked, in which 0 cannot be written: `LceBconv2d` computes
    "same" zero padding as padding with +1, then subtracts the padded taps' share of each
    border output from a table cached per output channel (`zero_padding_correction.h`).
    That table assumes that the kernel is smaller than the input (so that a window sticks
    out on at most one side per axis); where it is not, e.g. a 3x3 convolution over a 2x2
    or 1x1 feature map (ReActNet-A's last stage at 64x64 or 32x32 inputs), the correction
    is silently skipped and the outputs are those of padding with ones.

    Each such convolution (`padding="same"`, `pad_values=0`, sign inputs, a 1-bit kernel
    quantizer, known input height and width) is given `pad_values=1.0`, which the converter
    maps to the kernel's native one-padding, and the padded ones' contribution, which
    depends on the kernel and the output position only, is subtracted: `conv_0(x) =
    conv_1(x) + (conv_0(1) - conv_1(1))` for every binary `x`, the offset computed by the
    layer itself on an input of ones. The offset is added by a `ConstantOffset` after the
    residual `Add` that the convolution feeds (through its batch norm and subsampling,
    which scale and subsample the offset): directly after the convolution, the converter
    would fuse it into `LceBconv2d`'s per-channel bias without checking its shape, and the
    flatbuffer would not load. The outputs are the same, to float32 rounding. A
    convolution whose outputs reach anything else first is left as it is, with a warning.

    Args:
        model: a functional Keras model.

    Returns:
        A new model, or `model` itself if no convolution needs this.
    """
    config = model.get_config()
    offsets = _pad_small_binary_inputs_with_ones(model, config, {})
    return _rebuild(model, config, offsets) if offsets else model


def _pad_small_binary_inputs_with_ones(
    model: tf.keras.Model, config: dict, weights: dict[str, list]
) -> dict[str, list]:
    """`pad_small_binary_inputs_with_ones` as an edit of `config` (as in
    `_fold_weight_standardization`), whose earlier edits gave the layers in `weights`
    these new weights.

    Returns:
        The weights of the `ConstantOffset`s added, by name.
    """
    consumers = _consumers(config)
    one_padded, offsets = set(), {}
    for layer_config in config["layers"]:
        layer = model.get_layer(layer_config["config"]["name"])
        # A replaced layer has the attributes that this checks; the offset is computed by
        # the replacement.
        if not _kernel_exceeds_binary_input(layer):
            continue
        input_shape = layer.input_shape
        if layer.name in weights:
            with silence_starved_weights_warning():
                layer = tf.keras.layers.deserialize(layer_config, custom_objects=_custom_objects())
            layer.build(input_shape)
            layer.set_weights(weights[layer.name])
        padded = layer.__class__.from_config({**layer.get_config(), "pad_values": 1.0})
        ones = tf.ones((1, *input_shape[1:]), dtype=layer.compute_dtype)
        padded.build(ones.shape)
        padded.set_weights(layer.get_weights())
        with lq.context.quantized_scope(True):
            offset = (layer(ones) - padded(ones))[0].numpy()
        carried = _carry_offset(model, layer.name, offset, consumers)
        if carried is None:
            logging.getLogger(__name__).warning(
                "%s: larq-compute-engine pads this binary convolution's input, smaller "
                "than its kernel, with ones instead of zeros; its outputs reach no Add "
                "that could take the correction, so it is left as it is.",
                layer.name,
            )
            continue
        one_padded.add(layer.name)
        add, offset = carried
        offsets[add] = offsets.get(add, 0.0) + offset
    if not offsets:
        return {}
    offset_names = {name: f"{name}_zero_padding" for name in offsets}
    for layer_config in config["layers"]:
        for node in layer_config["inbound_nodes"]:
            for inbound in node:
                inbound[0] = offset_names.get(inbound[0], inbound[0])
    for output in config["output_layers"]:
        output[0] = offset_names.get(output[0], output[0])
    layers = []
    for layer_config in config["layers"]:
        layers.append(layer_config)
        name = layer_config["config"]["name"]
        if name in one_padded:
            layer_config["config"]["pad_values"] = 1.0
        if name in offsets:
            layers.append(
                {
                    "class_name": "ConstantOffset",
                    "config": {
                        "name": offset_names[name],
                        "dtype": layer_config["config"]["dtype"],
                    },
                    "name": offset_names[name],
                    "inbound_nodes": [[[name, 0, 0, {}]]],
                }
            )
    config["layers"] = layers
    return {offset_names[n]: [o] for n, o in offsets.items()}


def trim_unread_padding(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model with the zero padding that no window reads removed.

    PyTorch pads a strided convolution symmetrically; the zoo's `padding="torch"` does so
    with a `ZeroPadding2D` before a "valid" convolution (e.g. ReActNet-A's first 3x3/2
    convolution: 1 row and column of zeros on each side of a 64x64 image, of which the
    last row and column is read by no window). larq-compute-engine fuses a zero `PAD`
    into the `CONV_2D` that follows as "same" padding when its split looks like "same"'s
    (`fuse_padding.td`, `IsSamePadding1D`) without comparing the total with the one
    "same" implies, here 1 (0 before, 1 after): the fused convolution reads every window
    one pixel off. Padding only what the windows read (here 1 before, 0 after) gives the
    same outputs, and a pad that the converter either keeps or fuses correctly: its
    total is that of "same" whenever it pads after at all.

    Args:
        model: a functional Keras model.

    Returns:
        A new model, or `model` itself if no padding is trimmed.
    """
    config = model.get_config()
    return _rebuild(model, config, {}) if _trim_unread_padding(model, config) else model


def _trim_unread_padding(model: tf.keras.Model, config: dict) -> bool:
    """`trim_unread_padding` as an edit of `config` (as in `_fold_weight_standardization`).

    Returns:
        Whether any padding is trimmed.
    """
    consumers = _consumers(config)
    by_name = {c["config"]["name"]: c for c in config["layers"]}
    trimmed = False
    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.ZeroPadding2D) or len(consumers[layer.name]) != 1:
            continue
        conv = model.get_layer(consumers[layer.name][0])
        if (
            not isinstance(conv, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D))
            or conv.padding != "valid"
            or conv.data_format != "channels_last"
            or layer.data_format != "channels_last"
        ):
            continue
        padding = [list(pair) for pair in layer.padding]
        for axis in range(2):
            size = layer.input_shape[1 + axis]
            if size is None:
                break
            before, after = padding[axis]
            kernel = (conv.kernel_size[axis] - 1) * conv.dilation_rate[axis] + 1
            stride = conv.strides[axis]
            outputs = (size + before + after - kernel) // stride + 1
            read = (outputs - 1) * stride + kernel  # padded rows the windows cover
            padding[axis][1] = max(min(after, read - size - before), 0)
        else:
            if padding != [list(pair) for pair in layer.padding]:
                by_name[layer.name]["config"]["padding"] = tuple(map(tuple, padding))
                trimmed = True
    return trimmed


def _sign_quantizers() -> tuple[type, ...]:
    """The input quantizers whose forward pass is sign(x) (+1 at 0): larq's sign
    quantizers and A&B BNN's `SigmoidSign` (only their gradients differ)."""
    names = ("SteSign", "ApproxSign", "SwishSign")
    larq_signs = tuple(getattr(lq.quantizers, n) for n in names if hasattr(lq.quantizers, n))
    return (*larq_signs, SigmoidSign)


def fold_scales_before_signs(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model without the rescalings that only a sign sees.

    In the BN-free networks a block input is scaled by beta, shifted by a learnable bias
    and binarized: `sign(beta * x + b)`. For beta > 0 that is `sign(x + b / beta)`, so
    where a `Rescaling(beta)` (no offset) feeds a `LearnableBias` whose outputs go only to
    the sign input quantizers of convolutions (larq's sign quantizers, `SigmoidSign`), the
    bias is divided by beta and reads `x` directly; a rescaling left with no consumer is
    removed. On an engine this drops one multiplication over a feature map per block. In
    A&B BNN's design, whose shortcuts take the unscaled input, every beta goes: this is its
    "mask layer" removed at inference. The binarized values are the same except
    where `beta * x + b` rounds to the other side of 0 than `x + b / beta`, a tie at the
    float32 rounding level.

    Args:
        model: a functional Keras model.

    Returns:
        A new model; `model` itself is left as it is.
    """
    config = model.get_config()
    return _rebuild(model, config, _fold_scales_before_signs(model, config))


def _fold_scales_before_signs(model: tf.keras.Model, config: dict) -> dict[str, list]:
    """`fold_scales_before_signs` as an edit of `config` (as in
    `_fold_weight_standardization`).

    Returns:
        The new biases, by layer name.
    """
    by_name = {c["config"]["name"]: c for c in config["layers"]}
    consumers = _consumers(config)
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
    return new_biases


def quantized_prelus_as_prelus(model: tf.keras.Model) -> tf.keras.Model:
    """The same functional model with every `QuantizedPReLU` a Keras `PReLU` of its slopes.

    A `QuantizedPReLU` computes `max(x, 0) + 2 ** round(L) * min(x, 0)` from its exponents
    `L`, which the converter writes as four operators over the feature map (RELU, MINIMUM,
    MUL, ADD). A `PReLU` whose alpha is the slopes `2 ** round(L)`, computed once and
    shared over every axis but the channels, computes the same, bit for bit (a product by
    a power of two is exact, and `PReLU`'s `-alpha * relu(-x)` is that product), and
    converts to one PRELU operator whose slopes tensor holds the powers of two: what an
    engine without multipliers applies as shifts.

    Args:
        model: a functional Keras model.

    Returns:
        A new model, or `model` itself if it has no `QuantizedPReLU`.

    References:
        - [A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary Neural Network](
          https://arxiv.org/abs/2403.03739)
    """
    config = model.get_config()
    slopes = _quantized_prelus_as_prelus(model, config)
    return _rebuild(model, config, slopes) if slopes else model


def _quantized_prelus_as_prelus(model: tf.keras.Model, config: dict) -> dict[str, list]:
    """`quantized_prelus_as_prelus` as an edit of `config` (as in
    `_fold_weight_standardization`).

    Returns:
        The alphas of the new `PReLU`s, by name.
    """
    alphas = {}
    for i, layer_config in enumerate(config["layers"]):
        layer = model.get_layer(layer_config["config"]["name"])
        if not isinstance(layer, QuantizedPReLU):
            continue
        rank = len(layer.input_shape)
        prelu = tf.keras.layers.PReLU(
            shared_axes=list(range(1, rank - 1)) or None,
            name=layer.name,
            dtype=layer.dtype_policy.name,
            trainable=layer.trainable,
        )
        config["layers"][i] = {
            **tf.keras.layers.serialize(prelu),
            "name": layer.name,
            "inbound_nodes": layer_config["inbound_nodes"],
        }
        slopes = layer.slopes().numpy()
        alphas[layer.name] = [slopes.reshape((1,) * (rank - 2) + slopes.shape)]
    return alphas


def _save_serving_function(model: tf.keras.Model, directory: str) -> None:
    """Saves what larq-compute-engine converts of `model`: its variables and the serving
    signature that `model.save` would write.

    The signature is the same function, traced by the same Keras code
    (`trace_model_call`), so the converter's input, and its flatbuffer, are those of
    `convert_keras_model`; but a SavedModel of the model itself would also trace every
    layer's call functions (for training and for inference), which the converter never
    reads and which took most of its time (ReActNet-18 with batch norm at 16x16: 82 of
    114 s, under cProfile).
    """
    from tf_keras.src.saving.legacy import saving_utils

    root = tf.Module()
    root.variables_ = list(model.variables)
    signature = saving_utils.trace_model_call(model)
    # Nor does it read the gradient functions saved by default.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(root, directory, signatures=signature, options=options)


def convert(model: tf.keras.Model, fold: bool = True, **kwargs) -> bytes:
    """A TFLite flatbuffer of `model` through larq-compute-engine.

    Args:
        model: a functional Keras model (e.g. a zoo model, in stage 2 for binary weights).
        fold: fold the weight standardization (`fold_weight_standardization`) and the
            rescalings that only a sign sees (`fold_scales_before_signs`), and write each
            `QuantizedPReLU` as a `PReLU` of its power-of-two slopes
            (`quantized_prelus_as_prelus`), first.
        **kwargs: passed to `larq_compute_engine.convert_saved_model` (the options of
            `convert_keras_model`).

    Either way, two patterns that the converter or the engine gets wrong are rewritten
    first: symmetric zero padding before a strided convolution (`trim_unread_padding`)
    and binary convolutions whose kernel is larger than their input
    (`pad_small_binary_inputs_with_ones`).

    Returns:
        The flatbuffer bytes: those of `larq_compute_engine.convert_keras_model` on the
        rewritten model.
    """
    if model.dtype_policy.name != "float32":
        raise ValueError(
            f"larq-compute-engine converts float32 models, not {model.dtype_policy.name}"
        )
    # Each rewrite reads layers that the earlier ones leave as they are: one model is
    # built for all of them.
    config, weights = model.get_config(), {}
    if fold:
        weights.update(_fold_weight_standardization(model, config))
        weights.update(_fold_scales_before_signs(model, config))
        weights.update(_quantized_prelus_as_prelus(model, config))
    trimmed = _trim_unread_padding(model, config)
    weights.update(_pad_small_binary_inputs_with_ones(model, config, weights))
    if trimmed or weights:
        model = _rebuild(model, config, weights)
    with tempfile.TemporaryDirectory() as directory:
        _save_serving_function(model, directory)
        return _lce().convert_saved_model(directory, **kwargs)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A tensor of a flatbuffer: its name, shape and, for a constant, its values."""

    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None  # None for what is computed at run time


@dataclasses.dataclass(frozen=True)
class Operator:
    """An operator of a flatbuffer: its kind (a builtin name such as "PRELU", or a custom
    code such as "LceBconv2d"), its inputs (None for an omitted optional one) and outputs."""

    kind: str
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]


def operators(flatbuffer: bytes) -> list[Operator]:
    """The operators of a TFLite flatbuffer, in the order of its subgraphs and their
    execution."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    builtin_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    dtypes = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
    tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))

    def tensor(subgraph, index: int) -> Tensor | None:
        if index < 0:
            return None
        t = subgraph.tensors[index]
        shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
        data = tflite.buffers[t.buffer].data if t.buffer else None
        if data is not None and len(data):
            dtype = np.dtype(dtypes[t.type]) if dtypes[t.type] in np.sctypeDict else np.uint8
            data = np.frombuffer(bytes(data), dtype=dtype)
            data = data.reshape(shape) if data.size == np.prod(shape, dtype=int) else data
        else:
            data = None
        return Tensor(t.name.decode(), shape, data)

    result = []
    for subgraph in tflite.subgraphs:
        for op in subgraph.operators:
            code = tflite.operatorCodes[op.opcodeIndex]
            if code.customCode:
                kind = code.customCode.decode()
            else:
                builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
                kind = builtin_names.get(builtin, str(builtin))
            result.append(
                Operator(
                    kind,
                    tuple(tensor(subgraph, i) for i in op.inputs),
                    tuple(tensor(subgraph, i) for i in op.outputs),
                )
            )
    return result


def op_counts(flatbuffer: bytes) -> collections.Counter:
    """How many operators of each kind (builtin names, custom codes such as LceBconv2d)."""
    return collections.Counter(op.kind for op in operators(flatbuffer))


def prelu_slopes(flatbuffer: bytes) -> dict[str, np.ndarray]:
    """The slopes of every PRELU operator of a flatbuffer, as stored, by the name of the
    Keras layer that it computes (read from its output's name, `<model>/<layer>/...`), or
    by its output's name where that has no layer in it (a model output)."""

    def layer_name(tensor_name: str) -> str:
        parts = tensor_name.split(";")[0].split("/")
        return parts[1] if len(parts) > 2 else tensor_name

    return {
        layer_name(op.outputs[0].name): op.inputs[1].data
        for op in operators(flatbuffer)
        if op.kind == "PRELU"
    }


def predict(flatbuffer: bytes, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Runs the flatbuffer in larq-compute-engine's interpreter, one image at a time."""
    interpreter = _lce().testing.Interpreter(flatbuffer, num_threads=num_threads)
    return np.concatenate([interpreter.predict(image[None]) for image in images])


def top1_agreement(model: tf.keras.Model, flatbuffer: bytes, images: np.ndarray) -> float:
    """Fraction of `images` whose top-1 class is the same in Keras and in the flatbuffer."""
    keras_top1 = np.argmax(model(images, training=False).numpy(), axis=-1)
    return float(np.mean(np.argmax(predict(flatbuffer, images), axis=-1) == keras_top1))
