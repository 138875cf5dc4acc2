"""Tests of the zoo: parameter counts, variants, beta schedules, stages, serialization."""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import zoo
from larq_nobn.zoo import reactnet18, reactnet_a
from tests.zoo.optional_torch import torch_models

SMALL = (32, 32, 3)


def trainable_count(model: tf.keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def layers_of(model: tf.keras.Model, cls) -> list:
    return [layer for layer in model.submodules if isinstance(layer, cls)]


# The trainable parameters of the reference's PyTorch models (VITA-Group/BNN_NoBN), as
# tests/zoo/torch_models.py builds them from its published structure: printed by
# `python -m tests.zoo.torch_models`, checked by `test_counts_are_the_torch_models`.
REACTNET18_COUNTS = {
    ("imagenet", 1000): (11_704_424, 11_699_624, 11_694_824),
    ("imagenet", 10): (11_196_554, 11_191_754, 11_186_954),
    ("cifar", 10): (11_188_874, 11_184_074, 11_179_274),
    ("cifar", 100): (11_235_044, 11_230_244, 11_225_444),
}
REACTNET_A_COUNTS = {"bn": 29_343_592, "nobn": 29_332_648, "none": 29_321_704}


@pytest.mark.torch  # see tests/zoo/optional_torch.py
@pytest.mark.parametrize("norm_index,norm", list(enumerate(zoo.NORMS)))
def test_counts_are_the_torch_models(norm_index, norm):
    for stage in zoo.STAGES:  # the same parameters, binarized or not
        net = torch_models.ReActNetA(norm, stage, 1000)
        assert torch_models.parameter_count(net) == REACTNET_A_COUNTS[norm]
        for (stem, num_classes), counts in REACTNET18_COUNTS.items():
            net = torch_models.ReActNet18(norm, stage, num_classes, stem=stem)
            assert torch_models.parameter_count(net) == counts[norm_index]


def test_reactnet_a_full_size_counts():
    model = zoo.ReActNetA(norm="nobn", input_shape=(224, 224, 3), num_classes=1000)
    assert model.output_shape == (None, 1000)
    assert trainable_count(model) == REACTNET_A_COUNTS["nobn"]


@pytest.mark.parametrize("norm", zoo.NORMS)
@pytest.mark.parametrize("stage", zoo.STAGES)
def test_reactnet_a_counts(norm, stage):
    # Parameter counts do not depend on the input size: build small, count like 224x224.
    model = zoo.ReActNetA(norm=norm, stage=stage, input_shape=SMALL, num_classes=1000)
    assert trainable_count(model) == REACTNET_A_COUNTS[norm]


@pytest.mark.parametrize("stem,num_classes", list(REACTNET18_COUNTS))
@pytest.mark.parametrize("norm_index,norm", list(enumerate(zoo.NORMS)))
def test_reactnet18_counts(stem, num_classes, norm_index, norm):
    for stage in zoo.STAGES:
        model = zoo.ReActNet18(
            norm=norm, stage=stage, stem=stem, input_shape=SMALL, num_classes=num_classes
        )
        assert trainable_count(model) == REACTNET18_COUNTS[stem, num_classes][norm_index]


@pytest.mark.parametrize("name", ["reactnet_a", "reactnet18"])
def test_batch_norm_only_in_bn_variant(name):
    counts = {}
    for norm in zoo.NORMS:
        model = zoo.get_model(f"{name}_{norm}", input_shape=SMALL, num_classes=10)
        counts[norm] = len(layers_of(model, tf.keras.layers.BatchNormalization))
    # One BN per convolution in the bn variant: 1 + 13 * 2 + 5 (ReActNet-A), 1 + 16 + 3.
    assert counts == {"bn": 32 if name == "reactnet_a" else 20, "nobn": 0, "none": 0}


def test_reactnet_a_beta_schedule():
    # Derived by hand from the reference's loop (alpha = 0.2, so alpha^2 = 0.04).
    r = lambda v: v**-0.5  # noqa: E731
    expected = [
        (32, 64, 1, 1.0, r(1.04)),
        (64, 128, 2, r(1.08), r(1.12)),
        (128, 128, 1, 1.0, r(1.04)),
        (128, 256, 2, r(1.08), r(1.12)),
        (256, 256, 1, 1.0, r(1.04)),
        (256, 512, 2, r(1.08), r(1.12)),
        (512, 512, 1, 1.0, r(1.04)),
        (512, 512, 1, r(1.08), r(1.12)),
        (512, 512, 1, r(1.16), r(1.20)),
        (512, 512, 1, r(1.24), r(1.28)),
        (512, 512, 1, r(1.32), r(1.36)),
        (512, 1024, 2, r(1.40), r(1.44)),
        (1024, 1024, 1, 1.0, r(1.04)),
    ]
    specs = reactnet_a.block_specs(0.2)
    got = [(s.in_channels, s.out_channels, s.strides, s.beta1, s.beta2) for s in specs]
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=1e-12)


def test_reactnet18_beta_schedule():
    r = lambda v: v**-0.5  # noqa: E731
    first_stage = [1.0, 1.0, r(1.04), r(1.08)]
    later_stage = [r(1.12), 1.0, r(1.04), r(1.08)]
    specs = reactnet18.block_specs(0.2)
    np.testing.assert_allclose([s.beta for s in specs], first_stage + later_stage * 3)
    assert [s.downsample for s in specs] == [i in (4, 8, 12) for i in range(16)]
    assert [s.strides for s in specs] == [2 if i in (4, 8, 12) else 1 for i in range(16)]


@pytest.mark.parametrize("name", ["reactnet_a", "reactnet18"])
def test_models_use_alpha_and_betas(name):
    """The nobn model scales by the schedule's values; bn and none never rescale.

    Betas are `Rescaling` layers; each alpha is the `kernel_scale` of a residual branch's
    binary-input convolution (exactly alpha times its output: no bias).
    """
    nobn = zoo.get_model(f"{name}_nobn", input_shape=SMALL, num_classes=10, alpha=0.3)
    scales = {layer.name: layer.scale for layer in layers_of(nobn, tf.keras.layers.Rescaling)}
    if name == "reactnet18":
        specs = reactnet18.block_specs(0.3)
        betas = {f"block{i + 1}_beta": s.beta for i, s in enumerate(specs) if s.beta != 1.0}
        n_alpha = 16
    else:
        specs = reactnet_a.block_specs(0.3)
        betas = {}
        for i, s in enumerate(specs):
            for key, beta in (("beta1", s.beta1), ("beta2", s.beta2)):
                if beta != 1.0:
                    betas[f"block{i + 1}_{key}"] = beta
        n_alpha = 13 * 2 + 5
    assert scales == pytest.approx(betas)
    convs = layers_of(nobn, larq_nobn.ScaledWSQuantConv2D)
    alphas = {c.name: c.kernel_scale for c in convs if c.input_quantizer is not None}
    assert list(alphas.values()) == [0.3] * n_alpha
    assert all(c.kernel_scale == 1.0 for c in convs if c.name not in alphas)
    assert all(not c.use_bias for c in convs)
    for norm in ("bn", "none"):
        model = zoo.get_model(f"{name}_{norm}", input_shape=SMALL, num_classes=10)
        assert layers_of(model, tf.keras.layers.Rescaling) == []


@pytest.mark.parametrize("name", ["reactnet_a_nobn", "reactnet18_nobn"])
def test_stage_two_loads_stage_one_weights(name, tmp_path):
    kwargs = dict(input_shape=SMALL, num_classes=10)
    stage1 = zoo.get_model(name, stage=1, **kwargs)
    rng = np.random.default_rng(0)
    stage1.set_weights([rng.normal(size=w.shape).astype("float32") for w in stage1.weights])
    path = str(tmp_path / "stage1.weights.h5")
    stage1.save_weights(path)
    loaded = zoo.get_model(name, stage=2, weights=path, **kwargs)
    assert [(v.name, v.shape) for v in stage1.variables] == [
        (v.name, v.shape) for v in loaded.variables
    ]
    for a, b in zip(stage1.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Same latent weights, different networks: stage 2 binarizes the weights.
    x = rng.normal(size=(2, *SMALL)).astype("float32")
    assert not np.allclose(stage1(x).numpy(), loaded(x).numpy())


def test_stage_two_binarizes_weights():
    kwargs = dict(input_shape=SMALL, num_classes=10)
    for stage, expected in ((1, 32), (2, 1)):
        model = zoo.get_model("reactnet18_nobn", stage=stage, **kwargs)
        conv = model.get_layer("block1_conv3x3")
        assert (conv.kernel_quantizer is not None) == (stage == 2)
        assert conv.kernel.precision == expected
        downsample = model.get_layer("block5_downsample")
        assert downsample.input_quantizer is None  # real-valued input
        assert downsample.kernel.precision == expected
    assert model.get_layer("conv_first").kernel.precision == 32


@pytest.mark.parametrize("name", ["reactnet_a", "reactnet18"])
def test_batch_independence(name):
    """Training mode: BN-free outputs of one image do not depend on the rest of the batch."""
    tf.keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, *SMALL)).astype("float32")
    random_batch = np.concatenate([image, rng.normal(size=(3, *SMALL)).astype("float32")])
    zero_batch = np.concatenate([image, np.zeros((3, *SMALL), "float32")])
    for norm, independent in (("nobn", True), ("bn", False)):
        model = zoo.get_model(f"{name}_{norm}", input_shape=SMALL, num_classes=10)
        a = model(random_batch, training=True).numpy()[0]
        b = model(zero_batch, training=True).numpy()[0]
        if independent:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        else:
            # Batch statistics change with the batch: 100x the BN-free variant's tolerance.
            assert np.abs(a - b).max() > 1e-4


def test_registry():
    assert set(zoo.MODEL_NAMES) == {
        f"{prefix}_{norm}"
        for prefix in ("reactnet_a", "reactnet18", "reactnet")
        for norm in zoo.NORMS
    } | {"reactnet_a_ab", "reactnet18_ab", "reactnet34_ab"}
    with pytest.raises(ValueError, match="reactnet18_nobn"):
        zoo.get_model("resnet50")
    alias = zoo.get_model("reactnet_nobn", input_shape=SMALL, num_classes=10)
    full = zoo.get_model("reactnet_a_nobn", input_shape=SMALL, num_classes=10)
    assert [v.shape for v in alias.variables] == [v.shape for v in full.variables]
    assert zoo.backbone("reactnet_bn") == "reactnet_a"
    assert zoo.backbone("reactnet18_none") == "reactnet18"


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(norm="gn"), "norm"),
        (dict(stage=3), "stage"),
        (dict(stem="tiny"), "stem"),
        (dict(weights="imagenet"), "pretrained"),
        (dict(weights="/no/such/file.h5"), "weights"),
        (dict(input_shape=(48, 48, 3)), "divisible by 32"),
        (dict(input_shape=(36, 36, 3), stem="cifar"), "divisible by 8"),
    ],
)
def test_bad_arguments(kwargs, error):
    kwargs = {"input_shape": SMALL, **kwargs}
    with pytest.raises(ValueError, match=error):
        zoo.ReActNet18(num_classes=10, **kwargs)


def test_include_top_and_input_tensor():
    inputs = tf.keras.Input((40, 40, 3))
    model = zoo.ReActNet18(input_tensor=inputs, include_top=False, stem="cifar")
    assert model.input_shape == (None, 40, 40, 3)
    # larq-zoo convention: without the top, the last feature map (40 / 2**3 = 5).
    assert model.output_shape == (None, 5, 5, 512)
    assert not any(layer.name == "fc" for layer in model.layers)


@pytest.mark.parametrize(
    "name", sorted(set(zoo.MODEL_NAMES) - {"reactnet_bn", "reactnet_nobn", "reactnet_none"})
)
def test_every_model_trains(name):
    """A forward pass and an (eager, to skip tracing) training step of every registry entry."""
    tf.keras.utils.set_random_seed(0)
    model = zoo.get_model(name, input_shape=SMALL, num_classes=10)
    x = np.random.default_rng(0).normal(size=(4, *SMALL)).astype("float32")
    y = np.arange(4) % 10
    optimizer = tf.keras.optimizers.Adam(1e-3)
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
    assert logits.shape == (4, 10) and np.isfinite(loss.numpy())
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)  # every variable is connected to the loss
    nonzero = [float(tf.norm(g)) > 0 for g in grads]
    if name.endswith(("nobn", "_ab")):
        # Signal propagation works at initialization: every variable learns. (Without BN
        # and without the paper's fixes, activations blow up and many gradients vanish.)
        assert all(nonzero)
    before = [v.numpy() for v in model.trainable_variables]
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    changed = [
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, model.trainable_variables, strict=True)
    ]
    # Only variables with a gradient move (a tiny one may round away); BN-free: all of them.
    assert all(n for c, n in zip(changed, nonzero, strict=True) if c)
    assert all(changed) or not name.endswith(("nobn", "_ab"))


@pytest.mark.slow(30)
@pytest.mark.parametrize("fmt", ["keras", "h5", "tf"])
def test_save_and_load(fmt, tmp_path):
    model = zoo.get_model("reactnet18_nobn", input_shape=SMALL, num_classes=10, stem="cifar")
    rng = np.random.default_rng(2)
    model.set_weights(
        [w + rng.normal(size=w.shape).astype("float32") * 0.1 for w in model.get_weights()]
    )
    x = rng.normal(size=(2, *SMALL)).astype("float32")
    path = str(tmp_path / ("model" if fmt == "tf" else f"model.{fmt}"))
    model.save(path, save_format=None if fmt == "keras" else fmt)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
