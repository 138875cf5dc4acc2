"""Tests of larq_nobn.export: exact folding, conversion, agreement with Keras."""

import larq_compute_engine  # noqa: F401  (the `lce` extra, in `test`)
import numpy as np
import tensorflow as tf

import larq_nobn
from larq_nobn import export
from tests.zoo.sign_ties import MAX_TIE_SHARE, flatbuffer_outputs, sign_inputs, ties


def small_model() -> tf.keras.Model:
    inputs = tf.keras.Input((16, 16, 3))
    x = larq_nobn.ScaledWSConv2D(32, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = larq_nobn.LearnableBias(name="shift")(x)
    x = larq_nobn.ScaledWSQuantConv2D(
        32,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        input_quantizer="approx_sign",
        kernel_quantizer="magnitude_aware_ste_sign",
        name="binary",
    )(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(10, name="fc")(x))


def randomize_gains(model: tf.keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "gain" in weight.name:
            weight.assign(rng.uniform(-2, 2, size=weight.shape).astype("float32"))


def test_fold_is_bit_exact_and_plain():
    model = small_model()
    randomize_gains(model)
    folded = export.fold_weight_standardization(model)
    assert not any(isinstance(layer, larq_nobn.ScaledWSQuantConv2D) for layer in folded.layers)
    x = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(model(x).numpy(), folded(x).numpy())
    binary = folded.get_layer("binary")
    assert binary.kernel.precision == 1  # still counted as a binary kernel
    kernel = binary.kernel.numpy().reshape(-1, 32)
    # +-c per output channel, c = |gain| * mean(|W_hat|)
    np.testing.assert_allclose(np.abs(kernel), np.abs(kernel[:1]).repeat(len(kernel), 0))
    assert folded.get_layer("stem").kernel_quantizer is None
    assert len(folded.get_layer("stem").weights) == 1  # the gain is folded into the kernel


def test_converted_model_agrees_with_keras():
    model = small_model()
    randomize_gains(model)
    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    assert counts["LceBconv2d"] == 1 and counts["CONV_2D"] == 1
    x = np.random.default_rng(2).normal(size=(16, 16, 16, 3)).astype("float32")
    logits = model(x).numpy()
    flat_logits, flat_signs = flatbuffer_outputs(flatbuffer, x)
    np.testing.assert_array_equal(flat_logits, export.predict(flatbuffer, x))
    # Every image agrees but one whose binarization differs only at a sign tie.
    inputs = sign_inputs(model, x)
    tie = ties(inputs, dict(zip(inputs, flat_signs.values(), strict=True)))
    close = np.abs(flat_logits - logits).max(axis=1) <= 1e-3
    same_top1 = np.argmax(flat_logits, -1) == np.argmax(logits, -1)
    assert np.all((close & same_top1) | tie) and np.mean(tie) <= MAX_TIE_SHARE
