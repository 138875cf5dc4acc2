"""The conventions tf-keras and larq test their own optimizers, layers, quantizers and
constraints against (tf-keras' `optimizers/optimizer_test.py`, larq's `layers_test.py`,
`quantizers_test.py`, `constraints_test.py`), checked on this library's classes."""

import inspect
import os

import larq as lq
import numpy as np
import pytest
import tensorflow as tf
from tf_keras.src.testing_infra import test_utils

import larq_nobn
from larq_nobn import AGC, AdaptiveGradientClipping, TorchAdam
from larq_nobn.train import recipe
from tests.larq_nobn import distributed_steps
from tests.train import program

# ----------------------------------------------------------------------------------------
# Optimizers: config, serialization, model files without custom_objects
# ----------------------------------------------------------------------------------------


def _agc_torch_adam():
    """AGC(TorchAdam) with every Keras optimizer setting away from its default."""
    agc = AGC(
        TorchAdam(
            0.05,
            weight_decay=1e-3,
            exclude_from_weight_decay=["bias"],
            use_ema=True,
            ema_momentum=0.9,
            ema_overwrite_frequency=None,
        ),
        clip_factor=0.02,
        eps=2e-3,
        exclude=r"^fc/",
        units={r"/bias:\d+$": "tensor"},
    )
    agc.clipnorm = 0.01  # set on the wrapper, as tf-keras' own save/load test does
    return agc


def _recipe():
    optimizer = recipe.optimizer(0.05, total_steps=10, agc_clip=0.02, weight_decay=1e-3)
    optimizer.clipnorm = 0.01
    return optimizer


OPTIMIZERS = {
    "agc_torch_adam": _agc_torch_adam,
    "recipe": _recipe,
    "recipe_without_agc": lambda: recipe.optimizer(0.05, total_steps=10, agc_clip=0.0),
    "agc_adam_schedule_global_clipnorm": lambda: AGC(
        tf.keras.optimizers.Adam(recipe.LinearDecay(0.05, 10), global_clipnorm=0.3)
    ),
    "agc_sgd_clipvalue_weight_decay": lambda: AGC(
        tf.keras.optimizers.SGD(0.1, clipvalue=0.01, weight_decay=0.004), 0.05
    ),
}


def _inner_config(optimizer) -> dict:
    if isinstance(optimizer, AdaptiveGradientClipping):
        return optimizer.inner_optimizer.get_config()
    return optimizer.get_config()


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_optimizer_config_and_serialization_round_trip(make):
    optimizer = make()
    config = optimizer.get_config()
    again = type(optimizer).from_config(config)
    assert type(again) is type(optimizer)
    assert again.get_config() == config

    serialized = tf.keras.optimizers.serialize(optimizer)
    restored = tf.keras.optimizers.deserialize(serialized)
    assert type(restored) is type(optimizer)
    assert tf.keras.optimizers.serialize(restored) == serialized
    assert type(tf.keras.optimizers.get(serialized)) is type(optimizer)
    # The legacy format (what h5 and SavedModel files hold) reads back too.
    legacy = tf.keras.optimizers.serialize(optimizer, use_legacy_format=True)
    restored = tf.keras.optimizers.deserialize(legacy, use_legacy_format=True)
    assert restored.get_config() == config


def test_agc_settings_are_the_inner_optimizers():
    """Set on the wrapper, each Keras setting is the inner optimizer's (so it is saved)."""
    agc = AGC(tf.keras.optimizers.Adam(0.1))
    values = {
        "clipnorm": 0.1,
        "clipvalue": 0.2,
        "weight_decay": 0.3,
        "use_ema": True,
        "ema_momentum": 0.5,
        "ema_overwrite_frequency": 7,
        "jit_compile": False,
    }
    for name, value in values.items():
        setattr(agc, name, value)
    agc.exclude_from_weight_decay(var_names=["bias"])
    inner = agc.inner_optimizer
    assert {name: getattr(inner, name) for name in values} == values
    assert {name: getattr(agc, name) for name in values} == values
    assert not set(values) & set(vars(agc))
    assert inner._exclude_from_weight_decay_names == ["bias"]
    agc.lr = 0.25
    assert float(inner.learning_rate) == 0.25
    config = inner.get_config()
    assert {name: config[name] for name in values} == values


def _np_clip_by_norm(g, clipnorm):
    norm = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    return g * clipnorm / norm if norm > clipnorm else g


def test_inner_clipnorm_applies_after_agc():
    """The documented order: AGC clips per unit, then the inner clipnorm per variable."""
    w = np.array([[3.0, 0.1], [4.0, 0.2]], np.float32)
    # Unit 0 is above AGC's bound (0.5 * ||w0||), unit 1 below it.
    g = np.array([[30.0, 0.01], [-40.0, 0.02]], np.float32)
    variable = tf.Variable(w)
    agc = AGC(tf.keras.optimizers.SGD(1.0), clip_factor=0.5)
    agc.clipnorm = 1.0
    agc.apply_gradients([(tf.constant(g), variable)])

    [(after_agc, _)] = AGC(tf.keras.optimizers.SGD(1.0), 0.5).clip_gradients(
        [(tf.constant(g), tf.constant(w))]
    )
    expected = w - _np_clip_by_norm(after_agc.numpy(), 1.0)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    # The other order (clipnorm first, then AGC) gives another result.
    [(other, _)] = AGC(tf.keras.optimizers.SGD(1.0), 0.5).clip_gradients(
        [(tf.constant(_np_clip_by_norm(g, 1.0)), tf.constant(w))]
    )
    assert not np.allclose(variable.numpy(), w - other.numpy())


X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)


def _compiled_model(optimizer):
    rng = np.random.default_rng(2)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((3,)),
            tf.keras.layers.Dense(4, name="hidden"),
            larq_nobn.LearnableBias(name="shift"),
            tf.keras.layers.Dense(2, name="fc"),
        ]
    )
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
    model.compile(optimizer=optimizer, loss="mse")
    return model


SAVE_OPTIMIZERS = {"agc_torch_adam": _agc_torch_adam, "recipe": _recipe}


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("filename", ["model.h5", "saved_model", "model.keras"])
@pytest.mark.parametrize("make", SAVE_OPTIMIZERS.values(), ids=SAVE_OPTIMIZERS.keys())
def test_compiled_model_loads_without_custom_objects(make, filename, tmp_path):
    model = _compiled_model(make())
    model.fit(X, Y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / filename)
    model.save(path)

    loaded = tf.keras.models.load_model(path)  # no custom_objects
    if filename == "saved_model":
        # As for any Keras optimizer (tf-keras' own test does the same), a SavedModel
        # directory gives the optimizer's variables back through `load_weights`.
        loaded.load_weights(path)
    optimizer = loaded.optimizer
    assert type(optimizer) is AdaptiveGradientClipping
    assert type(optimizer.inner_optimizer) is TorchAdam
    assert optimizer.get_config() == model.optimizer.get_config()
    assert optimizer.clip_factor == 0.02
    assert optimizer.clipnorm == optimizer.inner_optimizer.clipnorm == 0.01
    assert _inner_config(optimizer)["weight_decay"] == 1e-3
    assert int(optimizer.iterations) == 2

    # One more step on each: the same weights, and the same optimizer variables (the Adam
    # moments, the EMA), so the state and every setting came back and is applied.
    for m in (model, loaded):
        m.train_on_batch(X[:4], Y[:4])
    assert int(optimizer.iterations) == 3
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-8)


def test_the_saved_settings_change_the_steps():
    """Non-vacuous: without the clipnorm, with another clip factor or without the EMA
    (whose average `fit` writes into the weights at its end), the steps of the save/load
    test end elsewhere. (Adam's first step is the sign of the gradient: the later ones
    see its scale.)"""
    settings = [(0.02, 0.01, True), (0.02, None, True), (0.5, 0.01, True), (0.02, 0.01, False)]
    weights = []
    for clip_factor, clipnorm, use_ema in settings:
        inner = TorchAdam(0.05, use_ema=use_ema, ema_momentum=0.9, ema_overwrite_frequency=None)
        optimizer = AGC(inner, clip_factor, exclude=r"^fc/")
        optimizer.clipnorm = clipnorm
        model = _compiled_model(optimizer)
        model.fit(X, Y, batch_size=4, epochs=1, verbose=0, shuffle=False)
        model.train_on_batch(X[:4], Y[:4])
        weights.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    for other in weights[1:]:
        assert np.abs(other - weights[0]).max() > 1e-3


# ----------------------------------------------------------------------------------------
# Sparse gradients
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_inner, decays",
    [
        (lambda: tf.keras.optimizers.Adam(0.1), False),
        (lambda: TorchAdam(0.1, weight_decay=0.01), True),
    ],
    ids=["adam", "torch_adam"],
)
def test_sparse_gradients_equal_dense(make_inner, decays):
    """An Embedding's tf.IndexedSlices gradient (with a repeated row) through AGC gives
    the weights the same updates as its dense tensor does, step after step, clipped or
    excluded (kept sparse for the inner optimizer)."""
    ids = tf.constant([[1, 3, 3]])
    initial = np.random.default_rng(3).normal(size=(5, 2)).astype(np.float32)

    def train(exclude, dense):
        embedding = tf.keras.layers.Embedding(5, 2, name="embedding")
        embedding.build(None)
        embedding.set_weights([initial])
        optimizer = AGC(make_inner(), clip_factor=0.01, exclude=exclude)
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(embedding(ids) ** 2) * 10.0
            grad = tape.gradient(loss, embedding.embeddings)
            assert isinstance(grad, tf.IndexedSlices)
            optimizer.apply_gradients(
                [(tf.convert_to_tensor(grad) if dense else grad, embedding.embeddings)]
            )
        return embedding.get_weights()[0]

    clipped, excluded = (
        [train(exclude, dense) for dense in (False, True)] for exclude in (None, "embedding")
    )
    for sparse, dense in (clipped, excluded):
        np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-7)
    assert np.abs(clipped[0] - excluded[0]).max() > 1e-3  # AGC clipped something
    # Only rows 1 and 3 have a gradient (TorchAdam's L2 moves every row).
    moved = np.abs(clipped[0] - initial).max(axis=1) > 1e-4
    assert moved.tolist() == ([True] * 5 if decays else [False, True, False, True, False])


# ----------------------------------------------------------------------------------------
# Conv layers: signature, pad values, groups, data format (larq's layers_test.py)
# ----------------------------------------------------------------------------------------

OWN_ARGUMENTS = ["gamma", "eps", "gain_initializer", "kernel_scale"]
LARQ_ONLY = ["input_quantizer", "kernel_quantizer", "pad_values"]


@pytest.mark.parametrize(
    "layer, reference, ignored",
    [
        (larq_nobn.ScaledWSQuantConv2D, lq.layers.QuantConv2D, []),
        # larq's own check of QuantConv2D against Conv2D ignores these.
        (larq_nobn.ScaledWSQuantConv2D, tf.keras.layers.Conv2D, LARQ_ONLY),
        (larq_nobn.ScaledWSConv2D, tf.keras.layers.Conv2D, ["pad_values"]),
    ],
)
def test_keyword_arguments_and_defaults_are_the_reference_layers(layer, reference, ignored):
    params = inspect.signature(layer).parameters
    reference_params = inspect.signature(reference).parameters
    names = [name for name in params if name not in ignored]
    # The reference's arguments in its order, then this layer's own, then **kwargs.
    assert names == [*list(reference_params)[:-1], *OWN_ARGUMENTS, "kwargs"]
    for name, parameter in reference_params.items():
        assert params[name].default == parameter.default, name
        assert params[name].kind == parameter.kind, name
    # The config: the reference's keys, plus the ignored and own arguments.
    config, reference_config = layer(4, 3).get_config(), reference(4, 3).get_config()
    assert set(reference_config) <= set(config)
    assert set(config) - set(reference_config) == {*OWN_ARGUMENTS, *ignored}


def _kernel_and_gain(filters, in_per_group, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(3, 3, in_per_group, filters)).astype(np.float32)
    gain = rng.uniform(0.5, 1.5, size=(filters,)).astype(np.float32)
    bias = rng.normal(size=(filters,)).astype(np.float32)
    return kernel, gain, bias


def _layer(binary, filters, kernel, gain, bias, input_shape, **kwargs):
    if binary:
        layer = larq_nobn.ScaledWSQuantConv2D(
            filters,
            3,
            input_quantizer="ste_sign",
            kernel_quantizer="magnitude_aware_ste_sign",
            **kwargs,
        )
    else:
        layer = larq_nobn.ScaledWSConv2D(filters, 3, **kwargs)
    layer.build(input_shape)
    by_name = {"kernel": kernel, "gain": gain, "bias": bias}
    layer.set_weights([by_name[w.name.split("/")[-1].split(":")[0]] for w in layer.weights])
    return layer


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
@pytest.mark.parametrize("strides, dilation_rate", [(1, 1), (2, 1), (1, 2)])
def test_pad_values_equal_padding_the_inputs(binary, strides, dilation_rate):
    """`same` with `pad_values=1` is `valid` on inputs padded with ones (the TF padding
    split, the extra row/column at the end)."""
    x = np.random.default_rng(4).normal(size=(2, 6, 7, 3)).astype(np.float32)
    kernel, gain, bias = _kernel_and_gain(4, 3, seed=5)
    common = dict(strides=strides, dilation_rate=dilation_rate)
    same = _layer(binary, 4, kernel, gain, bias, x.shape, padding="same", pad_values=1.0, **common)
    valid = _layer(binary, 4, kernel, gain, bias, x.shape, padding="valid", **common)
    pads = []
    for size in x.shape[1:3]:
        effective = (3 - 1) * dilation_rate + 1
        total = max(effective - (size % strides or strides), 0)
        pads.append((total // 2, total - total // 2))
    padded = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=1.0)
    expected = valid(padded).numpy()
    got = same(x).numpy()
    assert got.shape == (2, -(-6 // strides), -(-7 // strides), 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Zeros would give something else.
    zeros = _layer(binary, 4, kernel, gain, bias, x.shape, padding="same", **common)
    assert not np.allclose(zeros(x).numpy(), got, atol=1e-3)


def _outputs_and_kernel_gradient_tensors(layer, x):
    with tf.GradientTape() as tape:
        y = layer(x)
        loss = tf.reduce_sum(y * y)
    return y, tape.gradient(loss, layer.kernel)


def _outputs_and_kernel_gradient(layer, x):
    y, grad = _outputs_and_kernel_gradient_tensors(layer, tf.constant(x))
    return y.numpy(), grad.numpy()


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
def test_groups_are_independent_convolutions_of_the_channel_groups(binary):
    """groups=2: each half of the outputs is a separate ScaledWS layer on its half of the
    inputs, with its slice of the kernel (same standardization, fan-in 3 * 3 * in / 2)."""
    x = np.random.default_rng(6).normal(size=(2, 5, 5, 4)).astype(np.float32)
    kernel, gain, bias = _kernel_and_gain(6, 2, seed=7)
    grouped = _layer(binary, 6, kernel, gain, bias, x.shape, groups=2, padding="same")
    assert grouped.kernel.shape == (3, 3, 2, 6)
    got, got_grad = _outputs_and_kernel_gradient(grouped, x)

    outputs, grads = [], []
    for g in range(2):
        part = slice(3 * g, 3 * (g + 1))
        single = _layer(
            binary, 3, kernel[..., part], gain[part], bias[part], (2, 5, 5, 2), padding="same"
        )
        y, grad = _outputs_and_kernel_gradient(single, x[..., 2 * g : 2 * (g + 1)])
        outputs.append(y)
        grads.append(grad)
    np.testing.assert_allclose(got, np.concatenate(outputs, axis=-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grad, np.concatenate(grads, axis=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["fp", "binary"])
@pytest.mark.parametrize("groups", [1, 2])
def test_channels_first_is_channels_last_transposed(binary, groups):
    """Same kernel (Keras keeps it HWIO), NCHW inputs: the NHWC outputs transposed, and
    the same kernel gradient. Run under XLA: TensorFlow's CPU convolutions are NHWC only,
    as for tf.keras.layers.Conv2D."""
    x = np.random.default_rng(8).normal(size=(2, 7, 6, 4)).astype(np.float32)
    kernel, gain, bias = _kernel_and_gain(6, 4 // groups, seed=9)
    common = dict(groups=groups, padding="same", pad_values=1.0, strides=2)
    last = _layer(binary, 6, kernel, gain, bias, x.shape, **common)
    first = _layer(
        binary, 6, kernel, gain, bias, (2, 4, 7, 6), data_format="channels_first", **common
    )
    step = tf.function(_outputs_and_kernel_gradient_tensors, jit_compile=True)
    y_last, g_last = step(last, tf.constant(x))
    y_first, g_first = step(first, tf.constant(x.transpose(0, 3, 1, 2)))
    assert y_first.shape == (2, 6, 4, 3)
    np.testing.assert_allclose(
        y_first.numpy(), y_last.numpy().transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(g_first.numpy(), g_last.numpy(), rtol=1e-4, atol=1e-5)
    # The config says so, and round-trips.
    again = type(first).from_config(first.get_config())
    assert again.data_format == "channels_first" and again.groups == groups


# ----------------------------------------------------------------------------------------
# Quantizer, constraint, LearnableBias (larq's quantizers/constraints tests, Keras' layer_test)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [lq.quantizers, tf.keras.activations])
def test_quantizer_get_serialize_deserialize(module):
    fn = module.get(larq_nobn.MagnitudeAwareSteSign(clip_value=0.3))
    assert type(fn) is larq_nobn.MagnitudeAwareSteSign and type(fn.precision) is int
    restored = module.deserialize(module.serialize(fn))
    assert type(restored) is larq_nobn.MagnitudeAwareSteSign
    assert type(restored.precision) is int and restored.precision == 1
    assert restored.clip_value == 0.3


def test_quantizer_graph_eager_and_numpy_agree():
    w = np.array([[0.5, -1.0, 0.0], [0.0, 2.0, -0.25]], np.float32)
    expected = np.mean(np.abs(w), axis=0, keepdims=True) * np.where(w >= 0, 1.0, -1.0)
    quantizer = lq.quantizers.get("magnitude_aware_ste_sign")
    x = tf.keras.backend.placeholder(ndim=2)
    graph = tf.keras.backend.function([x], [quantizer(x)])([w])[0]
    np.testing.assert_allclose(graph, expected, rtol=1e-6)
    np.testing.assert_allclose(quantizer(tf.constant(w)).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(tf.function(quantizer)(tf.constant(w)).numpy(), expected)


def test_quantizer_metrics_are_larqs():
    """No metric by default; one flip ratio from `metrics_scope` or from `metrics=`."""

    def kernel_quantizer_metrics(quantizer):
        model = tf.keras.Sequential(
            [lq.layers.QuantDense(3, kernel_quantizer=quantizer, input_shape=(4,))]
        )
        model.compile(loss="mse", optimizer="sgd")
        return len(model.layers[0].kernel_quantizer._metrics)

    assert kernel_quantizer_metrics("magnitude_aware_ste_sign") == 0
    with lq.context.metrics_scope(["flip_ratio"]):
        assert kernel_quantizer_metrics("magnitude_aware_ste_sign") == 1
    assert kernel_quantizer_metrics(larq_nobn.MagnitudeAwareSteSign(metrics=["flip_ratio"])) == 1


def test_constraint_get_serialize_and_values():
    fn = tf.keras.constraints.get("weight_standardization")
    assert type(fn) is larq_nobn.WeightStandardization
    config = tf.keras.constraints.serialize(larq_nobn.WeightStandardization(eps=0.1))
    restored = tf.keras.constraints.deserialize(config)
    assert type(restored) is larq_nobn.WeightStandardization and restored.eps == 0.1
    w = np.random.default_rng(13).uniform(-2, 2, size=(4, 10))
    w[0, :3] = 0.0
    result = tf.keras.backend.eval(restored(tf.keras.backend.variable(w)))
    expected = (w - w.mean(axis=0)) / (w.std(axis=0) + 0.1)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "mixed_float16"])
def test_learnable_bias_passes_keras_layer_test(dtype):
    x = np.random.default_rng(14).normal(size=(2, 3, 4)).astype(np.float32)
    bias = np.array([0.5, -1.0, 0.25, 2.0], np.float32)
    compute = "float16" if dtype != "float32" else "float32"
    output = test_utils.layer_test(
        larq_nobn.LearnableBias,
        kwargs={"bias_initializer": tf.keras.initializers.Constant(bias), "dtype": dtype},
        input_data=x.astype(compute),
        expected_output=x.astype(compute) + bias.astype(compute),
        expected_output_dtype=compute,
    )
    assert output.shape == x.shape


# ----------------------------------------------------------------------------------------
# tf.distribute: one device, two-CPU mirrored, 2x1 multi-worker
# ----------------------------------------------------------------------------------------


def _assert_same_weights(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture  # cheap (a 6x6 model, two steps): computed in each test's own state
def one_device_weights():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    weights = {
        "fit": distributed_steps.train_with_fit(strategy),
        "loop": distributed_steps.train_with_loop(strategy),
    }
    # Non-vacuous: the steps moved every weight, and fit and the loop agree.
    initial = distributed_steps._model().get_weights()
    for trained in weights.values():
        for a, b in zip(trained, initial, strict=True):
            assert np.abs(a - b).max() > 1e-4
    _assert_same_weights(weights["loop"], weights["fit"])
    return weights


@pytest.mark.parametrize("how", ["fit", "loop"])
def test_two_cpu_mirrored_matches_one_device(one_device_weights, how):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    train = getattr(distributed_steps, f"train_with_{how}")
    _assert_same_weights(train(strategy), one_device_weights[how])


def test_two_workers_match_one_device(one_device_weights, tmp_path):
    """A 2x1 MultiWorkerMirroredStrategy of real processes on 127.0.0.1."""
    output = str(tmp_path / "weights")
    script = os.path.relpath(distributed_steps.__file__, program.REPO)
    workers = program.start_cluster(tmp_path, [[output]] * 2, "worker", script)
    logs = program.finish_cluster(tmp_path, workers, "worker")
    assert [worker.returncode for worker in workers] == [0, 0], logs
    count = len(one_device_weights["fit"])
    for index in range(2):
        with np.load(f"{output}{index}.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(2 * count)]
        _assert_same_weights(arrays[:count], one_device_weights["fit"])
        _assert_same_weights(arrays[count:], one_device_weights["loop"])
