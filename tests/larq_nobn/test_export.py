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


def quantized_prelu_model(log2_slopes: np.ndarray) -> tf.keras.Model:
    """bias, QuantizedPReLU, bias over a feature map; a QuantizedPReLU after a dense layer."""
    inputs = tf.keras.Input((6, 6, len(log2_slopes)))
    x = larq_nobn.LearnableBias(name="bias_in")(inputs)
    x = larq_nobn.QuantizedPReLU(name="prelu")(x)
    x = larq_nobn.LearnableBias(name="bias_out")(x)
    y = tf.keras.layers.Dense(5, name="fc")(tf.keras.layers.GlobalAveragePooling2D()(x))
    y = larq_nobn.QuantizedPReLU(name="prelu_fc")(y)
    model = tf.keras.Model(inputs, [x, y])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, larq_nobn.LearnableBias):
            layer.set_weights([rng.normal(0, 0.5, size=w.shape) for w in layer.get_weights()])
    model.get_layer("prelu").log2_slope.assign(log2_slopes)
    model.get_layer("prelu_fc").log2_slope.assign(log2_slopes[:5])
    return model


def test_quantized_prelus_become_prelus_of_their_power_of_two_slopes():
    tf.keras.utils.set_random_seed(0)
    # Halves round to even (as torch.round): -2.5 -> -2, -3.5 -> -4, 0.5 -> 0.
    log2 = np.array([-2.5, -3.5, 0.5, -7.2, 1.6, -0.4, 3.0, -12.0], np.float32)
    expected = np.ldexp(1.0, [-2, -4, 0, -7, 2, 0, 3, -12]).astype(np.float32)
    model = quantized_prelu_model(log2)
    rewritten = export.quantized_prelus_as_prelus(model)
    prelus = [layer for layer in rewritten.layers if isinstance(layer, tf.keras.layers.PReLU)]
    assert [layer.name for layer in prelus] == ["prelu", "prelu_fc"]
    assert not any(isinstance(layer, larq_nobn.QuantizedPReLU) for layer in rewritten.layers)
    np.testing.assert_array_equal(prelus[0].alpha.numpy(), expected.reshape(1, 1, 8))
    np.testing.assert_array_equal(prelus[1].alpha.numpy(), expected[:5])
    x = np.random.default_rng(1).normal(0, 4, size=(4, 6, 6, 8)).astype("float32")
    for original, replaced in zip(model(x), rewritten(x), strict=True):
        np.testing.assert_array_equal(replaced.numpy(), original.numpy())  # bit for bit

    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    # One PRELU per layer, instead of RELU, MINIMUM, MUL and ADD.
    assert counts["PRELU"] == 2 and not {"MUL", "MINIMUM", "RELU"} & set(counts)
    slopes = export.prelu_slopes(flatbuffer)
    assert len(slopes) == 2
    np.testing.assert_array_equal(slopes.pop("prelu"), expected.reshape(1, 1, 8))
    # A model output is named by the serving signature, not by its layer.
    np.testing.assert_array_equal(slopes.popitem()[1], expected[:5])
    # The interpreter lists the outputs in its own order.
    converted = {y.ndim: y for y in export._lce().testing.Interpreter(flatbuffer).predict(x)}
    feature_map, logits = model(x)
    np.testing.assert_array_equal(converted[4], feature_map.numpy())  # adds and exact shifts
    np.testing.assert_allclose(converted[2], logits.numpy(), rtol=1e-5)  # after a sum
    plain = small_model()
    assert export.quantized_prelus_as_prelus(plain) is plain  # nothing to rewrite


def test_rescaling_before_a_sigmoid_sign_is_folded_into_the_bias():
    inputs = tf.keras.Input((8, 8, 32))
    x = tf.keras.layers.Rescaling(0.7, name="beta")(inputs)
    x = larq_nobn.LearnableBias(name="bias")(x)
    x = larq_nobn.ScaledWSQuantConv2D(
        16,
        3,
        padding="same",
        use_bias=False,
        input_quantizer="sigmoid_sign",
        kernel_quantizer="magnitude_aware_ste_sign",
        kernel_initializer="random_normal",
        name="binary",
    )(x)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Model(inputs, x)
    bias = model.get_layer("bias")
    bias.set_weights([np.random.default_rng(0).normal(0, 0.5, size=bias.bias.shape)])
    folded = export.fold_scales_before_signs(model)
    assert [layer.name for layer in folded.layers] == ["input_1", "bias", "binary"]
    np.testing.assert_allclose(folded.get_layer("bias").bias.numpy(), bias.bias.numpy() / 0.7)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 32)).astype("float32")
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
