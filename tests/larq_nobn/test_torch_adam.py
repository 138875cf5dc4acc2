"""Tests for `TorchAdam`: torch.optim.Adam's update as a tf-keras optimizer."""

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import AGC, TorchAdam


def _np_torch_adam(params, grads_per_step, lr, weight_decay=0.0, decayed=(), eps=1e-8,
                   amsgrad=False, b1=0.9, b2=0.999):  # fmt: skip
    """torch.optim.Adam's documented algorithm, in float64."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    v_max = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k in params:
            g = grads[k].astype(np.float64)
            if k in decayed:
                g = g + weight_decay * params[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            second = v[k]
            if amsgrad:
                v_max[k] = np.maximum(v_max[k], v[k])
                second = v_max[k]
            m_hat, v_hat = m[k] / (1 - b1**t), second / (1 - b2**t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def _problem(seed=0, scale=1e-5):
    rng = np.random.default_rng(seed)
    params = {
        "conv/kernel": rng.normal(size=(3, 3, 2, 4)),
        "conv/gain": rng.uniform(0.5, 1.5, size=(4,)),
        "prelu/alpha": rng.uniform(0, 0.5, size=(1, 1, 4)),
    }
    # Small gradients, as after AGC: where Keras' and torch's epsilon differ.
    grads = [
        {k: (scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
        for _ in range(3)
    ]
    return {k: v.astype(np.float32) for k, v in params.items()}, grads


def _run(optimizer, params, grads_per_step):
    variables = {k: tf.Variable(v, name=k) for k, v in params.items()}
    for grads in grads_per_step:
        optimizer.apply_gradients((tf.constant(grads[k]), variables[k]) for k in variables)
    return {k: v.numpy() for k, v in variables.items()}


def _update_error(got, expected, start):
    num = sum(np.sum((got[k] - expected[k]) ** 2) for k in start)
    den = sum(np.sum((expected[k] - start[k]) ** 2) for k in start)
    return float(np.sqrt(num / den))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_torch_adam_with_small_gradients(amsgrad, fused):
    params, grads = _problem()
    got = _run(TorchAdam(1e-3, amsgrad=amsgrad, fused=fused), params, grads)
    expected = _np_torch_adam(params, grads, 1e-3, amsgrad=amsgrad)
    assert _update_error(got, expected, params) < 1e-4  # float32 rounding of W + dW
    # Keras' Adam adds epsilon before the bias correction: off by far more here.
    keras = _run(tf.keras.optimizers.Adam(1e-3, epsilon=1e-8, amsgrad=amsgrad), params, grads)
    assert _update_error(keras, expected, params) > 1e-2


@pytest.mark.parametrize("fused", [False, True])
def test_coupled_weight_decay_on_the_selected_variables(fused):
    params, grads = _problem(1, scale=1e-3)
    optimizer = TorchAdam(
        1e-3, weight_decay=1e-2, exclude_from_weight_decay=[r"/alpha:"], fused=fused
    )
    got = _run(optimizer, params, grads)
    expected = _np_torch_adam(params, grads, 1e-3, 1e-2, decayed=("conv/kernel", "conv/gain"))
    assert _update_error(got, expected, params) < 1e-4  # float32 rounding of W + dW
    # Keras' decoupled decay (`W -= lr * wd * W`, AdamW-like) is another update.
    assert _update_error(_run(TorchAdam(1e-3), params, grads), expected, params) > 1e-2


def test_decay_comes_after_agc():
    """AGC (a wrapper) clips the data gradient; the L2 term is added after it."""
    w0 = np.full((2,), 1.0, np.float32)
    g = np.array([10.0, -10.0], np.float32)  # clipped to norm 0.01 * sqrt(2)
    variable = tf.Variable(w0, name="w")
    optimizer = AGC(TorchAdam(1e-3, weight_decay=0.1), clip_factor=0.01)
    optimizer.apply_gradients([(tf.constant(g), variable)])
    clipped = g / np.linalg.norm(g) * 0.01 * np.linalg.norm(w0)
    expected = _np_torch_adam({"w": w0}, [{"w": clipped}], 1e-3, 0.1, decayed=("w",))["w"]
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)


def test_no_weight_decay_and_validation():
    assert TorchAdam(weight_decay=0.0).weight_decay is None
    for kwargs, match in [
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"adaptive_epsilon": True}, "epsilon"),
        ({"exclude_from_weight_decay": ["("]}, "regex"),
    ]:
        with pytest.raises(ValueError, match=match):
            TorchAdam(**kwargs)


def test_config_round_trip_and_keras_serialization():
    optimizer = TorchAdam(3e-4, epsilon=1e-6, weight_decay=1e-5, exclude_from_weight_decay="fc")
    config = optimizer.get_config()
    assert "adaptive_epsilon" not in config
    restored = TorchAdam.from_config(config)
    assert restored.weight_decay == pytest.approx(1e-5) and restored.epsilon == 1e-6
    assert restored.decays(tf.Variable(1.0, name="conv/kernel"))
    assert not restored.decays(tf.Variable(1.0, name="fc/kernel"))
    again = tf.keras.optimizers.deserialize(
        tf.keras.optimizers.serialize(AGC(optimizer, 0.02)), use_legacy_optimizer=False
    )
    assert type(again.inner_optimizer) is TorchAdam
    assert again.inner_optimizer.get_config() == config


def test_checkpoint_of_keras_adam_restores_into_torch_adam(tmp_path):
    """The slots are Keras Adam's: a run saved with Adam resumes with TorchAdam."""
    params, grads = _problem(2)
    variables = [tf.Variable(v) for v in params.values()]
    adam = tf.keras.optimizers.Adam(1e-3)
    adam.apply_gradients(zip([tf.constant(g) for g in grads[0].values()], variables, strict=True))
    path = tf.train.Checkpoint(optimizer=adam).save(str(tmp_path / "ckpt"))
    torch_adam = TorchAdam(1e-3)
    torch_adam.build(variables)
    tf.train.Checkpoint(optimizer=torch_adam).restore(path).assert_consumed()
    assert int(torch_adam.iterations) == 1
    for a, b in zip(adam.variables, torch_adam.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _fit_in(strategy):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    with strategy.scope():
        model = tf.keras.Sequential(
            [tf.keras.Input((5,)), tf.keras.layers.Dense(3, name="fc", kernel_initializer="ones")]
        )
        model.compile(
            optimizer=AGC(
                # Excluded by name: each replica's copy of a variable must be excluded too.
                TorchAdam(0.01, weight_decay=1e-2, exclude_from_weight_decay=["/bias:"]),
                0.01,
                units={"bias": "element"},
            ),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    return model


def test_mirrored_two_replicas_match_one_device():
    """Same weights, and the replicas' copies of every variable stay equal."""
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    two = _fit_in(mirrored)
    one = _fit_in(tf.distribute.OneDeviceStrategy("/cpu:0"))
    for a, b in zip(two.get_weights(), one.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for variable in two.weights:
        first, second = (copy.numpy() for copy in variable.values)
        np.testing.assert_array_equal(first, second, err_msg=variable.name)


def test_fused_is_torchs_update_to_float32_rounding():
    """The fused kernel's update differs from torch's op order by rounding only."""
    params, grads = _problem(4, scale=1e-3)
    unfused = _run(TorchAdam(1e-3, weight_decay=1e-2, fused=False), params, grads)
    fused = _run(TorchAdam(1e-3, weight_decay=1e-2, fused=True), params, grads)
    for k in params:
        update = np.abs(unfused[k] - params[k]).max()
        np.testing.assert_allclose(fused[k], unfused[k], rtol=0, atol=1e-5 * update)
    assert TorchAdam(fused=True).get_config()["fused"] is True
    assert TorchAdam.from_config(TorchAdam(fused=True).get_config()).fused


@pytest.mark.parametrize("fused", [False, True])
def test_jit_compile_matches(fused):
    params, grads = _problem(3)
    eager = _run(TorchAdam(1e-3, weight_decay=1e-3, fused=fused), params, grads)
    jit = _run(TorchAdam(1e-3, weight_decay=1e-3, jit_compile=True, fused=fused), params, grads)
    for k in params:
        np.testing.assert_allclose(jit[k], eager[k], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fused", [False, True])
def test_a_step_makes_its_scalars_once_for_all_variables(fused):
    """lr, the betas and their powers are made once per `apply_gradients` and shared by
    every variable's update; a second apply in the same graph makes its own (its step
    count is one more), and two steps in one graph equal two eager steps."""
    shapes = [(3,), (2, 2), (4, 1), (5,)]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(2)]

    def make():
        variables = [tf.Variable(np.ones(s, np.float32)) for s in shapes]
        optimizer = TorchAdam(1e-2, weight_decay=1e-2, fused=fused)
        optimizer.build(variables)
        return variables, optimizer

    variables, optimizer = make()

    @tf.function
    def two_steps():
        for step_grads in grads:
            optimizer.apply_gradients(zip(step_grads, variables, strict=True))

    graph = two_steps.get_concrete_function().graph
    assert sum(op.type == "Pow" for op in graph.get_operations()) == 2 * 2
    two_steps()
    eager_variables, eager_optimizer = make()
    for step_grads in grads:
        eager_optimizer.apply_gradients(zip(step_grads, eager_variables, strict=True))
    for graph_variable, eager_variable in zip(variables, eager_variables, strict=True):
        np.testing.assert_array_equal(graph_variable.numpy(), eager_variable.numpy())
