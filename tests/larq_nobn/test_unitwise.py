"""Tests for `larq_nobn.unitwise`: per-output-unit norms and (scaled) standardization."""

import os
import subprocess
import sys
import textwrap

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


@pytest.fixture(params=["fused", "separate"])
def statistics(request, monkeypatch) -> bool:
    """Runs a test with a kernel's statistics and gradient on fused batch-norm ops, then
    on separate ops (what GPUs and TensorFlow without oneDNN run). Forcing the fused ops
    is valid on any CPU: TensorFlow's own CPU kernels read their inputs the same way."""
    fused = request.param == "fused"
    monkeypatch.setattr(larq_nobn.unitwise, "fused_batch_norm_statistics", lambda size: fused)
    return fused


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


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (1, 1, 6), (5,)])
def test_unitwise_norm_element_and_tensor_units(shape):
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    element = unitwise_norm(tf.constant(x), "element").numpy()
    assert element.shape == shape
    np.testing.assert_allclose(element, np.abs(x), rtol=1e-7)
    tensor = unitwise_norm(tf.constant(x), "tensor").numpy()
    assert tensor.shape == ()
    np.testing.assert_allclose(tensor, np.sqrt(np.sum(x.astype(np.float64) ** 2)), rtol=1e-6)
    output = unitwise_norm(tf.constant(x), "output").numpy()
    np.testing.assert_allclose(output, _np_unitwise_norm(x), rtol=1e-6)


def test_unitwise_norm_rejects_unknown_units():
    with pytest.raises(ValueError, match="element"):
        unitwise_norm(tf.ones((2, 2)), "channel")


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
@pytest.mark.usefixtures("statistics")
def test_standardize_matches_numpy(shape, eps):
    w = np.random.default_rng(2).normal(1.0, 2.0, size=shape).astype(np.float32)
    out = standardize(tf.constant(w), eps).numpy()
    np.testing.assert_allclose(out, _np_standardize(w, eps), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (1, 1, 5, 2), (6, 5)])
@pytest.mark.parametrize("gamma", [1.0, 1.7])
@pytest.mark.usefixtures("statistics")
def test_scaled_standardize_matches_numpy(shape, gamma):
    w = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    fan_in = int(np.prod(shape[:-1]))
    expected = gamma * _np_standardize(w) / np.sqrt(fan_in)
    out = scaled_standardize(tf.constant(w), gamma).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def _direct_ws_kernel(w, gain, gamma, eps, clip):
    """`gain * Q(scaled_standardize(W))` from plain TF ops, differentiated by TF itself."""
    axes = list(range(w.shape.rank - 1))
    mean, variance = tf.nn.moments(w, axes=axes, keepdims=True)
    fan_in = int(np.prod(w.shape[:-1]))
    w_hat = gamma * (w - mean) / (tf.sqrt(variance) + eps) / np.sqrt(fan_in)
    if clip is None:
        return gain * w_hat
    magnitude = tf.reduce_mean(tf.abs(w_hat), axis=axes, keepdims=True)
    binary = magnitude * tf.where(w_hat >= 0, 1.0, -1.0)
    # Straight through where |w_hat| <= clip: forward `binary`, gradient `inside`.
    passed = w_hat * tf.cast(tf.abs(w_hat) <= clip, w_hat.dtype)
    return gain * (passed + tf.stop_gradient(binary - passed))


@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (1, 1, 2, 3), (5, 7)])
@pytest.mark.parametrize("gamma, eps", [(1.0, 1e-5), (3.0, 0.1)])
@pytest.mark.parametrize("clip", [None, 1.0, 0.3])
@pytest.mark.usefixtures("statistics")
def test_scaled_ws_kernel_equals_the_composition(shape, gamma, eps, clip):
    """The fused kernel gives the values and the gradients (kernel and gain) of the
    direct formula, including units partly outside the straight-through window."""
    rng = np.random.default_rng(4)
    w = tf.constant(rng.normal(0.3, 2.0, size=shape).astype(np.float32))
    gain = tf.constant(rng.uniform(0.5, 2.0, size=shape[-1]).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    results = []
    for fn in (larq_nobn.unitwise.scaled_ws_kernel, _direct_ws_kernel):
        with tf.GradientTape() as tape:
            tape.watch([w, gain])
            out = fn(w, gain, gamma, eps, clip)
        results.append((out, *tape.gradient(out, [w, gain], output_gradients=upstream)))
    for fused, direct in zip(*results, strict=True):
        np.testing.assert_allclose(fused.numpy(), direct.numpy(), rtol=2e-5, atol=1e-6)
    if clip == 0.3 and shape == (5, 7):
        # The straight-through window cuts here: some |W_hat| are outside it, not all.
        outside = np.abs(larq_nobn.scaled_standardize(w, gamma, eps).numpy()) > clip
        assert 0 < np.sum(outside) < outside.size


@pytest.mark.parametrize("value", [0.0, 1.0, -2.0])  # sums of these are exact
@pytest.mark.usefixtures("statistics")
def test_standardize_of_a_constant_kernel_has_a_finite_gradient(value):
    w = tf.fill((3, 3, 2, 4), value)
    with tf.GradientTape() as tape:
        tape.watch(w)
        out = standardize(w)
    grad = tape.gradient(out, w, output_gradients=tf.ones_like(w))
    np.testing.assert_array_equal(out.numpy(), 0.0)
    assert np.all(np.isfinite(grad.numpy()))


@pytest.mark.usefixtures("statistics")
def test_scaled_ws_kernel_keeps_a_half_precision_dtype():
    w = tf.random.stateless_normal((3, 3, 4, 8), seed=(1, 2))
    gain = tf.ones((8,))
    out16 = larq_nobn.unitwise.scaled_ws_kernel(tf.cast(w, tf.float16), gain, binary_clip=1.0)
    out32 = larq_nobn.unitwise.scaled_ws_kernel(w, gain, binary_clip=1.0)
    assert out16.dtype == tf.float16
    np.testing.assert_allclose(out16.numpy(), out32.numpy(), rtol=2e-3)


def _ws_kernel_and_gradients(w, gain, upstream, clip, jit_compile=False):
    @tf.function(jit_compile=jit_compile)
    def run(w, gain):
        with tf.GradientTape() as tape:
            tape.watch([w, gain])
            out = larq_nobn.unitwise.scaled_ws_kernel(w, gain, 1.0, 1e-5, clip)
        return (out, *tape.gradient(out, [w, gain], output_gradients=upstream))

    return run, [t.numpy() for t in run(w, gain)]


def _traced_ops(concrete_function) -> list[str]:
    """The op types of a traced function's graph, its nested functions' included."""
    graph = concrete_function.graph.as_graph_def()
    return [n.op for f in graph.library.function for n in f.node_def] + [n.op for n in graph.node]


def _ws_inputs(shape=(3, 3, 8, 6), seed=5):
    rng = np.random.default_rng(seed)
    w = tf.constant(rng.normal(0.1, 0.05, size=shape).astype(np.float32))
    gain = tf.constant(rng.uniform(0.5, 2.0, size=shape[-1]).astype(np.float32))
    return w, gain, tf.constant(rng.normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("clip", [None, 1.0])
def test_the_statistics_backend_decides_which_ops_run(statistics, clip):
    """The fused path is one batch-norm op forward and one backward; the separate path
    has none (a backend that silently fell back would pass the value tests)."""
    run, _ = _ws_kernel_and_gradients(*_ws_inputs(), clip)
    ops = _traced_ops(run.get_concrete_function(*_ws_inputs()[:2]))
    expected = 1 if statistics else 0
    assert ops.count("FusedBatchNormV3") == expected
    assert ops.count("FusedBatchNormGradV3") == expected


@pytest.mark.parametrize(
    "setting,dtype,fuses",
    [
        ("auto", "float32", True),  # no GPU here: cpu_light
        ("cpu_light", "float32", True),
        ("cpu", "float32", True),
        ("cpu", "bfloat16", True),  # computed in float32
        ("cpu", "float64", False),  # computed in float64, which the fused ops do not take
        ("fused", "float32", False),
        ("exact", "float32", False),
    ],
)
def test_the_setting_fuses_only_kernels_of_the_minimum_size_and_more(setting, dtype, fuses):
    """A trace, no run: 1x1x1024x1024 is the minimum, 3x3x256x455 just below it."""
    for shape, large in [((1, 1, 1024, 1024), True), ((3, 3, 256, 455), False)]:
        assert (np.prod(shape) >= larq_nobn.unitwise.FUSED_MIN_SIZE) == large
        fn = tf.function(
            lambda w: tf.gradients(larq_nobn.unitwise.scaled_ws_kernel(w, tf.ones(w.shape[-1])), w)
        )
        with larq_nobn.acceleration_scope(setting):
            ops = _traced_ops(fn.get_concrete_function(tf.TensorSpec(shape, dtype)))
        expected = int(large and fuses)
        assert ops.count("FusedBatchNormV3") == expected
        assert ops.count("FusedBatchNormGradV3") == expected


def test_float64_kernels_are_standardized_in_float64():
    w = np.random.default_rng(8).normal(1.0, 2.0, size=(3, 3, 4, 5))
    out = standardize(tf.constant(w), 1e-5).numpy()
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _np_standardize(w), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("statistics")
@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (7, 5)])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_standardize_gradient_matches_automatic_differentiation(shape, eps):
    rng = np.random.default_rng(6)
    w = tf.constant(rng.normal(-0.2, 0.7, size=shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))
    axes = list(range(len(shape) - 1))

    def direct(w):
        mean, variance = tf.nn.moments(w, axes=axes, keepdims=True)
        return (w - mean) / (tf.sqrt(variance) + eps)

    grads = []
    for fn in (lambda w: standardize(w, eps), direct):
        with tf.GradientTape() as tape:
            tape.watch(w)
            out = fn(w)
        grads.append(tape.gradient(out, w, output_gradients=upstream).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_fused_statistics_under_xla_equal_the_separate_ops(monkeypatch, clip):
    """`--jit_compile` compiles the fused ops with XLA's own batch-norm kernels."""
    inputs = _ws_inputs(shape=(3, 3, 16, 8))
    results = {}
    for fused, jit in [(False, False), (True, True)]:
        monkeypatch.setattr(
            larq_nobn.unitwise, "fused_batch_norm_statistics", lambda size, f=fused: f
        )
        results[fused] = _ws_kernel_and_gradients(*inputs, clip, jit_compile=jit)[1]
    for xla, separate in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(xla, separate, rtol=2e-5, atol=1e-6)


def test_without_onednn_the_fused_ops_still_run_and_agree():
    """`TF_ENABLE_ONEDNN_OPTS=0` does not change the decision (the kind of device does);
    TensorFlow's own (Eigen) batch-norm kernels give the same values: they read the saved
    mean and variance as oneDNN's do."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        import larq_nobn.unitwise as unitwise
        print(unitwise.fused_batch_norm_statistics(2**20))
        rng = np.random.default_rng(7)
        w = tf.constant(rng.normal(0.1, 0.05, size=(3, 3, 8, 6)).astype(np.float32))
        gain = tf.constant(rng.uniform(0.5, 2.0, size=6).astype(np.float32))
        up = tf.constant(rng.normal(size=(3, 3, 8, 6)).astype(np.float32))
        results = []
        for fused in (True, False):
            unitwise.fused_batch_norm_statistics = lambda size, f=fused: f
            with tf.GradientTape() as tape:
                tape.watch([w, gain])
                out = unitwise.scaled_ws_kernel(w, gain, 1.0, 1e-5, 1.0)
            results.append([out, *tape.gradient(out, [w, gain], output_gradients=up)])
        print(max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(*results)))
        """
    )
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", "import larq_nobn\n" + script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[-2] == "True"
    assert float(out[-1]) < 1e-5
