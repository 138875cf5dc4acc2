"""The acceleration switch (`larq_nobn.acceleration`): its settings, where it is set from,
what each setting runs, and that every accelerated path gives the direct path's values."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import acceleration, layers


@pytest.fixture
def gpu_visible(monkeypatch):
    """TensorFlow reports a GPU (the settings read nothing else of the device)."""
    real = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda kind=None: ["/GPU:0"] if kind == "GPU" else real(kind),
    )


def test_the_switch_is_set_read_and_restored():
    start = larq_nobn.get_acceleration()  # auto, unless LARQ_NOBN_ACCELERATION says
    with larq_nobn.acceleration_scope("exact"):
        assert larq_nobn.get_acceleration() == "exact"
        with larq_nobn.acceleration_scope("cpu"):
            assert acceleration.resolve() == "cpu"
        assert acceleration.resolve() == "exact"
    assert larq_nobn.get_acceleration() == start
    assert larq_nobn.set_acceleration("fused") == start
    assert larq_nobn.set_acceleration(start) == "fused"
    with pytest.raises(ValueError, match="must be one of auto, exact, fused, cpu_light, cpu"):
        larq_nobn.set_acceleration("fast")
    assert larq_nobn.get_acceleration() == start


def test_auto_resolves_by_the_kind_of_device(request):
    assert acceleration.resolve("auto") == "cpu_light"  # the tests see CPUs only
    assert acceleration.plan("auto") == acceleration.PLANS["cpu_light"]
    request.getfixturevalue("gpu_visible")
    assert acceleration.resolve("auto") == "fused"
    assert acceleration.plan("auto") == acceleration.PLANS["fused"]
    # A named setting stays; only the fused batch-norm ops, wrong under cuDNN, never run.
    assert acceleration.resolve("cpu") == "cpu"
    assert acceleration.plan("cpu") == acceleration.Plan(
        acceleration.CONV_CHANNELS,
        fused_statistics=False,
        fused_ws_kernel=True,
        fused_adam=True,
    )


def test_the_settings_order_from_none_to_every_reformulation():
    plans = [acceleration.PLANS[s] for s in acceleration.SETTINGS]
    assert plans[0] == acceleration.Plan(acceleration.CONV_TENSORFLOW, False, False, False)
    on = [sum(map(bool, (p.fused_statistics, p.fused_ws_kernel, p.fused_adam))) for p in plans]
    assert on == [0, 2, 3, 3]
    assert [p.conv_gradients for p in plans] == [
        acceleration.CONV_TENSORFLOW,
        acceleration.CONV_TENSORFLOW,
        acceleration.CONV_ONE_PIXEL,
        acceleration.CONV_CHANNELS,
    ]


def _in_a_fresh_process(value: str | None) -> subprocess.CompletedProcess:
    code = (
        "import larq_nobn, sys\n"
        "print(larq_nobn.get_acceleration())\n"
        "print('tensorflow' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != acceleration.VARIABLE}
    if value is not None:
        env[acceleration.VARIABLE] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("value", [None, "exact", "cpu", "fastest"])
def test_the_environment_sets_the_setting_a_process_starts_with(value):
    result = _in_a_fresh_process(value)
    if value == "fastest":
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.endswith(
            "LARQ_NOBN_ACCELERATION must be one of auto, exact, fused, cpu_light, cpu, "
            "got 'fastest'"
        )
        return
    assert result.returncode == 0, result.stderr[-2000:]
    # Read without TensorFlow: the training program checks it before importing TensorFlow.
    assert result.stdout.split() == [value or "auto", "False"]


# ----------------------------------------------------------------------------------------
# What each setting runs, and that it computes the same values
# ----------------------------------------------------------------------------------------


def _ws_layer(quantizer):
    tf.keras.utils.set_random_seed(4)
    layer = larq_nobn.ScaledWSQuantConv2D(
        6, 3, padding="same", kernel_quantizer=quantizer, gamma=1.3, use_bias=False
    )
    layer.build((None, 5, 5, 4))
    layer.gain.assign(np.linspace(0.5, 1.5, 6).astype(np.float32))
    return layer


@pytest.mark.parametrize("quantizer", [None, "magnitude_aware_ste_sign"])
def test_the_setting_picks_the_fused_ws_kernel_or_the_composition(quantizer, monkeypatch):
    calls = []
    fused_kernel = layers.scaled_ws_kernel
    monkeypatch.setattr(
        layers, "scaled_ws_kernel", lambda *a, **k: calls.append(1) or fused_kernel(*a, **k)
    )
    layer = _ws_layer(quantizer)
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 5, 5, 4)).astype(np.float32))
    results = {}
    for setting in acceleration.SETTINGS:
        calls.clear()
        with larq_nobn.acceleration_scope(setting), tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        results[setting] = [y, *tape.gradient(loss, layer.trainable_variables)]
        assert bool(calls) == (setting != "exact"), setting
    for setting in acceleration.SETTINGS[1:]:
        for a, b in zip(results[setting], results["exact"], strict=True):
            # float32 rounding, relative to each tensor's largest entry (sums cancel).
            scale = np.abs(b.numpy()).max()
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-6 * scale)


def _adam_ops(optimizer) -> list[str]:
    variable = tf.Variable(tf.ones([3, 2]))
    optimizer.build([variable])
    step = tf.function(lambda g: optimizer.apply_gradients([(g, variable)]))
    graph = step.get_concrete_function(tf.TensorSpec([3, 2])).graph.as_graph_def()
    return [n.op for f in graph.library.function for n in f.node_def] + [n.op for n in graph.node]


@pytest.mark.parametrize("setting", ["auto", *acceleration.SETTINGS])
@pytest.mark.parametrize("fused", [None, True, False])
def test_torch_adam_follows_the_setting_unless_told(setting, fused):
    with larq_nobn.acceleration_scope(setting):
        ops = _adam_ops(larq_nobn.TorchAdam(1e-3, fused=fused))
    expected = (setting != "exact") if fused is None else fused
    assert ("ResourceApplyAdam" in ops) == expected
    assert larq_nobn.TorchAdam(fused=fused).get_config()["fused"] is fused
