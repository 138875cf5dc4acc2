"""Tests for `MagnitudeAwareSteSign`, the reference's scaled sign with an unscaled STE."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import MagnitudeAwareSteSign
from larq_nobn.quantizers import magnitude_aware_ste_sign


def _np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _np_magnitude_aware_sign(w):
    axes = tuple(range(w.ndim - 1))
    return np.mean(np.abs(w), axis=axes, keepdims=True) * _np_sign(w)


def _weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Values on both sides of the clip value 1, plus an exact zero (sign(0) = +1).
    w = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    w.flat[0] = 0.0
    return w


SHAPES = [(3, 3, 2, 4), (1, 1, 3, 2), (5, 3), (2, 2, 2, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_numpy_and_larq(shape):
    w = _weights(shape)
    out = MagnitudeAwareSteSign()(tf.constant(w)).numpy()
    np.testing.assert_allclose(out, _np_magnitude_aware_sign(w), rtol=1e-6)
    larq_out = lq.quantizers.MagnitudeAwareSign()(tf.constant(w)).numpy()
    np.testing.assert_allclose(out, larq_out, rtol=1e-6)
    # Zero maps to +scale, never to 0.
    assert out.flat[0] > 0


def _grad(quantizer, w, upstream):
    x = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x)
        loss = tf.reduce_sum(y * upstream)
    return tape.gradient(loss, x).numpy()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clip_value", [1.0, 0.5])
def test_gradient_is_unscaled_clipped_identity(shape, clip_value):
    w = _weights(shape, seed=1)
    upstream = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    grad = _grad(MagnitudeAwareSteSign(clip_value=clip_value), w, upstream)
    expected = np.where(np.abs(w) <= clip_value, upstream, 0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    # Non-trivial: some entries are clipped, some are not.
    assert np.any(np.abs(w) > clip_value) and np.any(np.abs(w) <= clip_value)


@pytest.mark.parametrize("shape", SHAPES)
def test_larq_gradient_differs_by_per_channel_scale(shape):
    w = _weights(shape, seed=3)
    upstream = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    ours = _grad(MagnitudeAwareSteSign(), w, upstream)
    larqs = _grad(lq.quantizers.MagnitudeAwareSign(), w, upstream)
    scale = np.mean(np.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
    np.testing.assert_allclose(larqs, ours * scale, rtol=1e-5, atol=1e-7)
    # The scale is not 1, so the two gradients really differ.
    assert not np.allclose(ours, larqs)


def test_function_form_matches_numpy():
    w = _weights((3, 3, 2, 4), seed=5)
    upstream = np.random.default_rng(6).normal(size=w.shape).astype(np.float32)
    x = tf.constant(w)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = magnitude_aware_ste_sign(x, clip_value=0.5)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_allclose(y.numpy(), _np_magnitude_aware_sign(w), rtol=1e-6)
    np.testing.assert_array_equal(
        tape.gradient(loss, x).numpy(), np.where(np.abs(w) <= 0.5, upstream, 0.0)
    )


def test_precision_is_one_bit():
    assert MagnitudeAwareSteSign.precision == 1


def test_alias_and_serialization():
    q = lq.quantizers.get("magnitude_aware_ste_sign")
    assert isinstance(q, MagnitudeAwareSteSign) and q.clip_value == 1.0
    q = lq.quantizers.get_kernel_quantizer("magnitude_aware_ste_sign")
    assert isinstance(q, MagnitudeAwareSteSign)

    serialized = lq.quantizers.serialize(MagnitudeAwareSteSign(clip_value=0.3))
    assert serialized["config"]["clip_value"] == 0.3
    restored = lq.quantizers.deserialize(serialized)
    assert isinstance(restored, MagnitudeAwareSteSign)
    assert restored.clip_value == 0.3
    w = _weights((2, 2, 2, 3), seed=6)
    upstream = np.ones_like(w)
    np.testing.assert_array_equal(
        _grad(restored, w, upstream), np.where(np.abs(w) <= 0.3, 1.0, 0.0)
    )
