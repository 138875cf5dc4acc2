"""Sign ties: where float32 rounding in another order may binarize a value the other way.

A binary network's output is not continuous in its inputs: a sign input within rounding of
zero binarizes either way, and that one flip moves a whole convolution's outputs and spreads
through the later blocks. Two correct implementations (Keras and PyTorch, Keras and a
TFLite flatbuffer, or one of them on two CPUs) can so disagree on an image, by far more than
rounding. These helpers find, per image, whether the first binarization that differs is
such a tie, so that the tests can be strict on every other image.
"""

import numpy as np
import tensorflow as tf

# |sign input| below which float32 rounding in another order may flip the sign: the sign
# inputs (up to ~5) of a loaded ReActNet-A differ by up to 2e-6 from PyTorch's and 4e-6
# from its flatbuffer's; tests/zoo/test_torch_weights.py checks that PyTorch's stay within
# half of it on every image without a flip.
TIE = 1e-5
# The share of a batch's images that may be ties: anything up to this. The bound only keeps
# a comparison from being vacuous (three images in four compared strictly); which images
# are ties, TIE decides.
MAX_TIE_SHARE = 0.25


def sign_input_layers(model: tf.keras.Model) -> list[str]:
    """The layers whose outputs `model` binarizes, in the model's order."""
    return list(
        dict.fromkeys(
            layer.inbound_nodes[0].inbound_layers.name
            for layer in model.layers
            if getattr(getattr(layer, "input_quantizer", None), "precision", None) == 1
        )
    )


def sign_inputs(model: tf.keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """What `model` binarizes on `x`, by the name of the layer computing it, in order."""
    names = sign_input_layers(model)
    outputs = tf.keras.Model(model.inputs, [model.get_layer(n).output for n in names])(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]  # Keras unpacks one output
    return {name: output.numpy() for name, output in zip(names, outputs, strict=True)}


def flatbuffer_outputs(flatbuffer: bytes, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The flatbuffer's logits on `x`, and its binarizations (+-1) by the name of the Keras
    layer whose outputs they binarize: every `LceQuantize`'s output made a model output."""
    import larq_compute_engine
    from tensorflow.lite.tools import flatbuffer_utils

    tflite = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = tflite.subgraphs[0]
    quantizes = [
        op
        for op in graph.operators
        if tflite.operatorCodes[op.opcodeIndex].customCode == b"LceQuantize"
    ]
    graph.outputs = np.array([*graph.outputs, *(op.outputs[0] for op in quantizes)], np.int32)
    flatbuffer = bytes(flatbuffer_utils.convert_object_to_bytearray(tflite))
    logits, *packed = larq_compute_engine.testing.Interpreter(flatbuffer).predict(x)
    signs = {}
    for op, words in zip(quantizes, packed, strict=True):
        tensor = graph.tensors[op.inputs[0]]  # named "<model>/<layer>/<op>[;<fused>...]"
        # 32 channels per int32, the first in the lowest bit; a set bit is -1.
        bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
        signs[tensor.name.decode().split(";")[0].split("/")[1]] = (
            1.0 - 2.0 * bits[..., : tensor.shape[-1]]
        )
    return logits, signs


def ties(inputs: dict[str, np.ndarray], signs: dict[str, np.ndarray]) -> np.ndarray:
    """Per image, whether the first of Keras' sign `inputs` (in order) that `signs`
    binarizes differently from larq (+1 at 0) differs only where |input| < TIE: an image
    that float32 rounding sends down another path, whose logits can then differ by far
    more than rounding."""
    batch = len(next(iter(inputs.values())))
    tie, decided = np.zeros(batch, bool), np.zeros(batch, bool)
    for name, x in inputs.items():
        flips = (np.where(x >= 0, 1.0, -1.0) != signs[name]).reshape(batch, -1)
        first = flips.any(axis=1) & ~decided
        tie |= first & ~(flips & (np.abs(x) >= TIE).reshape(batch, -1)).any(axis=1)
        decided |= first
    return tie
