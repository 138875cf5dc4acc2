"""Tests for `ScaledWSQuantConv2D`, `ScaledWSConv2D` and `LearnableBias`.

The layers are compared with an independent reference written in plain TF ops (forward
and gradients, the binary case in the formulation of the paper's PyTorch code) and with
a NumPy forward pass.
"""

import contextlib
import io
import logging
import zlib

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import (
    LearnableBias,
    MagnitudeAwareSteSign,
    ScaledWSConv2D,
    ScaledWSQuantConv2D,
)
from larq_nobn.layers import silence_starved_weights_warning

# ----------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------


def _sign(x):
    """sign with sign(0) = +1, like larq.math.sign."""
    return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x))


def _ref_approx_sign(x):
    """sign(x) forward, ApproxSign gradient (2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 else)."""
    poly = tf.where(
        x < -1.0,
        -tf.ones_like(x),
        tf.where(x < 0.0, 2.0 * x + x * x, tf.where(x < 1.0, 2.0 * x - x * x, tf.ones_like(x))),
    )
    return tf.stop_gradient(_sign(x) - poly) + poly


def _ref_effective_kernel(w, gain, gamma=1.0, eps=1e-5, binary=False):
    kh, kw, cin, _ = w.shape
    mean = tf.reduce_mean(w, axis=[0, 1, 2], keepdims=True)
    std = tf.math.reduce_std(w, axis=[0, 1, 2], keepdims=True)
    w_hat = gamma * (w - mean) / (std + eps) / np.sqrt(kh * kw * cin)
    if binary:
        scale = tf.stop_gradient(tf.reduce_mean(tf.abs(w_hat), axis=[0, 1, 2], keepdims=True))
        clipped = tf.clip_by_value(w_hat, -1.0, 1.0)
        w_hat = tf.stop_gradient(scale * _sign(w_hat) - clipped) + clipped
    return gain * w_hat


def _ref_forward(x, w, gain, padding, strides, gamma=1.0, eps=1e-5, binary=False):
    if binary:
        x = _ref_approx_sign(x)
    kernel = _ref_effective_kernel(w, gain, gamma, eps, binary)
    return tf.nn.conv2d(x, kernel, strides=strides, padding=padding.upper())


def _np_conv2d(x, k, padding, stride):
    n, h, w_, _ = x.shape
    kh, kw, _, cout = k.shape
    if padding == "same":
        oh, ow = -(-h // stride), -(-w_ // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - w_, 0)
        x = np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)])
    else:
        oh, ow = (h - kh) // stride + 1, (w_ - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, k)
    return out


def _np_effective_kernel(w, gain, gamma=1.0, eps=1e-5, binary=False):
    w = w.astype(np.float64)
    fan_in = np.prod(w.shape[:-1])
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    std = w.std(axis=(0, 1, 2), keepdims=True)  # population std (ddof=0)
    w_hat = gamma * (w - mean) / (std + eps) / np.sqrt(fan_in)
    if binary:
        scale = np.abs(w_hat).mean(axis=(0, 1, 2), keepdims=True)
        w_hat = scale * np.where(w_hat >= 0, 1.0, -1.0)
    return gain * w_hat


def _np_forward(x, w, gain, padding, stride, gamma=1.0, eps=1e-5, binary=False):
    x = x.astype(np.float64)
    if binary:
        x = np.where(x >= 0, 1.0, -1.0)
    return _np_conv2d(x, _np_effective_kernel(w, gain, gamma, eps, binary), padding, stride)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _make_layer(binary, filters, kernel_size, padding, strides, gamma=1.0, **kwargs):
    if binary:
        kwargs.setdefault("use_bias", False)
        return ScaledWSQuantConv2D(
            filters,
            kernel_size,
            padding=padding,
            strides=strides,
            gamma=gamma,
            input_quantizer="approx_sign",
            kernel_quantizer="magnitude_aware_ste_sign",
            **kwargs,
        )
    return ScaledWSConv2D(
        filters, kernel_size, padding=padding, strides=strides, gamma=gamma, **kwargs
    )


def _build(layer, x, seed):
    """Builds the layer and gives it a non-trivial latent kernel and gain."""
    layer(x)
    rng = np.random.default_rng(seed)
    latent = layer.kernel.latent_variable
    latent.assign(rng.normal(0.3, 1.5, size=latent.shape).astype(np.float32))
    layer.gain.assign(rng.uniform(0.5, 2.0, size=layer.gain.shape).astype(np.float32))
    return latent.numpy(), layer.gain.numpy()


# (input shape, filters, kernel size)
SHAPES = [
    ((2, 6, 6, 3), 4, 3),
    ((1, 7, 5, 2), 3, (3, 2)),
    ((2, 5, 5, 4), 2, 1),
    ((1, 8, 8, 5), 6, 3),
]


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
@pytest.mark.parametrize("input_shape, filters, kernel_size", SHAPES)
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("strides", [1, 2])
def test_forward_and_gradients_match_reference(
    binary, input_shape, filters, kernel_size, padding, strides
):
    seed = zlib.crc32(repr((binary, input_shape, padding, strides)).encode())
    rng = np.random.default_rng(seed)
    x_np = rng.uniform(-1.5, 1.5, size=input_shape).astype(np.float32)
    layer = _make_layer(binary, filters, kernel_size, padding, strides)
    w_np, gain_np = _build(layer, tf.constant(x_np), seed)

    # Forward vs NumPy.
    x = tf.constant(x_np)
    y = layer(x).numpy()
    expected = _np_forward(x_np, w_np, gain_np, padding, strides, binary=binary)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)

    # Forward and gradients vs the TF reference.
    upstream = tf.constant(rng.normal(size=y.shape).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y_layer = layer(x)
        loss_layer = tf.reduce_sum(y_layer * upstream)
    grads = tape.gradient(loss_layer, [x, layer.kernel.latent_variable, layer.gain])

    w_ref, gain_ref = tf.Variable(w_np), tf.Variable(gain_np)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y_ref = _ref_forward(x, w_ref, gain_ref, padding, strides, binary=binary)
        loss_ref = tf.reduce_sum(y_ref * upstream)
    ref_grads = tape.gradient(loss_ref, [x, w_ref, gain_ref])

    np.testing.assert_allclose(y_layer.numpy(), y_ref.numpy(), rtol=1e-5, atol=1e-5)
    for name, got, want in zip(["input", "kernel", "gain"], grads, ref_grads, strict=True):
        assert got is not None, name
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.any(want.numpy() != 0), name


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
@pytest.mark.parametrize("gamma, eps", [(2.5, 1e-5), (1.7, 0.3)])
def test_gamma_and_eps(binary, gamma, eps):
    # A 1x1x4 kernel has fan-in 4, so |W_hat| = gamma * |z| / 2 can exceed 1 and the
    # binary reference's clipped STE really clips.
    rng = np.random.default_rng(7)
    x_np = rng.uniform(-1.5, 1.5, size=(2, 4, 4, 4)).astype(np.float32)
    layer = _make_layer(binary, 3, 1, "valid", 1, gamma=gamma, eps=eps)
    assert layer.gamma == gamma and layer.eps == eps
    x = tf.constant(x_np)
    w_np, gain_np = _build(layer, x, 7)
    y_np = _np_forward(x_np, w_np, gain_np, "valid", 1, gamma=gamma, eps=eps, binary=binary)
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * y)
    grads = tape.gradient(loss, [layer.kernel.latent_variable, layer.gain])
    np.testing.assert_allclose(y.numpy(), y_np, rtol=1e-4, atol=1e-5)

    w_ref, gain_ref = tf.Variable(w_np), tf.Variable(gain_np)
    with tf.GradientTape() as tape:
        y_ref = _ref_forward(x, w_ref, gain_ref, "valid", 1, gamma=gamma, eps=eps, binary=binary)
        loss_ref = tf.reduce_sum(y_ref * y_ref)
    ref_grads = tape.gradient(loss_ref, [w_ref, gain_ref])
    for got, want in zip(grads, ref_grads, strict=True):
        want = want.numpy()
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    if binary and gamma > 2:
        w_hat = _np_effective_kernel(w_np, 1.0, gamma, eps)
        assert np.any(np.abs(w_hat) > 1.0)  # the clipped STE is exercised


def test_defaults_and_gain_weight():
    layer = ScaledWSQuantConv2D(4, 3, kernel_quantizer="magnitude_aware_ste_sign")
    layer(tf.zeros((1, 5, 5, 2)))
    assert layer.gamma == 1.0 and layer.eps == 1e-5
    assert layer.gain.shape == (4,)
    np.testing.assert_array_equal(layer.gain.numpy(), np.ones(4))
    assert any(w is layer.gain for w in layer.trainable_weights)
    assert isinstance(layer.kernel_quantizer, MagnitudeAwareSteSign)
    fp = ScaledWSConv2D(4, 3)
    assert fp.use_bias is True  # Conv2D's default (and torch's)
    assert fp.kernel_quantizer is None and fp.input_quantizer is None


def test_quantized_scope_reads_latent_or_effective_kernel():
    rng = np.random.default_rng(11)
    x_np = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
    layer = _make_layer(True, 4, 3, "same", 1, gamma=1.3)
    x = tf.constant(x_np)
    w_np, gain_np = _build(layer, x, 11)
    effective = _np_effective_kernel(w_np, gain_np, gamma=1.3, binary=True)

    with lq.context.quantized_scope(False):
        np.testing.assert_array_equal(tf.convert_to_tensor(layer.kernel).numpy(), w_np)
        # The call still uses the effective kernel.
        y = layer(x).numpy()
    with lq.context.quantized_scope(True):
        kernel = tf.convert_to_tensor(layer.kernel).numpy()
    np.testing.assert_allclose(kernel, effective, rtol=1e-5, atol=1e-7)
    # Binary: each output channel has exactly two values, +-gain*mean|W_hat|.
    for o in range(4):
        assert len(np.unique(np.round(np.abs(kernel[..., o]), 6))) == 1
    expected = _np_forward(x_np, w_np, gain_np, "same", 1, gamma=1.3, binary=True)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("quantizer", [None, "magnitude_aware_ste_sign", "ste_sign"])
def test_kernel_scale_scales_the_outputs(quantizer):
    """`kernel_scale=s` (folded into the gain) equals the layer's outputs times s, with the
    same gradients, on both fused kernels and the generic path; and it matches NumPy."""
    rng = np.random.default_rng(11)
    x = tf.constant(rng.uniform(-1.5, 1.5, size=(2, 6, 6, 3)).astype(np.float32))
    input_quantizer = None if quantizer is None else "approx_sign"
    kwargs = dict(
        padding="same", use_bias=False, input_quantizer=input_quantizer, kernel_quantizer=quantizer
    )
    scaled = ScaledWSQuantConv2D(4, 3, kernel_scale=0.3, **kwargs)
    plain = ScaledWSQuantConv2D(4, 3, **kwargs)
    w_np, gain_np = _build(scaled, x, 11)
    plain(x)
    plain.set_weights(scaled.get_weights())
    assert scaled.kernel_scale == 0.3 and scaled.get_config()["kernel_scale"] == 0.3

    upstream = tf.constant(rng.normal(size=(2, 6, 6, 4)).astype(np.float32))
    results = []
    for layer, factor in ((scaled, 1.0), (plain, 0.3)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x) * factor
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.kernel.latent_variable, layer.gain])
        results.append([y] + grads)
    for name, got, want in zip(["output", "input", "kernel", "gain"], *results, strict=True):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
    if quantizer != "ste_sign":
        binary = quantizer is not None
        expected = 0.3 * _np_forward(x.numpy(), w_np, gain_np, "same", 1, binary=binary)
        np.testing.assert_allclose(results[0][0].numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
def test_config_round_trip(binary):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 6, 6, 3)).astype(np.float32))
    layer = _make_layer(
        binary,
        4,
        3,
        "same",
        2,
        gamma=1.6,
        eps=1e-3,
        gain_initializer="zeros",
        use_bias=True,
        kernel_scale=-0.7,
    )
    _build(layer, x, 3)
    layer.bias.assign(rng.normal(size=4).astype(np.float32))
    config = layer.get_config()
    assert config["gamma"] == 1.6 and config["eps"] == 1e-3
    if binary:
        assert config["kernel_quantizer"]["class_name"] == "MagnitudeAwareSteSign"
    else:
        assert "kernel_quantizer" not in config and "input_quantizer" not in config

    cls = type(layer)
    for clone in (
        cls.from_config(config),
        tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)),
    ):
        assert type(clone) is cls
        assert clone.gamma == 1.6 and clone.eps == 1e-3 and clone.kernel_scale == -0.7
        clone(x)
        np.testing.assert_array_equal(clone.gain.numpy(), np.zeros(4))  # gain_initializer
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_string_and_object_quantizers_and_constraints():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 5, 5, 2)).astype(np.float32))
    by_name = ScaledWSQuantConv2D(
        3,
        3,
        input_quantizer="approx_sign",
        kernel_quantizer="magnitude_aware_ste_sign",
        kernel_constraint="weight_clip",
    )
    by_object = ScaledWSQuantConv2D(
        3,
        3,
        input_quantizer=lq.quantizers.ApproxSign(),
        kernel_quantizer=MagnitudeAwareSteSign(),
        kernel_constraint=lq.constraints.WeightClip(0.5),
    )
    assert isinstance(by_name.input_quantizer, lq.quantizers.ApproxSign)
    assert isinstance(by_name.kernel_quantizer, MagnitudeAwareSteSign)
    assert isinstance(by_name.kernel_constraint, lq.constraints.WeightClip)
    assert by_object.kernel_constraint.clip_value == 0.5
    _build(by_name, x, 5)
    by_object(x)
    by_object.set_weights(by_name.get_weights())
    np.testing.assert_array_equal(by_object(x).numpy(), by_name(x).numpy())

    # The constraint acts on the latent kernel after an optimizer step.
    model = tf.keras.Sequential([tf.keras.Input((5, 5, 2)), by_object])
    model.compile(tf.keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, tf.zeros((2, 3, 3, 3)), verbose=0, batch_size=2)
    latent = by_object.kernel.latent_variable.numpy()
    assert np.max(np.abs(latent)) <= 0.5 + 1e-7
    assert np.max(np.abs(by_name.kernel.latent_variable.numpy())) > 0.5


@pytest.mark.parametrize("argument", ["input_quantizer", "kernel_quantizer"])
@pytest.mark.parametrize("value", ["ste_sign", lq.quantizers.SteSign()])
def test_scaled_ws_conv2d_rejects_quantizers(argument, value):
    with pytest.raises(ValueError, match=argument):
        ScaledWSConv2D(4, 3, **{argument: value})


def test_rejects_invalid_options():
    with pytest.raises(ValueError):
        ScaledWSQuantConv2D(4, 3, eps=-1.0)
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kernel_scale"):
            ScaledWSQuantConv2D(4, 3, kernel_scale=scale)
    with pytest.raises(ValueError, match="gamma"):
        ScaledWSQuantConv2D(4, 3, gamma=0.0)


def test_model_summary_counts_binary_and_fp_weights():
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 3)),
            ScaledWSConv2D(4, 3, padding="same", use_bias=False, name="fp_ws"),
            ScaledWSQuantConv2D(
                5,
                3,
                padding="same",
                use_bias=False,
                input_quantizer="approx_sign",
                kernel_quantizer="magnitude_aware_ste_sign",
                name="binary_ws",
            ),
        ]
    )
    profile = lq.models.ModelProfile(model)
    layers = {p.name: p for p in profile.layer_profiles}
    binary, fp = layers["binary_ws"], layers["fp_ws"]
    assert binary.weight_count(bitwidth=1) == 3 * 3 * 4 * 5
    assert binary.weight_count(bitwidth=32) == 5  # the gain
    assert fp.weight_count(bitwidth=1) == 0
    assert fp.weight_count(bitwidth=32) == 3 * 3 * 3 * 4 + 4  # kernel + gain
    assert profile.weight_count(bitwidth=1) == 3 * 3 * 4 * 5

    lines = []
    lq.models.summary(model, print_fn=lines.append)
    text = "\n".join(lines)
    binary_row = next(line for line in text.splitlines() if "binary_ws" in line)
    fp_row = next(line for line in text.splitlines() if "fp_ws" in line)
    assert str(3 * 3 * 4 * 5) in binary_row.replace(",", "")
    assert str(3 * 3 * 3 * 4 + 4) in fp_row.replace(",", "")

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        lq.models.summary(model)
    assert buffer.getvalue().strip() == text.strip()


# ----------------------------------------------------------------------------------------
# LearnableBias
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 4, 4, 3), (3, 5), (1, 2, 2, 2, 4)])
def test_learnable_bias(shape):
    rng = np.random.default_rng(9)
    x_np = rng.normal(size=shape).astype(np.float32)
    layer = LearnableBias()
    x = tf.constant(x_np)
    np.testing.assert_array_equal(layer(x).numpy(), x_np)  # zeros init
    assert layer.bias.shape == (shape[-1],)
    np.testing.assert_array_equal(layer.bias.numpy(), np.zeros(shape[-1]))

    bias = rng.normal(size=shape[-1]).astype(np.float32)
    layer.bias.assign(bias)
    upstream = rng.normal(size=shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)
    grad_bias, grad_x = tape.gradient(loss, [layer.bias, x])
    np.testing.assert_allclose(y.numpy(), x_np + bias, rtol=1e-6)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(grad_bias.numpy(), upstream.sum(axis=axes), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_x.numpy(), upstream, rtol=1e-6)


def test_learnable_bias_config_round_trip():
    layer = LearnableBias(bias_initializer="ones", bias_regularizer="l2", name="move")
    x = tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    layer(x)
    layer.bias.assign([0.5, -1.0, 2.0])
    config = layer.get_config()
    for clone in (
        LearnableBias.from_config(config),
        tf.keras.layers.deserialize(tf.keras.layers.serialize(layer)),
    ):
        assert isinstance(clone, LearnableBias) and clone.name == "move"
        clone(x)
        np.testing.assert_array_equal(clone.bias.numpy(), np.ones(3))  # bias_initializer
        assert isinstance(clone.bias_regularizer, tf.keras.regularizers.L2)
        assert len(clone.losses) == 1  # the regularizer is applied
        clone.set_weights(layer.get_weights())
        np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_learnable_bias_needs_known_channels():
    with pytest.raises(ValueError, match="channels"):
        LearnableBias().build(tf.TensorShape([None, None]))


def test_starved_weights_filter_drops_only_that_warning_and_only_in_its_block(caplog):
    logger = logging.getLogger("larq.layers_base")
    with caplog.at_level(logging.WARNING, logger="larq.layers_base"):
        with silence_starved_weights_warning():
            logger.warning("starved weights: a binary kernel without a constraint")
            logger.warning("another warning")
        assert [r.getMessage() for r in caplog.records] == ["another warning"]
        logger.warning("starved weights: outside the block")
        assert caplog.records[-1].getMessage() == "starved weights: outside the block"
