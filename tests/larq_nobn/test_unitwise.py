"""Tests for `larq_nobn.unitwise`: per-output-unit norms and (scaled) standardization."""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn.unitwise import fan_in_axes, scaled_standardize, standardize, unitwise_norm


def _np_unitwise_norm(x: np.ndarray) -> np.ndarray:
    if x.ndim <= 1:
        return np.sqrt(np.sum(x**2))
    return np.sqrt(np.sum(x**2, axis=tuple(range(x.ndim - 1)), keepdims=True))


def _np_standardize(w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    axes = tuple(range(w.ndim - 1))
    return (w - w.mean(axis=axes, keepdims=True)) / (w.std(axis=axes, keepdims=True) + eps)


def test_unitwise_norm_is_exported():
    assert larq_nobn.unitwise_norm is unitwise_norm
    assert larq_nobn.standardize is standardize
    assert larq_nobn.scaled_standardize is scaled_standardize


@pytest.mark.parametrize("rank", [1, 2, 3, 4, 5])
def test_fan_in_axes(rank):
    assert fan_in_axes(rank) == list(range(rank - 1))


@pytest.mark.parametrize(
    "shape, expected_shape",
    [
        ((3, 3, 2, 4), (1, 1, 1, 4)),
        ((1, 5, 3, 2), (1, 1, 1, 2)),
        ((7, 3), (1, 3)),
        ((2, 1), (1, 1)),
    ],
)
def test_unitwise_norm_kernels(shape, expected_shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    norm = unitwise_norm(tf.constant(x)).numpy()
    assert norm.shape == expected_shape
    np.testing.assert_allclose(norm, _np_unitwise_norm(x), rtol=1e-6)
    # Each unit's norm is independent of the others: scaling one unit scales only its norm.
    x2 = x.copy()
    x2[..., 0] *= 3.0
    norm2 = unitwise_norm(tf.constant(x2)).numpy()
    np.testing.assert_allclose(norm2[..., 0], 3.0 * norm[..., 0], rtol=1e-6)
    np.testing.assert_allclose(norm2[..., 1:], norm[..., 1:], rtol=1e-6)


@pytest.mark.parametrize("shape", [(5,), (1,), ()])
def test_unitwise_norm_vectors_and_scalars(shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32) - 0.3
    norm = unitwise_norm(tf.constant(x)).numpy()
    assert norm.shape == ()
    np.testing.assert_allclose(norm, np.sqrt(np.sum(np.square(x))), rtol=1e-6)


def test_unitwise_norm_of_variable():
    v = tf.Variable([[3.0, 0.0], [4.0, 1.0]])
    np.testing.assert_allclose(unitwise_norm(v).numpy(), [[5.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (2, 2, 3, 1), (6, 5)])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_standardize_matches_numpy(shape, eps):
    w = np.random.default_rng(2).normal(1.0, 2.0, size=shape).astype(np.float32)
    out = standardize(tf.constant(w), eps).numpy()
    np.testing.assert_allclose(out, _np_standardize(w, eps), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (1, 1, 5, 2), (6, 5)])
@pytest.mark.parametrize("gamma", [1.0, 1.7])
def test_scaled_standardize_matches_numpy(shape, gamma):
    w = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1]))
    expected = gamma * _np_standardize(w) / np.sqrt(fan_in)
    out = scaled_standardize(tf.constant(w), gamma).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
