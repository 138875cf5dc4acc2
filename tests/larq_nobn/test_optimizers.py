"""Tests for `AdaptiveGradientClipping` (AGC), the optimizer wrapper."""

import re

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import AGC, AdaptiveGradientClipping
from larq_nobn.optimizers import adaptive_clip

# ----------------------------------------------------------------------------------------
# NumPy references
# ----------------------------------------------------------------------------------------


def _np_unitwise_norm(x):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim <= 1:
        return np.sqrt(np.sum(x**2))
    return np.sqrt(np.sum(x**2, axis=tuple(range(x.ndim - 1)), keepdims=True))


def _np_clip(g, w, clip_factor=0.01, eps=1e-3):
    g = np.asarray(g, dtype=np.float64)
    max_norm = clip_factor * np.maximum(_np_unitwise_norm(w), eps)
    g_norm = _np_unitwise_norm(g)
    return np.where(g_norm > max_norm, g * max_norm / np.maximum(g_norm, 1e-6), g)


def _sgd(lr=1.0):
    return tf.keras.optimizers.SGD(lr)


# ----------------------------------------------------------------------------------------
# The clip itself
# ----------------------------------------------------------------------------------------


def _units_above_and_below(shape, clip_factor, seed):
    """A weight and a gradient whose even units are above the threshold, odd ones below."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    w_norm = _np_unitwise_norm(w)
    g_norm = _np_unitwise_norm(g)
    ratio = np.ones(shape[-1]) * 0.5 if len(shape) > 1 else np.array(0.5)
    if len(shape) > 1:
        ratio[::2] = 3.0
    g = (g / g_norm * w_norm * clip_factor * ratio).astype(np.float32)
    return w, g


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (1, 1, 3, 5), (6, 4), (4, 1)])
@pytest.mark.parametrize("clip_factor", [0.01, 0.5])
def test_clip_above_and_below_threshold(shape, clip_factor):
    w, g = _units_above_and_below(shape, clip_factor, seed=len(shape))
    expected = _np_clip(g, w, clip_factor)
    out = adaptive_clip(tf.constant(g), tf.constant(w), clip_factor, 1e-3).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-8)
    # Units above the threshold are rescaled to exactly clip_factor * ||w||; the others are
    # untouched.
    out_norm = _np_unitwise_norm(out).reshape(-1)
    w_norm = _np_unitwise_norm(w).reshape(-1)
    np.testing.assert_allclose(out_norm[::2], clip_factor * w_norm[::2], rtol=1e-5)
    np.testing.assert_array_equal(out[..., 1::2], g[..., 1::2])
    # Same through the wrapper's clip_gradients.
    agc = AGC(_sgd(), clip_factor=clip_factor)
    variable = tf.Variable(w)
    [(clipped, v)] = agc.clip_gradients([(tf.constant(g), variable)])
    assert v is variable
    np.testing.assert_allclose(clipped.numpy(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_clip_vectors_use_whole_norm(scale):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5,)).astype(np.float32)
    g = (rng.normal(size=(5,)) * 0.01).astype(np.float32)
    g = (g / np.linalg.norm(g) * 0.1 * np.linalg.norm(w) * scale).astype(np.float32)
    out = adaptive_clip(tf.constant(g), tf.constant(w), 0.1, 1e-3).numpy()
    np.testing.assert_allclose(out, _np_clip(g, w, 0.1), rtol=1e-5)
    if scale > 1:
        np.testing.assert_allclose(np.linalg.norm(out), 0.1 * np.linalg.norm(w), rtol=1e-5)
    else:
        np.testing.assert_array_equal(out, g)


@pytest.mark.parametrize("shape", [(3, 3, 2, 4), (5, 3), (4,)])
@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_clip_zero_weights_uses_eps(shape, eps):
    w = np.zeros(shape, dtype=np.float32)
    g = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    out = adaptive_clip(tf.constant(g), tf.constant(w), 0.01, eps).numpy()
    expected = _np_clip(g, w, 0.01, eps)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-9)
    # Every unit is clipped to exactly clip_factor * eps (not to zero).
    np.testing.assert_allclose(_np_unitwise_norm(out), 0.01 * eps, rtol=1e-5)


def test_clip_zero_gradient_stays_zero():
    w = np.zeros((3, 2), np.float32)
    out = adaptive_clip(tf.zeros((3, 2)), tf.constant(w), 0.01, 0.0).numpy()
    np.testing.assert_array_equal(out, np.zeros((3, 2)))
    assert np.all(np.isfinite(out))


# ----------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------


def test_defaults_and_alias():
    assert AGC is AdaptiveGradientClipping
    inner = tf.keras.optimizers.Adam(0.25)
    agc = AGC(inner)
    assert agc.clip_factor == 0.01 and agc.eps == 1e-3 and agc.exclude is None
    assert agc.inner_optimizer is inner
    assert float(agc.learning_rate) == pytest.approx(0.25)
    assert agc.iterations is inner.iterations


@pytest.mark.parametrize("clip_factor", [0.0, -0.1])
def test_rejects_non_positive_clip_factor(clip_factor):
    with pytest.raises(ValueError, match="clip_factor"):
        AGC(_sgd(), clip_factor=clip_factor)


def test_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps"):
        AGC(_sgd(), eps=-1.0)


@pytest.mark.parametrize("inner", ["sgd", object(), None, 0.1])
def test_rejects_non_optimizer(inner):
    with pytest.raises(TypeError):
        AGC(inner)


def test_rejects_legacy_optimizer():
    with pytest.raises(TypeError, match="legacy"):
        AGC(tf.keras.optimizers.legacy.SGD(0.1))


def test_rejects_nested_agc():
    with pytest.raises(TypeError):
        AGC(AGC(_sgd()))


@pytest.mark.parametrize("exclude", [5, ["dense", 3], {"a": 1}])
def test_rejects_bad_exclude_type(exclude):
    with pytest.raises(TypeError, match="exclude"):
        AGC(_sgd(), exclude=exclude)


@pytest.mark.parametrize("exclude", ["dense[", ["ok", "(unclosed"]])
def test_rejects_invalid_regex(exclude):
    with pytest.raises(ValueError, match="regular expression"):
        AGC(_sgd(), exclude=exclude)


# ----------------------------------------------------------------------------------------
# apply_gradients: exclusion and None gradients (SGD with lr=1: update == -gradient)
# ----------------------------------------------------------------------------------------


def _variables_and_big_gradients():
    rng = np.random.default_rng(2)
    values = {
        "conv/kernel": rng.normal(size=(3, 3, 2, 4)),
        "conv/bias": rng.normal(size=(4,)),
        "dense/kernel": rng.normal(size=(6, 3)),
    }
    variables = {n: tf.Variable(v.astype(np.float32), name=n) for n, v in values.items()}
    # Gradients 10x the weights' norm: every unit is above the threshold.
    grads = {n: (10.0 * rng.normal(size=v.shape)).astype(np.float32) for n, v in values.items()}
    return variables, grads


@pytest.mark.parametrize(
    "exclude, excluded",
    [
        (None, set()),
        ("dense", {"dense/kernel"}),
        (["^conv/bias", "dense"], {"conv/bias", "dense/kernel"}),
        (("bias",), {"conv/bias"}),
        (lambda v: "bias" in v.name, {"conv/bias"}),
        (lambda v: v.shape.rank == 4, {"conv/kernel"}),
    ],
)
def test_exclude_patterns_and_predicates(exclude, excluded):
    variables, grads = _variables_and_big_gradients()
    before = {n: v.numpy() for n, v in variables.items()}
    agc = AGC(_sgd(1.0), clip_factor=0.01, exclude=exclude)
    agc.apply_gradients([(tf.constant(grads[n]), v) for n, v in variables.items()])
    assert int(agc.iterations) == 1
    for name, variable in variables.items():
        update = before[name] - variable.numpy()
        if name in excluded:
            expected = grads[name]
        else:
            expected = _np_clip(grads[name], before[name], 0.01)
            assert not np.allclose(expected, grads[name])  # clipping is active
        np.testing.assert_allclose(update, expected, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "units, expected",
    [
        (None, {"conv/kernel": "output", "conv/bias": "output", "dense/kernel": "output"}),
        ("element", {"conv/kernel": "element", "conv/bias": "element", "dense/kernel": "element"}),
        (
            {"/bias": "element", "dense": "tensor", "kernel": "element"},
            {"conv/kernel": "element", "conv/bias": "element", "dense/kernel": "tensor"},
        ),
        (
            lambda v: "tensor" if v.shape.rank == 4 else "output",
            {"conv/kernel": "tensor", "conv/bias": "output", "dense/kernel": "output"},
        ),
    ],
)
def test_units_per_variable(units, expected):
    """Each variable is clipped with its unit: the first regex that matches decides."""
    variables, grads = _variables_and_big_gradients()
    for name, v in variables.items():  # gradients of mixed size, so units differ
        spread = np.linspace(0.001, 1, grads[name].size).reshape(v.shape)
        grads[name] = (grads[name] * spread).astype(np.float32)
    agc = AGC(_sgd(1.0), clip_factor=0.05, units=units)
    clipped = dict(
        zip(
            variables,
            agc.clip_gradients([(tf.constant(grads[n]), v) for n, v in variables.items()]),
            strict=True,
        )
    )
    for name, (g, v) in clipped.items():
        w = v.numpy().astype(np.float64)
        norm = {
            "output": _np_unitwise_norm,
            "element": np.abs,
            "tensor": lambda x: np.sqrt(np.sum(x**2)),
        }[expected[name]]
        max_norm = 0.05 * np.maximum(norm(w), 1e-3)
        g_norm = norm(grads[name].astype(np.float64))
        reference = np.where(g_norm > max_norm, grads[name] * max_norm / g_norm, grads[name])
        np.testing.assert_allclose(g.numpy(), reference, rtol=2e-5, err_msg=name)
        # On a vector "output" and "tensor" are the same rule.
        vector_rule = v.shape.rank <= 1 and expected[name] != "element"
        others = {"output", "element", "tensor"} - {expected[name]}
        others -= {"output", "tensor"} if vector_rule else set()
        for other in others:  # the unit matters for these gradients
            assert not np.allclose(
                adaptive_clip(tf.constant(grads[name]), v, 0.05, 1e-3, other).numpy(), reference
            ), (name, other)


@pytest.mark.parametrize(
    "units, error",
    [
        ("channel", ValueError),
        ({"a": "row"}, ValueError),
        ({"(": "tensor"}, ValueError),
        (3, TypeError),
    ],
)
def test_rejects_bad_units(units, error):
    with pytest.raises(error):
        AGC(_sgd(), units=units)


def test_none_gradients_pass_through():
    variables, grads = _variables_and_big_gradients()
    before = {n: v.numpy() for n, v in variables.items()}
    agc = AGC(_sgd(1.0), clip_factor=0.01)
    pairs = [
        (None, variables["conv/kernel"]),
        (tf.constant(grads["dense/kernel"]), variables["dense/kernel"]),
    ]
    clipped = agc.clip_gradients(pairs)
    assert clipped[0][0] is None and clipped[0][1] is variables["conv/kernel"]
    agc.apply_gradients(pairs)
    np.testing.assert_array_equal(variables["conv/kernel"].numpy(), before["conv/kernel"])
    np.testing.assert_allclose(
        before["dense/kernel"] - variables["dense/kernel"].numpy(),
        _np_clip(grads["dense/kernel"], before["dense/kernel"]),
        rtol=1e-4,
        atol=1e-7,
    )


def test_minimize_clips():
    w0 = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)
    w = tf.Variable(w0)
    x = np.array([[5.0, -2.0]], np.float32)
    agc = AGC(_sgd(1.0), clip_factor=0.05)
    agc.minimize(lambda: tf.reduce_sum(tf.matmul(x, w)), [w])
    grad = np.repeat(x.T, 2, axis=1)  # d sum(xW)/dW = x^T 1
    np.testing.assert_allclose(w0 - w.numpy(), _np_clip(grad, w0, 0.05), rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Keras integration
# ----------------------------------------------------------------------------------------

_RNG = np.random.default_rng(42)
X = _RNG.normal(size=(16, 3)).astype(np.float32)
Y = _RNG.normal(size=(16, 2)).astype(np.float32)
W0 = (_RNG.normal(size=(3, 2)) * 0.5).astype(np.float32)
B0 = np.array([0.1, -0.2], np.float32)


def _dense_model(dtype_policy=None):
    model = tf.keras.Sequential(
        [tf.keras.Input((3,)), tf.keras.layers.Dense(2, name="dense", dtype=dtype_policy)]
    )
    model.layers[0].set_weights([W0, B0])
    return model


def _np_mse_grads(w, b, x, y):
    pred = x @ w + b
    d = 2.0 * (pred - y) / pred.size
    return x.T @ d, d.sum(axis=0)


def test_fit_with_adam_and_schedule_matches_numpy():
    steps, clip_factor = 3, 0.02
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.05, 1, 0.5)
    model = _dense_model()
    model.compile(optimizer=AGC(tf.keras.optimizers.Adam(schedule), clip_factor), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=steps, verbose=0, shuffle=False)

    assert int(model.optimizer.iterations) == steps
    assert int(model.optimizer.inner_optimizer.iterations) == steps
    # The schedule was evaluated at the last step (iterations = steps - 1 when applied).
    np.testing.assert_allclose(float(model.optimizer.learning_rate), 0.05 * 0.5 ** (steps - 1))

    # NumPy AGC + Adam (tf-keras formulation) with the same schedule.
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    m = [np.zeros_like(w), np.zeros_like(b)]
    v = [np.zeros_like(w), np.zeros_like(b)]
    b1, b2, eps = 0.9, 0.999, 1e-7
    clipped_any = False
    for t in range(steps):
        gw, gb = _np_mse_grads(w, b, X, Y)
        cw, cb = _np_clip(gw, w, clip_factor), _np_clip(gb, b, clip_factor)
        clipped_any |= not np.allclose(cw, gw)
        lr = 0.05 * 0.5**t
        alpha = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        new = []
        for i, (p, g) in enumerate([(w, cw), (b, cb)]):
            m[i] = m[i] + (g - m[i]) * (1 - b1)
            v[i] = v[i] + (g * g - v[i]) * (1 - b2)
            new.append(p - alpha * m[i] / (np.sqrt(v[i]) + eps))
        w, b = new
    assert clipped_any
    got_w, got_b = model.layers[0].get_weights()
    np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)


def test_fit_with_sgd_matches_numpy_clip():
    clip_factor, lr, steps = 0.01, 0.5, 2
    model = _dense_model()
    model.compile(optimizer=AGC(_sgd(lr), clip_factor, exclude="bias"), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=steps, verbose=0, shuffle=False)
    w, b = W0.astype(np.float64), B0.astype(np.float64)
    for _ in range(steps):
        gw, gb = _np_mse_grads(w, b, X, Y)
        assert not np.allclose(_np_clip(gw, w, clip_factor), gw)
        w, b = w - lr * _np_clip(gw, w, clip_factor), b - lr * gb  # bias excluded
    got_w, got_b = model.layers[0].get_weights()
    np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-7)


def test_checkpoint_restores_into_plain_inner_optimizer(tmp_path):
    model = _dense_model()
    agc = AGC(tf.keras.optimizers.Adam(0.01), 0.02)
    model.compile(optimizer=agc, loss="mse")
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert int(agc.iterations) == 2
    path = tf.train.Checkpoint(model=model, optimizer=agc).save(str(tmp_path / "ckpt"))

    names = sorted(name for name, _ in tf.train.list_variables(path))
    assert not any("inner" in n or "_optimizer" in n or "_trackable" in n for n in names), names

    model2 = _dense_model()
    adam = tf.keras.optimizers.Adam(0.01)
    adam.build(model2.trainable_variables)
    status = tf.train.Checkpoint(model=model2, optimizer=adam).restore(path)
    status.assert_existing_objects_matched()
    assert int(adam.iterations) == 2
    assert len(adam.variables) == len(agc.variables) == 5  # iterations + 2 slots x 2
    for restored, original in zip(adam.variables, agc.variables, strict=True):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    # Slots are non-trivial (training happened).
    assert any(np.any(v.numpy() != 0) for v in adam.variables[1:])
    for restored, original in zip(model2.weights, model.weights, strict=True):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())
    # The checkpoint has exactly the inner optimizer's format.
    plain_path = tf.train.Checkpoint(model=model2, optimizer=adam).save(str(tmp_path / "plain"))
    assert sorted(name for name, _ in tf.train.list_variables(plain_path)) == names


def test_keras_save_load_and_continue_training(tmp_path):
    model = _dense_model()
    model.compile(
        optimizer=AGC(tf.keras.optimizers.Adam(0.01), 0.02, eps=2e-3, exclude=["bias"]),
        loss="mse",
    )
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)

    assert isinstance(loaded.optimizer, AdaptiveGradientClipping)
    assert loaded.optimizer.clip_factor == 0.02 and loaded.optimizer.eps == 2e-3
    assert loaded.optimizer.exclude == ["bias"]
    assert isinstance(loaded.optimizer.inner_optimizer, tf.keras.optimizers.Adam)
    assert int(loaded.optimizer.iterations) == 1
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)

    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # The Adam slots were saved and loaded too.
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kwargs", [{"exclude": lambda v: False}, {"units": lambda v: "tensor"}])
def test_get_config_with_callable_exclude_or_units_is_not_serializable(kwargs):
    agc = AGC(_sgd(), **kwargs)
    with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
        agc.get_config()


def test_config_round_trip():
    units = {"/gain:": "element", "/alpha:": "tensor"}
    agc = AGC(tf.keras.optimizers.Adam(0.003), 0.05, eps=1e-2, exclude="dense", units=units)
    restored = AdaptiveGradientClipping.from_config(agc.get_config())
    assert restored.clip_factor == 0.05 and restored.eps == 1e-2 and restored.exclude == "dense"
    assert restored.units == units
    gain = tf.Variable(tf.ones(3), name="conv/gain")
    assert restored._unit_of(gain) == "element"
    assert isinstance(restored.inner_optimizer, tf.keras.optimizers.Adam)
    assert float(restored.learning_rate) == pytest.approx(0.003)
    serialized = tf.keras.optimizers.serialize(agc)
    again = tf.keras.optimizers.deserialize(serialized, use_legacy_optimizer=False)
    assert isinstance(again, AdaptiveGradientClipping) and again.clip_factor == 0.05


def _train(jit_compile, steps=2):
    model = _dense_model()
    model.compile(
        optimizer=AGC(tf.keras.optimizers.Adam(0.05), 0.01),
        loss="mse",
        jit_compile=jit_compile,
    )
    model.fit(X, Y, batch_size=16, epochs=steps, verbose=0, shuffle=False)
    return model


def test_jit_compile_matches_eager_graph():
    plain = _train(False)
    jitted = _train(True)
    assert int(jitted.optimizer.iterations) == 2
    assert not np.allclose(jitted.get_weights()[0], W0)
    for a, b in zip(jitted.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------
# tf.distribute: 2 replicas == 1 device with the same global batch
# ----------------------------------------------------------------------------------------

_CONV_X = np.random.default_rng(7).normal(size=(16, 6, 6, 2)).astype(np.float32)
_CONV_Y = np.random.default_rng(8).integers(0, 3, size=(16,)).astype(np.int32)


def _conv_model():
    return tf.keras.Sequential(
        [
            tf.keras.Input((6, 6, 2)),
            tf.keras.layers.Conv2D(4, 3, name="conv"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(3, name="dense"),
        ]
    )


_CONV_WEIGHTS = None


def _initial_conv_weights():
    global _CONV_WEIGHTS
    if _CONV_WEIGHTS is None:
        rng = np.random.default_rng(9)
        _CONV_WEIGHTS = [
            (rng.normal(size=w.shape) * 0.5).astype(np.float32) for w in _conv_model().get_weights()
        ]
    return _CONV_WEIGHTS


def _train_in(strategy, clip_factor):
    with strategy.scope():
        model = _conv_model()
        model.set_weights(_initial_conv_weights())
        model.compile(
            optimizer=AGC(_sgd(0.5), clip_factor),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(_CONV_X, _CONV_Y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    assert model.optimizer.iterations.numpy() == 4
    return model.get_weights()


def test_mirrored_two_replicas_matches_one_device():
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    assert mirrored.num_replicas_in_sync == 2
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")

    clipped_2 = _train_in(mirrored, 1e-3)
    clipped_1 = _train_in(one_device, 1e-3)
    unclipped_1 = _train_in(one_device, 1e6)

    for a, b in zip(clipped_2, clipped_1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Clipping is active: without it the weights end up elsewhere.
    assert any(
        not np.allclose(a, b, rtol=1e-3, atol=1e-4)
        for a, b in zip(clipped_1, unclipped_1, strict=True)
    )


# ----------------------------------------------------------------------------------------
# Mixed precision: AGC sees unscaled gradients
# ----------------------------------------------------------------------------------------


@pytest.fixture
def mixed_float16():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_clip_sees_unscaled_gradients(mixed_float16):
    recorded = tf.Variable(tf.zeros((3, 2)), trainable=False)

    class RecordingAGC(AdaptiveGradientClipping):
        def clip_gradients(self, grads_and_vars):
            grads_and_vars = list(grads_and_vars)
            for g, v in grads_and_vars:
                if g is not None and v.shape == (3, 2):
                    recorded.assign(tf.cast(g, tf.float32))
            return super().clip_gradients(grads_and_vars)

    lr, clip_factor = 1.0, 0.01
    model = _dense_model()
    assert model.layers[0].compute_dtype == "float16"
    assert model.layers[0].kernel.dtype == tf.float32
    agc = RecordingAGC(_sgd(lr), clip_factor)
    model.compile(optimizer=agc, loss="mse")
    lso = model.optimizer
    assert isinstance(lso, tf.keras.mixed_precision.LossScaleOptimizer)
    assert lso.inner_optimizer is agc
    assert float(lso.loss_scale) >= 2.0**10  # a large loss scale

    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert int(agc.iterations) == 1

    gw, gb = _np_mse_grads(W0.astype(np.float64), B0.astype(np.float64), X, Y)
    # The recorded gradient is the unscaled one (float16 compute: loose tolerance).
    np.testing.assert_allclose(recorded.numpy(), gw, rtol=2e-2, atol=2e-3)
    w, b = model.layers[0].get_weights()
    expected_w = W0 - lr * _np_clip(gw, W0, clip_factor)
    expected_b = B0 - lr * _np_clip(gb, B0, clip_factor)
    assert not np.allclose(_np_clip(gw, W0, clip_factor), gw)  # clipping is active
    np.testing.assert_allclose(w, expected_w, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b, expected_b, rtol=1e-3, atol=1e-4)

    # Training works: the loss goes down over a few more steps.
    history = model.fit(X, Y, batch_size=16, epochs=5, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_module_regex_semantics_are_search():
    # `exclude` patterns are searched (not matched) in variable names.
    v = tf.Variable(np.ones((2, 2), np.float32), name="block1/dense_head/kernel")
    agc = AGC(_sgd(1.0), 0.01, exclude="dense")
    g = np.full((2, 2), 100.0, np.float32)
    agc.apply_gradients([(tf.constant(g), v)])
    np.testing.assert_allclose(1.0 - v.numpy(), g)
    assert re.search("dense", v.name)


def test_keras_archive_stores_the_inner_state_once(tmp_path):
    """The wrapper's checkpoint is the inner optimizer's: no slot is written twice."""
    import zipfile

    sizes = {}
    for name, optimizer in (
        ("plain", tf.keras.optimizers.Adam(1e-3)),
        ("agc", AdaptiveGradientClipping(tf.keras.optimizers.Adam(1e-3), 0.02)),
    ):
        model = tf.keras.Sequential([tf.keras.Input((64,)), tf.keras.layers.Dense(256)])
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(np.ones((4, 64), "float32"), np.ones((4, 256), "float32"), verbose=0)
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        with zipfile.ZipFile(path) as archive:
            sizes[name] = archive.getinfo("model.weights.h5").file_size
    assert abs(sizes["agc"] - sizes["plain"]) < 0.05 * sizes["plain"]
