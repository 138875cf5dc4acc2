"""Tests of `larq_nobn.conv`: forward-kernel convolution gradients equal TensorFlow's."""

import contextlib
import itertools

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import acceleration, conv, zoo


@contextlib.contextmanager
def every_gradient_ours():
    """Ours for every convolution: "cpu", with its channel rule lowered to one channel."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv, "INPUT_GRADIENT_MIN_CHANNELS", 1)
        patch.setattr(conv, "FILTER_GRADIENT_MIN_CHANNELS", 1)
        with larq_nobn.acceleration_scope("cpu"):
            yield


@pytest.fixture
def forward_gradients():
    with every_gradient_ours():
        yield


def random(*shape, dtype="float32"):
    # NumPy's global generator: tests/conftest.py seeds it from each test's node id, so a
    # test draws the same values whichever tests ran before it.
    return tf.constant(np.random.standard_normal(shape), dtype)


def gradients(fn, x, w):
    """Output, input and filter gradients of sum(y * cotangent) for a fixed cotangent."""
    with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = fn(x, w)
        positions = tf.cast(tf.reshape(tf.range(tf.size(y)), tf.shape(y)), "float32")
        cotangent = tf.cast(tf.sin(positions), y.dtype)
        loss = tf.reduce_sum(y * cotangent)
    return [y, *tape.gradient(loss, [x, w])]


def assert_relative(actual, expected, rtol, what=""):
    """|actual - expected| <= rtol * max|expected|, element by element."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    scale = max(np.abs(expected).max(), 1e-12)
    assert np.abs(actual - expected).max() <= rtol * scale, what


def tf_padding(padding):
    return padding if isinstance(padding, str) else [[0, 0], *padding, [0, 0]]


GRID = [
    (size, kernel, stride, padding)
    for size, kernel, stride, padding in itertools.product(
        (1, 2, 3, 4, 7), (1, 3, 7), (1, 2), ("SAME", "VALID", [[1, 1], [1, 1]], [[3, 0], [0, 2]])
    )
    if padding != "VALID" or size >= kernel
    if isinstance(padding, str) or size + min(map(sum, padding)) >= kernel
]


@pytest.mark.parametrize("size,kernel,stride,padding", GRID)
def test_gradients_equal_tensorflows(forward_gradients, size, kernel, stride, padding):
    # Height and width differ, so that a swapped axis would show.
    x, w = random(2, size, size + 1, 3), random(kernel, kernel, 3, 5)
    ours = gradients(lambda x, w: larq_nobn.conv2d(x, w, stride, padding), x, w)
    theirs = gradients(lambda x, w: tf.nn.conv2d(x, w, stride, tf_padding(padding)), x, w)
    for a, b in zip(ours, theirs, strict=True):
        assert_relative(a, b, 1e-5)


@pytest.mark.parametrize("setting", ["cpu_light", "cpu"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("in_channels,out_channels", [(512, 512), (128, 256), (64, 64)])
def test_many_channels_on_small_maps(in_channels, out_channels, stride, setting):
    # The CPU settings, at the shapes of the backbones' last stages.
    x, w = random(2, 2, 2, in_channels), random(3, 3, in_channels, out_channels)
    with larq_nobn.acceleration_scope(setting):
        ours = gradients(lambda x, w: larq_nobn.conv2d(x, w, stride), x, w)
    theirs = gradients(lambda x, w: tf.nn.conv2d(x, w, stride, "SAME"), x, w)
    for a, b in zip(ours, theirs, strict=True):
        assert_relative(a, b, 1e-5)


def gradient_ops(fn, x, w) -> set[str]:
    graph = tf.function(lambda x, w: gradients(fn, x, w)).get_concrete_function(x, w).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize(
    "setting,channels,size,stride,tf_input,tf_filter",
    [
        ("exact", 512, 1, 1, True, True),
        ("fused", 512, 1, 1, True, True),
        ("cpu", 8, 4, 1, True, True),  # few channels: TensorFlow's kernels are as fast
        ("cpu", 128, 4, 1, False, True),  # 128 * 128: the input gradient is ours
        ("cpu", 512, 4, 1, False, False),  # 512 * 512: both are ours
        ("cpu_light", 512, 2, 1, True, True),  # TensorFlow's on 2x2 outputs
        ("cpu_light", 128, 1, 1, False, True),  # and ours on 1x1 ones, by the channel rule
        ("cpu_light", 512, 1, 1, False, False),
        ("cpu_light", 512, 2, 2, False, False),  # a 2x2 map at stride 2: a 1x1 output
        ("auto", 512, 2, 1, True, True),  # no GPU here: auto is cpu_light
        ("auto", 512, 1, 1, False, False),
    ],
)
def test_which_kernels_compute_the_gradients(setting, channels, size, stride, tf_input, tf_filter):
    x, w = random(2, size, size, channels), random(3, 3, channels, channels)
    with larq_nobn.acceleration_scope(setting):
        ops = gradient_ops(lambda x, w: larq_nobn.conv2d(x, w, stride), x, w)
    assert ("Conv2DBackpropInput" in ops) == tf_input
    assert ("Conv2DBackpropFilter" in ops) == tf_filter
    # What the benchmark reports per shape and setting, without entering it.
    assert conv.gradient_plan(x.shape, w.shape, stride, setting=setting) == (
        not tf_input,
        not tf_filter,
    )


@pytest.mark.parametrize("setting", ["auto", "cpu_light", "cpu"])
def test_where_a_gpu_is_visible_auto_keeps_tensorflows_kernels(setting, monkeypatch):
    real = tf.config.list_logical_devices
    monkeypatch.setattr(
        tf.config,
        "list_logical_devices",
        lambda kind=None: ["/GPU:0"] if kind == "GPU" else real(kind),
    )
    x, w = random(2, 1, 1, 512), random(3, 3, 512, 512)
    with larq_nobn.acceleration_scope(setting):
        ops = gradient_ops(lambda x, w: larq_nobn.conv2d(x, w, 1), x, w)
    # A setting that names the CPU reformulations keeps them (correct on any device).
    ours = setting != "auto"
    assert ("Conv2DBackpropInput" in ops) != ours
    assert ("Conv2DBackpropFilter" in ops) != ours


def test_explicit_padding_must_be_non_negative_pairs():
    with pytest.raises(ValueError, match="two non-negative pairs"):
        larq_nobn.conv2d(random(1, 3, 3, 1), random(3, 3, 1, 1), 1, [[1, -1], [0, 0]])


@pytest.mark.parametrize("dtype,rtol", [("float16", 2e-2), ("bfloat16", 5e-2)])
def test_low_precision(forward_gradients, dtype, rtol):
    x, w = random(2, 4, 4, 8, dtype=dtype), random(3, 3, 8, 16, dtype=dtype)
    ours = gradients(lambda x, w: larq_nobn.conv2d(x, w, 2), x, w)
    reference = gradients(
        lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), tf.cast(x, "float32"), tf.cast(w, "float32")
    )
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == dtype
        assert_relative(tf.cast(a, "float32"), b, rtol)


def test_jit_compile(forward_gradients):
    x, w = random(2, 5, 5, 4), random(3, 3, 4, 6)
    compiled = tf.function(
        lambda x, w: gradients(lambda x, w: larq_nobn.conv2d(x, w, 2), x, w), jit_compile=True
    )
    theirs = gradients(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, w)
    for a, b in zip(compiled(x, w), theirs, strict=True):
        assert_relative(a, b, 1e-5)


LAYERS = [
    lambda: larq_nobn.ScaledWSQuantConv2D(
        6,
        3,
        strides=2,
        padding="same",
        pad_values=1.0,
        input_quantizer="ste_sign",
        kernel_quantizer="magnitude_aware_ste_sign",
    ),
    lambda: larq_nobn.ScaledWSConv2D(6, 3, padding="valid"),
    lambda: larq_nobn.QuantConv2D(
        6,
        3,
        strides=2,
        padding="same",
        input_quantizer="approx_sign",
        kernel_quantizer="ste_sign",
    ),
    lambda: larq_nobn.QuantConv2D(6, 1, use_bias=True, bias_initializer="ones"),
]


@pytest.mark.parametrize("make_layer", LAYERS)
def test_layers_gradients_equal_tensorflows(make_layer):
    layer = make_layer()
    x = random(2, 6, 6, 4)
    layer.build(x.shape)

    def run(accelerated):
        scope = every_gradient_ours() if accelerated else larq_nobn.acceleration_scope("exact")
        with scope, tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    for a, b in zip(run(True), run(False), strict=True):
        assert_relative(a, b, 1e-5)


def test_larq_conv_layer_is_larqs_with_other_gradients():
    layer = larq_nobn.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    assert isinstance(layer, lq.layers.QuantConv2D)
    config = tf.keras.layers.serialize(layer)
    clone = tf.keras.layers.deserialize(config)
    assert type(clone) is larq_nobn.QuantConv2D
    assert clone.get_config() == layer.get_config()


MODELS = [
    (f"{backbone}_{norm}", stage)
    for backbone in ("reactnet_a", "reactnet18")
    for norm in zoo.NORMS
    for stage in zoo.STAGES
]


@pytest.fixture
def float64():
    # Batch norm over the two values of a 1x1 map amplifies float32 rounding in the
    # gradients by orders of magnitude; in float64 any real difference still shows.
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("float64")
    yield
    tf.keras.mixed_precision.set_global_policy(previous)


def model_gradients(model, images):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(images, training=True)))
    return tape.gradient(loss, model.trainable_variables)


# Every setting but "exact" itself, and "cpu" with ours for every convolution.
ACCELERATED = [*(s for s in acceleration.SETTINGS if s != "exact"), "every convolution"]


@pytest.mark.parametrize("name,stage", MODELS)
def test_zoo_model_gradients_equal_the_exact_settings(float64, name, stage):
    """Each accelerated setting's gradients of a whole zoo model are the "exact" setting's
    (one model and one exact computation per test: both are large in float64)."""
    tf.keras.utils.set_random_seed(1)
    model = zoo.get_model(name, stage=stage, input_shape=(32, 32, 3), num_classes=10)
    images = random(2, 32, 32, 3, dtype="float64")
    with larq_nobn.acceleration_scope("exact"):
        theirs = model_gradients(model, images)
    # Some variables' true gradients are zero (batch norm over the 2 values of a 1x1
    # map) and hold only rounding noise: compare against the model's largest gradient.
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in theirs)
    for setting in ACCELERATED:
        if setting == "every convolution":
            with every_gradient_ours():
                ours = model_gradients(model, images)
        else:
            with larq_nobn.acceleration_scope(setting):
                ours = model_gradients(model, images)
        assert len(ours) == len(model.trainable_variables) > 0
        for variable, a, b in zip(model.trainable_variables, ours, theirs, strict=True):
            assert a.dtype == ("float32" if variable.name.startswith("fc/") else "float64")
            error = float(tf.reduce_max(tf.abs(a - b)))
            assert error <= 1e-10 * scale, (setting, variable.name, error / scale)


@pytest.mark.parametrize("fmt", ["keras", "tf"])
def test_saved_model_loads_and_trains_the_same(forward_gradients, fmt, tmp_path):
    inputs = tf.keras.Input((6, 6, 4))
    x = larq_nobn.QuantConv2D(8, 3, strides=2, padding="same", name="q")(inputs)
    x = larq_nobn.ScaledWSQuantConv2D(
        8, 3, padding="same", input_quantizer="approx_sign", name="ws"
    )(x)
    outputs = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    path = str(tmp_path / ("model.keras" if fmt == "keras" else "saved_model"))
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    images, targets = random(4, 6, 6, 4), random(4, 8)
    before = model.get_weights()
    for m in (model, loaded):
        m.train_on_batch(images, targets)
    for a, b, start in zip(model.get_weights(), loaded.get_weights(), before, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert not np.array_equal(a, start)  # every weight trained


def test_unknown_height_and_width_take_tensorflows_gradients(forward_gradients):
    x, w = random(2, 5, 6, 4), random(3, 3, 4, 6)
    spec = tf.TensorSpec([None, None, None, 4])
    traced = tf.function(
        lambda x: gradients(lambda x, w: larq_nobn.conv2d(x, w, 2, "SAME"), x, w),
        input_signature=[spec],
    )
    theirs = gradients(lambda x, w: tf.nn.conv2d(x, w, 2, "SAME"), x, w)
    for a, b in zip(traced(x), theirs, strict=True):
        assert_relative(a, b, 1e-6)
    ops = {op.type for op in traced.get_concrete_function().graph.get_operations()}
    assert "Conv2DBackpropInput" in ops
