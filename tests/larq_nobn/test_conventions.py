"""The conventions tf-keras and larq test their own optimizers, layers, quantizers and
constraints against (tf-keras' `optimizers/optimizer_test.py`, larq's `layers_test.py`,
`quantizers_test.py`, `constraints_test.py`), checked on this library's classes."""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import AGC, AdaptiveGradientClipping, TorchAdam
from larq_nobn.train import recipe

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
