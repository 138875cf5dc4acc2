"""Tests for train/recipe.py: schedule, optimizer with AGC, weight decay, losses, distillation."""

import numpy as np
import pytest
import tensorflow as tf

import zoo
from train import recipe
from train.config import Config


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))


@pytest.fixture(scope="module")
def reactnet18():
    """A ReActNet-18 (no BN, stage 1, CIFAR stem) for 32x32 inputs and 10 classes (~3 s)."""
    return zoo.get_model(
        "reactnet18_nobn", stage=1, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )


# ----------------------------------------------------------------------------- schedule


def test_linear_decay_values():
    schedule = recipe.LinearDecay(4e-3, total_steps=100)
    values = {step: float(schedule(step)) for step in (0, 25, 50, 100, 101, 1000)}
    assert values[0] == pytest.approx(4e-3)
    assert values[25] == pytest.approx(3e-3)
    assert values[50] == pytest.approx(2e-3)
    assert values[100] == 0.0
    assert values[101] == 0.0  # clamped, never negative
    assert values[1000] == 0.0
    # A tf.Variable step (the optimizer's iterations) works too.
    assert float(schedule(tf.Variable(50, dtype=tf.int64))) == pytest.approx(2e-3)


def test_linear_decay_config_round_trip():
    schedule = recipe.LinearDecay(5e-4, total_steps=1234)
    config = schedule.get_config()
    assert config == {"initial_learning_rate": 5e-4, "total_steps": 1234}
    clone = recipe.LinearDecay.from_config(config)
    for step in (0, 617, 1234):
        assert float(clone(step)) == pytest.approx(float(schedule(step)))
    # Registered, so Keras can deserialize it by name (saved optimizers, model.keras).
    restored = tf.keras.optimizers.schedules.deserialize(
        tf.keras.optimizers.schedules.serialize(schedule)
    )
    assert isinstance(restored, recipe.LinearDecay)
    assert restored.get_config() == config


# ----------------------------------------------------------------------------- optimizer


def test_default_agc_clip():
    assert recipe.AGC_CLIP == 0.02
    assert Config().agc_clip == 0.02
    assert Config().learning_rate == 5e-4


def test_optimizer_is_agc_wrapped_adam(reactnet18):
    opt = recipe.optimizer(1e-3, 500, 0.02)
    assert isinstance(opt, recipe.larq_nobn.AGC)
    assert opt.clip_factor == pytest.approx(0.02)
    assert opt.eps == pytest.approx(recipe.AGC_EPS)
    inner = opt.inner_optimizer
    assert type(inner) is tf.keras.optimizers.Adam
    assert inner.epsilon == 1e-8
    schedule = inner._learning_rate
    assert isinstance(schedule, recipe.LinearDecay)
    assert schedule.get_config() == {"initial_learning_rate": 1e-3, "total_steps": 500}

    # The final classifier ("fc") is never clipped; every convolution kernel is.
    weights = {w.name: w for w in reactnet18.weights}
    assert opt._is_excluded(weights["fc/kernel:0"])
    assert opt._is_excluded(weights["fc/bias:0"])
    for kernel in recipe.conv_kernels(reactnet18):
        assert not opt._is_excluded(kernel), kernel.name
    assert not opt._is_excluded(weights["block1_conv3x3/gain:0"])


def test_optimizer_without_agc():
    opt = recipe.optimizer(2e-4, 10, 0.0)
    assert type(opt) is tf.keras.optimizers.Adam
    assert opt.epsilon == 1e-8
    assert float(opt.learning_rate) == pytest.approx(2e-4)  # the schedule at step 0
    assert isinstance(opt._learning_rate, recipe.LinearDecay)


# ----------------------------------------------------------------------------- weight decay


def test_conv_kernels_of_reactnet18(reactnet18):
    names = [k.name for k in recipe.conv_kernels(reactnet18)]
    expected = (
        ["conv_first/kernel:0"]
        + [f"block{i}_conv3x3/kernel:0" for i in range(1, 17)]
        + [f"block{i}_downsample/kernel:0" for i in (5, 9, 13)]
    )
    # 1 stem + 16 binary 3x3 convolutions + 3 downsample 1x1 convolutions.
    assert sorted(names) == sorted(expected)
    assert len(names) == 20
    conv_layers = [
        layer for layer in reactnet18.submodules if isinstance(layer, tf.keras.layers.Conv2D)
    ]
    assert len(conv_layers) == 20
    assert "fc/kernel:0" not in names


def test_add_weight_decay_is_half_l2_of_latent_conv_kernels(reactnet18):
    before = len(reactnet18.losses)
    recipe.add_weight_decay(reactnet18, 1e-5)
    assert len(reactnet18.losses) == before + 1
    expected = (
        0.5
        * 1e-5
        * sum(
            np.sum(np.square(k.numpy().astype(np.float64))) for k in recipe.conv_kernels(reactnet18)
        )
    )
    fc = 0.5 * 1e-5 * np.sum(np.square(reactnet18.get_layer("fc").kernel.numpy()))
    assert fc > 1e-4 * expected  # including the classifier would be detected
    assert float(reactnet18.losses[-1]) == pytest.approx(expected, rel=1e-5)

    # The loss follows the current (latent, not binarized) kernel values.
    kernel = recipe.conv_kernels(reactnet18)[1]
    old = kernel.numpy()
    try:
        kernel.assign(old * 2.0)
        delta = 0.5 * 1e-5 * 3.0 * np.sum(np.square(old.astype(np.float64)))
        assert float(reactnet18.losses[-1]) == pytest.approx(expected + delta, rel=1e-5)
    finally:
        kernel.assign(old)


def test_no_weight_decay_adds_nothing():
    model = tf.keras.Sequential(
        [tf.keras.Input((8, 8, 3)), tf.keras.layers.Conv2D(4, 3), tf.keras.layers.Flatten()]
    )
    recipe.add_weight_decay(model, 0.0)
    assert model.losses == []
    recipe.add_weight_decay(model, 1e-3)
    kernel = model.layers[0].kernel.numpy()
    assert float(model.losses[0]) == pytest.approx(0.5 * 1e-3 * np.sum(kernel**2), rel=1e-5)


# ----------------------------------------------------------------------------- losses


def test_sparse_smoothed_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, size=16)
    smoothed = np.eye(10)[labels] * 0.9 + 0.1 / 10
    expected = -np.sum(smoothed * _log_softmax(logits), axis=-1)

    loss = recipe.SparseSmoothedCrossEntropy(10)
    assert loss.label_smoothing == 0.1
    assert float(loss(labels, logits)) == pytest.approx(expected.mean(), rel=1e-5)
    # Labels of shape (N, 1), per-example values.
    per_example = recipe.SparseSmoothedCrossEntropy(10, reduction="none")(labels[:, None], logits)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-5)
    # Not plain cross-entropy.
    plain = -_log_softmax(logits)[np.arange(16), labels]
    assert not np.allclose(per_example.numpy(), plain, rtol=1e-3)

    clone = recipe.SparseSmoothedCrossEntropy.from_config(loss.get_config())
    assert (clone.num_classes, clone.label_smoothing) == (10, 0.1)
    assert isinstance(recipe.loss("ls", 10), recipe.SparseSmoothedCrossEntropy)
    ce = recipe.loss("ce", 10)
    assert float(ce(labels, logits)) == pytest.approx(plain.mean(), rel=1e-5)


def test_distribution_loss_matches_numpy():
    rng = np.random.default_rng(1)
    teacher = rng.normal(scale=2.0, size=(8, 10)).astype(np.float32)
    student = rng.normal(scale=2.0, size=(8, 10)).astype(np.float32)
    expected = -np.sum(_softmax(teacher) * _log_softmax(student), axis=-1)
    got = recipe.distribution_loss(tf.constant(teacher), tf.constant(student))
    assert got.shape == (8,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    # float16 logits (mixed precision) are computed in float32.
    got16 = recipe.distribution_loss(tf.constant(teacher, tf.float16), tf.constant(student))
    assert got16.dtype == tf.float32


# ----------------------------------------------------------------------------- distillation


def _dense_model(seed: int, name: str, l2: float = 0.0) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    regularizer = tf.keras.regularizers.L2(l2) if l2 else None
    return tf.keras.Sequential(
        [
            tf.keras.Input((6,)),
            tf.keras.layers.Dense(10, kernel_regularizer=regularizer, name=f"{name}_dense"),
        ],
        name=name,
    )


@pytest.mark.parametrize("mirrored", [False, True], ids=["default", "mirrored"])
def test_distillation_loss_and_frozen_teacher(mirrored):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.integers(0, 10, size=16).astype(np.int32)
    strategy = (
        tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
        if mirrored
        else tf.distribute.get_strategy()
    )
    with strategy.scope():
        student = _dense_model(3, "student", l2=1e-2)
        teacher = _dense_model(4, "teacher")
        model = recipe.Distillation(student, teacher)
        model.compile(
            optimizer=tf.keras.optimizers.SGD(0.1),
            loss=None,
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
    assert teacher.trainable is False
    assert not any(w is t for w in model.trainable_weights for t in teacher.weights)

    s_logits, t_logits = student(x).numpy(), teacher(x).numpy()
    kd = -np.sum(_softmax(t_logits) * _log_softmax(s_logits), axis=-1)
    reg = 1e-2 * np.sum(student.layers[0].kernel.numpy().astype(np.float64) ** 2)
    accuracy = np.mean(np.argmax(s_logits, axis=-1) == y)
    result = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(kd.mean() + reg, rel=1e-4)
    assert result["accuracy"] == pytest.approx(accuracy)

    teacher_before = [w.numpy() for w in teacher.weights]
    student_before = [w.numpy() for w in student.weights]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for before, w in zip(teacher_before, teacher.weights, strict=True):
        np.testing.assert_array_equal(w.numpy(), before)
    for before, w in zip(student_before, student.weights, strict=True):
        assert not np.allclose(w.numpy(), before)
    # The model predicts with the student.
    np.testing.assert_allclose(model.predict(x, verbose=0), student(x).numpy(), rtol=1e-5)
