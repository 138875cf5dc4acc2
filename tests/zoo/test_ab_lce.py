"""A&B BNN's models, loaded from its released format, through larq-compute-engine: the
mask layer folded away, every binary convolution an `LceBconv2d`, every quantized RPReLU's
slopes exact powers of two in one PRELU operator, and the Keras model's top-1 on digits.

The PyTorch models are `ab_torch_models`' (A&B BNN's published structure, random weights,
`L_alpha` spread over several integers), saved as its released files are.
"""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import export, zoo
from tests.zoo.images import digits
from tests.zoo.optional_torch import ab_torch_models
from tests.zoo.sign_ties import flatbuffer_outputs, sign_inputs, ties

pytestmark = pytest.mark.torch  # see tests/zoo/optional_torch.py


TOLERANCE = 1e-4  # max |tflite - keras| / max |keras| over a batch of logits
NUM_CLASSES = 10
SIZE = 32
CASES = [(b, s) for b in ("reactnet18", "reactnet_a") for s in zoo.STEMS]


def loaded_model(backbone: str, stem: str, path) -> tf.keras.Model:
    net = ab_torch_models.build(backbone, 2, NUM_CLASSES, stem, seed=CASES.index((backbone, stem)))
    ab_torch_models.save_released(net, path)
    tf.keras.utils.set_random_seed(0)
    return zoo.from_torch(path, stage=2, stem=stem, input_shape=(SIZE, SIZE, 3))


def is_binary(layer) -> bool:
    """Binary inputs and binary weights: what `LceBconv2d` computes."""
    return all(
        getattr(getattr(layer, q, None), "precision", None) == 1
        for q in ("input_quantizer", "kernel_quantizer")
    )


@pytest.mark.parametrize(
    "backbone,stem",
    [pytest.param(b, s, marks=pytest.mark.slow(30 if b == "reactnet18" else 50)) for b, s in CASES],
)
def test_loaded_ab_model_exports_bconvs_shifts_and_its_top1(backbone, stem, tmp_path):
    model = loaded_model(backbone, stem, tmp_path / f"cifar10_{backbone}_step2.h5")

    # The mask layer: every beta scales only what a sign sees, so none is left.
    def rescalings(m):
        return [layer for layer in m.layers if isinstance(layer, tf.keras.layers.Rescaling)]

    assert len(rescalings(model)) >= 10
    folded = export.fold_scales_before_signs(export.fold_weight_standardization(model))
    assert rescalings(folded) == []

    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    binary = [layer for layer in convs if is_binary(layer)]
    assert len(binary) == {"reactnet18": 16, "reactnet_a": 31}[backbone]
    assert counts["LceBconv2d"] == len(binary)  # every one
    # Float convolutions: the first, and ReActNet-18's downsample 1x1s (real inputs).
    assert counts["CONV_2D"] == len(convs) - len(binary)
    # Neither a beta nor a slope is a MUL: no multiplication operator at all.
    assert not {"MUL", "MINIMUM"} & set(counts)

    # The slopes, as the engine reads them: exact powers of two, the Keras model's.
    expected = {
        layer.name: layer.slopes().numpy()
        for layer in model.layers
        if isinstance(layer, larq_nobn.QuantizedPReLU)
    }
    slopes = export.prelu_slopes(flatbuffer)
    assert slopes.keys() == expected.keys()
    for name, values in slopes.items():
        assert values.dtype == np.float32 and values.shape == (1, 1, expected[name].size)
        mantissas, _ = np.frexp(values)
        assert np.all(mantissas == 0.5), name
        np.testing.assert_array_equal(values.ravel(), expected[name])
    exponents = np.log2(np.concatenate(list(expected.values())))
    assert len(np.unique(exponents)) >= 5  # L spread over several integers, not all -3

    # Top-1 on real images: every digit but those whose first differing sign is a tie
    # (the flatbuffer binarizes x + b / beta where Keras binarizes beta * x + b).
    x = digits(SIZE)[0][-48:]
    logits = model(x, training=False).numpy()
    flat_logits, flat_signs = flatbuffer_outputs(flatbuffer, x)
    inputs = sign_inputs(model, x)
    assert flat_signs.keys() == inputs.keys()
    tie = ties(inputs, flat_signs)
    assert np.mean(tie) < 0.1
    errors = np.abs(flat_logits - logits).max(axis=1) / np.abs(logits).max()
    same_top1 = np.argmax(flat_logits, -1) == np.argmax(logits, -1)
    assert np.all(((errors < TOLERANCE) & same_top1) | tie)
