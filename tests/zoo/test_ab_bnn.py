"""A&B BNN's networks: its layers against torch's autograd, its released-model format loaded
exactly into the zoo.

The PyTorch side is `ab_torch_models`, written for these tests from A&B BNN's published
module structure and parameter names, with random weights and `L_alpha` spread over several
integers, saved as its released files are (a `DataParallel` state dict under an `.h5` name).
"""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import zoo
from larq_nobn.zoo import torch_weights
from tests.zoo.optional_torch import ab_torch_models, torch
from tests.zoo.sign_ties import sign_inputs, ties

pytestmark = pytest.mark.torch  # see tests/zoo/optional_torch.py

TOLERANCE = 1e-5  # max |keras - torch| / max |torch| over the batch's logits
NUM_CLASSES = 10
SIZE = 32
CASES = [
    (backbone, stage, stem)
    for backbone in ("reactnet18", "reactnet34", "reactnet_a")
    for stage in zoo.STAGES
    for stem in zoo.STEMS
]


def images(batch, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, SIZE, SIZE, 3)).astype("float32")


def torch_logits(net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.slow(60)
@pytest.mark.parametrize("backbone,stage,stem", CASES)
def test_released_format_loads_and_gives_the_torch_logits(backbone, stage, stem, tmp_path):
    net = ab_torch_models.build(
        backbone, stage, NUM_CLASSES, stem, seed=CASES.index((backbone, stage, stem))
    )
    path = tmp_path / f"cifar10_{backbone}_step{stage}.h5"
    ab_torch_models.save_released(net, path)
    assert torch_weights.is_torch_file(path)
    model = zoo.from_torch(path, stage=stage, stem=stem, input_shape=(SIZE, SIZE, 3))
    assert model.name == f"{backbone}_ab"
    x = images(4)
    with ab_torch_models.recording_sign_inputs() as torch_inputs:
        expected = torch_logits(net, x)
    logits = model(x, training=False).numpy()
    error = np.abs(logits - expected).max(axis=1) / np.abs(expected).max()
    # An image whose first binarization that differs is a sign tie (an input within float32
    # rounding of zero, `sign_ties`) may take another path through the network.
    keras_inputs = sign_inputs(model, x)
    assert len(keras_inputs) == len(torch_inputs)
    torch_signs = {
        name: np.where(value >= 0, 1.0, -1.0)
        for name, value in zip(keras_inputs, torch_inputs, strict=True)
    }
    tied = ties(keras_inputs, torch_signs)
    assert tied.sum() <= 1
    assert error[~tied].max() < TOLERANCE


def test_describe_reads_backbone_depth_stem_and_classes():
    cases = {
        ("reactnet18", "cifar", 100): dict(model="reactnet18_ab", stem="cifar", num_classes=100),
        ("reactnet34", "imagenet", 1000): dict(
            model="reactnet34_ab", stem="imagenet", num_classes=1000
        ),
        ("reactnet_a", "cifar", 10): dict(model="reactnet_a_ab", stem="cifar", num_classes=10),
        ("reactnet_a", "imagenet", 1000): dict(
            model="reactnet_a_ab", stem="imagenet", num_classes=1000
        ),
    }
    for (backbone, stem, classes), expected in cases.items():
        net = ab_torch_models.build(backbone, 2, classes, stem)
        state = {k: v.numpy() for k, v in net.state_dict().items()}
        assert torch_weights.describe(state) == expected


def test_hdf5_weights_are_not_taken_for_torch_files(tmp_path):
    model = zoo.get_model("reactnet18_ab", stem="cifar", input_shape=(8, 8, 3), num_classes=10)
    model.save_weights(path := str(tmp_path / "model.h5"))
    assert not torch_weights.is_torch_file(path)
    assert torch_weights.is_torch_file(tmp_path / "x.pth")  # by name, existing or not


def test_sigmoid_sign_gradient_equals_torch_autograd():
    x = np.linspace(-3, 3, 601, dtype=np.float32)
    upstream = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    ab_torch_models.SigmoidSign.apply(xt).backward(torch.from_numpy(upstream))
    xk = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xk)
        y = larq_nobn.SigmoidSign()(xk)
    grad = tape.gradient(y, xk, output_gradients=tf.constant(upstream))
    np.testing.assert_array_equal(y.numpy(), np.where(x >= 0, 1.0, -1.0))
    # Two float32 logistic functions: a few ulps of the gradient's peak apart.
    peak = np.abs(xt.grad.numpy()).max()
    np.testing.assert_allclose(grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6 * peak)
    # The derivative of 2 s(3x) - 1 in float64: 6 s (1 - s), 1.5 at 0; float32's 1 - s
    # loses digits in the tails (an absolute error of a few float32 ulps of the peak).
    s = 1 / (1 + np.exp(-3.0 * x.astype(np.float64)))
    expected = upstream * 6 * s * (1 - s)
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-6 * np.abs(expected).max())


def test_quantized_prelu_equals_torch_autograd():
    rng = np.random.default_rng(0)
    log2 = rng.uniform(-6.4, 2.4, size=16).astype(np.float32)
    log2[:3] = (-2.5, -3.5, 0.5)  # halves round to even, as torch.round
    x = rng.normal(size=(2, 5, 5, 16)).astype(np.float32)
    upstream = rng.normal(size=x.shape).astype(np.float32)

    module = ab_torch_models.QPReLU(16)
    with torch.no_grad():
        module.L_alpha.copy_(torch.from_numpy(log2))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_()
    yt = module(xt)
    yt.backward(torch.from_numpy(upstream.transpose(0, 3, 1, 2)))

    layer = larq_nobn.QuantizedPReLU()
    layer.build(x.shape)
    layer.log2_slope.assign(log2)
    xk = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xk)
        y = layer(xk)
    dx, dlog2 = tape.gradient(y, [xk, layer.log2_slope], output_gradients=tf.constant(upstream))
    slopes = layer.slopes().numpy()
    np.testing.assert_array_equal(slopes, np.ldexp(1.0, np.round(log2).astype(int)))
    assert tuple(np.round(log2[:3])) == (-2.0, -4.0, 0.0)
    np.testing.assert_array_equal(y.numpy(), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(dx.numpy(), xt.grad.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dlog2.numpy(), module.L_alpha.grad.numpy(), rtol=1e-5)


def test_layers_serialize():
    layer = larq_nobn.QuantizedPReLU(name="q")
    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
    assert type(restored) is larq_nobn.QuantizedPReLU
    assert restored.get_config() == layer.get_config()
    conv = larq_nobn.ScaledWSQuantConv2D(4, 3, input_quantizer="sigmoid_sign")
    quantizer = tf.keras.layers.deserialize(tf.keras.layers.serialize(conv)).input_quantizer
    assert type(quantizer) is larq_nobn.SigmoidSign and quantizer.steepness == 3.0
