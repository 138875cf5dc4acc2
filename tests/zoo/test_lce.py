"""Stage-2 BN-free zoo models convert to larq-compute-engine binary convolutions."""

import larq_compute_engine  # noqa: F401  (the `lce` extra; CI installs it)
import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import export, zoo
from tests.zoo.images import digits
from tests.zoo.sign_ties import (
    MAX_TIE_SHARE,
    flatbuffer_outputs,
    sign_input_layers,
    sign_inputs,
    ties,
)

# max |tflite - keras| / max |keras| over a batch of logits (float32 rounding: ~1e-6)
TOLERANCE = 1e-4


def assert_flatbuffer_computes_the_model(model, flatbuffer, x) -> np.ndarray:
    """Per image, the flatbuffer's logits equal the model's (to TOLERANCE, same top-1)
    unless the first sign it binarizes otherwise is a tie; returns which images are ties."""
    logits = model(x, training=False).numpy()
    flat_logits, flat_signs = flatbuffer_outputs(flatbuffer, x)
    # The converter fuses each sign's bias into the operation before it, so the quantizers'
    # inputs carry other layers' names; both lists are in the model's order.
    inputs = sign_inputs(model, x)
    tie = ties(inputs, dict(zip(inputs, flat_signs.values(), strict=True)))
    errors = np.abs(flat_logits - logits).max(axis=1) / np.abs(logits).max()
    same_top1 = np.argmax(flat_logits, -1) == np.argmax(logits, -1)
    assert np.all(((errors < TOLERANCE) & same_top1) | tie), (errors, same_top1, tie)
    assert np.mean(tie) <= MAX_TIE_SHARE, tie
    return tie


def relative_error(model, flatbuffer, x) -> float:
    expected = model(x, training=False).numpy()
    return float(np.abs(export.predict(flatbuffer, x) - expected).max() / np.abs(expected).max())


def randomized(model, seed=1):
    """`model` with random learnable biases and batch-norm statistics: at their initial
    zeros and ones, sign thresholds and batch norms would all look alike."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, larq_nobn.LearnableBias):
            layer.set_weights([rng.normal(0, 0.3, size=w.shape) for w in layer.get_weights()])
        elif isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, variance = (w.shape for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma),
                    rng.normal(0, 0.2, beta),
                    rng.normal(0, 1, mean),
                    rng.uniform(0.5, 2, variance),
                ]
            )
    return model


def test_reactnet18_nobn_converts_to_16_binary_convolutions():
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )
    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    # 16 binary 3x3 convolutions; the stem and the 3 downsample 1x1 (real inputs) stay float.
    assert counts["LceBconv2d"] == 16
    assert counts["CONV_2D"] == 4
    x = np.random.default_rng(0).normal(size=(16, 32, 32, 3)).astype("float32")
    assert_flatbuffer_computes_the_model(model, flatbuffer, x)


@pytest.mark.slow(40)
@pytest.mark.parametrize(
    "norm,padding", [("bn", "keras"), ("nobn", "keras"), ("none", "keras"), ("nobn", "torch")]
)
def test_reactnet_a_converts_to_31_binary_convolutions_and_keeps_its_logits(norm, padding):
    model = zoo.get_model(
        f"reactnet_a_{norm}", stage=2, input_shape=(32, 32, 3), num_classes=10, padding=padding
    )
    model = randomized(model)
    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    # 13 binary 3x3 + 8 single and 5 pairs of binary 1x1 convolutions; the first stays float.
    assert counts["LceBconv2d"] == 31
    assert counts["CONV_2D"] == 1
    # At 32x32 the last two blocks' 3x3 convolutions see 2x2 and 1x1 maps, which the
    # engine alone would pad with ones (see the test below).
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    assert_flatbuffer_computes_the_model(
        model, flatbuffer, np.concatenate([x, digits(32)[0][-44:]])
    )


@pytest.mark.parametrize("size,strides", [(1, 1), (2, 1), (2, 2)])
def test_binary_convolutions_larger_than_their_inputs_are_padded_with_zeros(size, strides):
    """`export.pad_small_binary_inputs_with_ones`: what larq-compute-engine gets wrong."""
    inputs = tf.keras.Input((size, size, 64))
    with larq_nobn.layers.silence_starved_weights_warning():
        y = larq_nobn.conv.QuantConv2D(
            64,
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            input_quantizer="approx_sign",
            kernel_quantizer="magnitude_aware_ste_sign",
            kernel_initializer="random_normal",
        )(inputs)
    y = tf.keras.layers.BatchNormalization()(y)
    shortcut = inputs if strides == 1 else tf.keras.layers.AveragePooling2D(strides)(inputs)
    model = randomized(tf.keras.Model(inputs, tf.keras.layers.Add()([shortcut, y])))
    x = np.random.default_rng(0).normal(size=(2, size, size, 64)).astype("float32")
    flatbuffer = export.convert(model)
    assert export.op_counts(flatbuffer)["LceBconv2d"] == 1
    assert relative_error(model, flatbuffer, x) < TOLERANCE
    # Converted as it is, the padding is +1 (larq-compute-engine 0.16's
    # zero_padding_correction.h skips windows that stick out on both sides).
    unaided = export._lce().convert_keras_model(model)
    assert relative_error(model, unaided, x) > 0.1


@pytest.mark.slow(15)
def test_rescalings_seen_only_by_signs_are_folded_into_the_biases():
    """`export.fold_scales_before_signs`: same outputs, fewer multiplications."""
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(16, 16, 3), num_classes=10
    )
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, larq_nobn.LearnableBias):  # zeros at init: make them matter
            layer.set_weights([rng.normal(0, 0.5, size=w.shape) for w in layer.get_weights()])
    folded = export.fold_scales_before_signs(export.fold_weight_standardization(model))

    def rescalings(m):
        return {layer.name for layer in m.layers if isinstance(layer, tf.keras.layers.Rescaling)}

    betas = {name for name in rescalings(model) if name.endswith("_beta")}
    downsampling = {f"block{i}_beta" for i in (5, 9, 13)}  # they also feed a pooled shortcut
    assert betas > downsampling
    assert rescalings(folded) == rescalings(model) - betas | downsampling
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    # Folded, a sign's input is scaled by a positive factor and rounded otherwise: each
    # image's logits are the model's unless the first sign that differs is a tie.
    inputs, folded_inputs = sign_inputs(model, x), sign_inputs(folded, x)
    assert len(sign_input_layers(model)) == len(folded_inputs)
    folded_signs = [np.where(v >= 0, 1.0, -1.0) for v in folded_inputs.values()]
    tie = ties(inputs, dict(zip(inputs, folded_signs, strict=True)))
    close = np.all(np.isclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4), axis=1)
    assert np.all(close | tie) and np.mean(tie) <= MAX_TIE_SHARE, (close, tie)
    counts = export.op_counts(export.convert(model))
    assert counts["MUL"] == 3 and counts["LceBconv2d"] == 16


@pytest.mark.slow(45)
def test_exported_graph_does_not_depend_on_the_gradients():
    # Inference has no gradients: the same operators compute the same outputs. (The bn
    # variant, whose convolutions reach the converter as they are; the nobn variant's are
    # folded into larq's QuantConv2D first.)
    model = zoo.get_model(
        "reactnet18_bn", stage=2, stem="cifar", input_shape=(16, 16, 3), num_classes=10
    )
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    flatbuffers = {}
    for setting in ("cpu", "exact"):
        with larq_nobn.acceleration_scope(setting):
            flatbuffers[setting] = export.convert(model)
    counts = export.op_counts(flatbuffers["cpu"])
    assert counts == export.op_counts(flatbuffers["exact"])
    assert counts["LceBconv2d"] == 16 and "IDENTITY" not in counts
    np.testing.assert_array_equal(
        export.predict(flatbuffers["cpu"], images),
        export.predict(flatbuffers["exact"], images),
    )


@pytest.mark.parametrize("size,kernel", [(8, 3), (16, 7)])
def test_symmetric_padding_before_a_strided_convolution_is_kept(size, kernel):
    """`export.trim_unread_padding`: the zoo's `padding="torch"` on real inputs."""
    inputs = tf.keras.Input((size, size, 3))
    y = tf.keras.layers.ZeroPadding2D(kernel // 2)(inputs)
    y = tf.keras.layers.Conv2D(8, kernel, strides=2, kernel_initializer="random_normal")(y)
    model = tf.keras.Model(inputs, y)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype("float32")
    trimmed = export.trim_unread_padding(model)
    assert trimmed.layers[1].padding != model.layers[1].padding  # the last row is unread
    np.testing.assert_allclose(trimmed(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-5)
    flatbuffer = export.convert(model)
    assert relative_error(model, flatbuffer, x) < TOLERANCE
    # Converted as it is, the pad is fused as "same" padding: 0 before, 1 after
    # (larq-compute-engine 0.16's fuse_padding.td does not check the total).
    unaided = export._lce().convert_keras_model(model)
    assert "PAD" not in export.op_counts(unaided)
    assert relative_error(model, unaided, x) > 0.1
