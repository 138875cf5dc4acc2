"""Tests for train/recipe.py: schedule, optimizer (AGC, decay, Adam), losses, distillation."""

import json

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.train import recipe
from larq_nobn.train.config import Config
from tests.train.program import read_history


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
    assert Config().agc_clip is None  # resolved from the recipe
    assert Config().resolved().agc_clip == 0.02
    assert Config().resolved().learning_rate == 5e-4
    # Applications: SGD's rate for batch 256, scaled linearly to the batch.
    assert Config(model="resnet50", batch_size=64).resolved().learning_rate == 0.1 / 4
    fine_tune = Config(model="resnet50", batch_size=512, init_from="imagenet").resolved()
    assert fine_tune.learning_rate == 0.01 * 2


def test_optimizer_is_agc_wrapped_torch_adam(reactnet18):
    opt = recipe.optimizer(1e-3, 500, 0.02, weight_decay=1e-5)
    assert isinstance(opt, recipe.larq_nobn.AGC)
    assert opt.clip_factor == pytest.approx(0.02)
    assert opt.eps == pytest.approx(recipe.AGC_EPS)
    inner = opt.inner_optimizer
    assert type(inner) is recipe.larq_nobn.TorchAdam
    assert inner.epsilon == 1e-8
    assert inner.weight_decay == pytest.approx(1e-5)
    schedule = inner._learning_rate
    assert isinstance(schedule, recipe.LinearDecay)
    assert schedule.get_config() == {"initial_learning_rate": 1e-3, "total_steps": 500}

    weights = {w.name: w for w in reactnet18.weights}
    # The final classifier ("fc") is never clipped; every convolution kernel is.
    assert opt._is_excluded(weights["fc/kernel:0"])
    assert opt._is_excluded(weights["fc/bias:0"])
    kinds = {"kernel": [], "gain": [], "bias": [], "alpha": []}
    for w in reactnet18.trainable_weights:
        if not w.name.startswith("fc/"):
            kinds[w.name.split("/")[-1].split(":")[0]].append(w)
    assert [len(v) for v in kinds.values()] == [20, 20, 48, 16]
    expected_unit = {"kernel": "output", "gain": "element", "bias": "output", "alpha": "tensor"}
    expected_decay = {"kernel": True, "gain": True, "bias": True, "alpha": False}
    for kind, variables in kinds.items():
        for w in variables:
            assert not opt._is_excluded(w), w.name
            assert opt._unit_of(w) == expected_unit[kind], w.name
            assert inner.decays(w) == expected_decay[kind], w.name
    assert not inner.decays(weights["fc/kernel:0"])
    assert not inner.decays(weights["fc/bias:0"])


def test_bn_vectors_are_clipped_whole_and_not_decayed():
    model = zoo.get_model("reactnet18_bn", stage=1, input_shape=(32, 32, 3), num_classes=10)
    opt = recipe.optimizer(1e-3, 500, 0.02, weight_decay=1e-5)
    bn = [w for w in model.trainable_weights if "_bn/" in w.name]
    assert len(bn) == 40  # gamma and beta of 20 batch norms
    for w in bn:
        assert opt._unit_of(w) == "output" and w.shape.rank == 1  # the whole vector
        assert not opt.inner_optimizer.decays(w), w.name


def test_optimizer_without_agc():
    opt = recipe.optimizer(2e-4, 10, 0.0)
    assert type(opt) is recipe.larq_nobn.TorchAdam
    assert opt.epsilon == 1e-8
    assert opt.weight_decay is None  # 0: no decay at all
    assert float(opt.learning_rate) == pytest.approx(2e-4)  # the schedule at step 0
    assert isinstance(opt._learning_rate, recipe.LinearDecay)


def test_compiled_run_has_no_loss_term_and_decays_per_stage(tmp_path):
    """The decay lives in the optimizer (1e-5 in stage 1, none in stage 2): the model adds
    no loss, so the logged training loss is the data loss."""
    from larq_nobn.train.runner import Run

    config = Config(
        model="reactnet18_nobn", dataset="synthetic", model_dir=str(tmp_path), stem="cifar"
    ).resolved()
    run = Run(config)
    for stage, decay in ((1, 1e-5), (2, None)):
        model, student = run.models.build(stage)
        assert student.losses == [] and model.losses == []
        assert model.optimizer.inner_optimizer.weight_decay == decay


def _tiny_config(model_dir, **options) -> Config:
    """A ReActNet-18 run on 8x8 synthetic images in batches of 4, resolved."""
    return Config(
        model="reactnet18_nobn",
        dataset="synthetic",
        model_dir=str(model_dir),
        stem="cifar",
        image_size=8,
        batch_size=4,
        **options,
    ).resolved()


def test_a_stage_traces_its_training_step_once(tmp_path):
    """The optimizer's slots exist before the first step: a step that created them would
    be traced twice by `tf.function` (once creating variables, once not)."""
    from larq_nobn.train.runner import Run

    model, _ = Run(_tiny_config(tmp_path)).models.build(1)
    assert len(model.optimizer.variables) > 1  # iterations and Adam's slots
    images = np.zeros((8, 8, 8, 3), np.float32)
    model.fit(images, np.zeros(8, np.int64), batch_size=4, epochs=2, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert model.train_function.experimental_get_tracing_count() == 1


def test_a_stage_runs_the_test_set_once_per_epoch_and_reports_the_last(tmp_path, monkeypatch):
    """The test-set metrics `fit` computes after the last epoch are the stage's: no
    evaluation after `fit` (the weights and the test set are the same), and the metrics
    written are that last epoch's validation."""
    from larq_nobn.train.runner import Run

    evaluations = []
    evaluate = tf.keras.Model.evaluate

    def counted(model, *args, **kwargs):
        evaluations.append("fit" if kwargs.get("_use_cached_eval_dataset") else "after fit")
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(tf.keras.Model, "evaluate", counted)
    Run(_tiny_config(tmp_path, epochs=2, stages=(1,), train_subset=16, verbose=0)).run()
    assert evaluations == ["fit", "fit"]
    metrics = json.load(open(tmp_path / "stage1" / "metrics.json"))
    last = read_history(tmp_path / "stage1")[-1]
    assert metrics["test_accuracy"] == float(last["val_accuracy"])
    assert metrics["test_loss"] == float(last["val_loss"])


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
    np.testing.assert_allclose(
        model.predict(x, verbose=0), student(x).numpy(), rtol=1e-5, atol=1e-6
    )


def test_distillation_teacher_is_untracked_and_runs_in_inference_mode(tmp_path):
    """The teacher's weights are not the model's (no checkpoint holds them, AGC never sees
    them) and it predicts in inference mode during `fit` (its dropout of 0.9 is off)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.integers(0, 10, size=16).astype(np.int32)
    student = _dense_model(5, "student")
    tf.keras.utils.set_random_seed(6)
    teacher = tf.keras.Sequential(
        [tf.keras.Input((6,)), tf.keras.layers.Dropout(0.9), tf.keras.layers.Dense(10)],
        name="teacher",
    )
    model = recipe.Distillation(student, teacher)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), loss=None)
    teacher_ids = {id(w) for w in teacher.weights}
    assert not any(id(w) in teacher_ids for w in model.weights)

    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    kd = -np.sum(_softmax(teacher(x).numpy()) * _log_softmax(student(x).numpy()), axis=-1)
    np.testing.assert_allclose(history["loss"], [kd.mean()] * 2, rtol=1e-5)

    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(str(tmp_path / "c"))
    saved = [name for name, _ in tf.train.list_variables(path)]
    assert any(n.startswith("model/student/") for n in saved)
    assert not any("teacher" in n for n in saved), saved
