"""Tests for the `WeightStandardization` kernel constraint."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import WeightStandardization


def _np_standardize(w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    axes = tuple(range(w.ndim - 1))
    return (w - w.mean(axis=axes, keepdims=True)) / (w.std(axis=axes, keepdims=True) + eps)


def _assert_standardized(w: np.ndarray, atol: float = 1e-4):
    axes = tuple(range(w.ndim - 1))
    np.testing.assert_allclose(w.mean(axis=axes), 0.0, atol=atol)
    np.testing.assert_allclose(w.std(axis=axes), 1.0, atol=atol)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (2, 2, 1, 3), (5, 3)])
@pytest.mark.parametrize("eps", [1e-5, 1e-1])
def test_constraint_matches_numpy(shape, eps):
    w = np.random.default_rng(0).normal(0.5, 3.0, size=shape).astype(np.float32)
    out = WeightStandardization(eps)(tf.constant(w)).numpy()
    np.testing.assert_allclose(out, _np_standardize(w, eps), rtol=1e-4, atol=1e-5)
    if eps == 1e-5:
        _assert_standardized(out)


def test_constraint_default_eps_and_config():
    constraint = WeightStandardization()
    assert constraint.eps == 1e-5
    restored = WeightStandardization.from_config(WeightStandardization(0.25).get_config())
    assert restored.eps == 0.25


def test_constraint_alias_and_serialization():
    constraint = tf.keras.constraints.get("weight_standardization")
    assert isinstance(constraint, WeightStandardization)
    serialized = tf.keras.constraints.serialize(WeightStandardization(0.3))
    restored = tf.keras.constraints.deserialize(serialized)
    assert isinstance(restored, WeightStandardization) and restored.eps == 0.3


@pytest.mark.parametrize("shape", [(4,), ()])
def test_constraint_rejects_rank_below_two(shape):
    with pytest.raises(ValueError, match="rank"):
        WeightStandardization()(tf.zeros(shape))


def _fit_one_step(model, x, y):
    model.compile(optimizer=tf.keras.optimizers.SGD(0.5), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("constraint", ["weight_standardization", WeightStandardization()])
def test_constraint_in_quant_conv2d_after_fit(constraint):
    rng = np.random.default_rng(1)
    layer = lq.layers.QuantConv2D(
        3,
        3,
        padding="same",
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        kernel_constraint=constraint,
        kernel_initializer=tf.keras.initializers.RandomNormal(2.0, 1.0, seed=1),
    )
    model = tf.keras.Sequential([tf.keras.Input((5, 5, 2)), layer])
    assert isinstance(layer.kernel_constraint, WeightStandardization)
    before = layer.kernel.latent_variable.numpy()
    # The initial kernel is not standardized (mean ~2).
    assert abs(before.mean()) > 1.0
    x = rng.normal(size=(4, 5, 5, 2)).astype(np.float32)
    y = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
    _fit_one_step(model, x, y)
    after = layer.kernel.latent_variable.numpy()
    _assert_standardized(after)


@pytest.mark.parametrize("constraint", ["weight_standardization", WeightStandardization()])
def test_constraint_in_dense_after_fit(constraint):
    rng = np.random.default_rng(2)
    layer = tf.keras.layers.Dense(
        4,
        kernel_constraint=constraint,
        kernel_initializer=tf.keras.initializers.RandomUniform(0.0, 3.0, seed=2),
    )
    model = tf.keras.Sequential([tf.keras.Input((6,)), layer])
    x = rng.normal(size=(8, 6)).astype(np.float32)
    y = rng.normal(size=(8, 4)).astype(np.float32)
    kernel_before = layer.kernel.numpy()
    _fit_one_step(model, x, y)
    after = layer.kernel.numpy()
    _assert_standardized(after)
    # The constraint projects the SGD-updated kernel (bias is zero at init, so the
    # kernel's gradient does not depend on it).
    kernel = tf.Variable(kernel_before)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(tf.matmul(x, kernel) - y))
    expected = _np_standardize(kernel_before - 0.5 * tape.gradient(loss, kernel).numpy())
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)
