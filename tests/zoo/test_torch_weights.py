"""PyTorch checkpoints of the reference's models load into the zoo and give their logits.

The PyTorch side is `torch_models`, written for these tests from the reference's published
module structure and parameter names, with random weights and BN statistics.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import export, zoo
from larq_nobn.zoo import torch_weights
from tests.zoo.images import digits
from tests.zoo.optional_torch import torch, torch_models
from tests.zoo.sign_ties import (
    MAX_TIE_SHARE,
    TIE,
    flatbuffer_outputs,
    sign_input_layers,
    sign_inputs,
    ties,
)

pytestmark = pytest.mark.torch  # see tests/zoo/optional_torch.py

TOLERANCE = 1e-4  # max |keras - torch| / max |torch| over a batch of logits
NUM_CLASSES = 10
VARIANTS = [(b, n, s) for b in ("reactnet_a", "reactnet18") for n in zoo.NORMS for s in zoo.STAGES]


def torch_model(backbone, norm, stage, seed=0, **kwargs):
    if backbone == "reactnet_a":
        net = torch_models.ReActNetA(norm, stage, NUM_CLASSES)
    else:
        net = torch_models.ReActNet18(norm, stage, NUM_CLASSES, **kwargs)
    return torch_models.randomize(net, seed)


def save(net, path, style: str):
    """`net`'s state dict saved as the reference and ReActNet save it, or bare."""
    state = net.state_dict()
    if style == "reactnet":  # ReActNet-A's HardBinaryConv: flat `weights` (N, 1)
        state = {
            (k[: -len("weight")] + "weights" if ".binary_" in k else k): (
                v.reshape(-1, 1) if ".binary_" in k else v
            )
            for k, v in state.items()
        }
    if style in ("checkpoint", "reactnet"):  # train.py: DataParallel, dict with state_dict
        state = {"module." + k: v for k, v in state.items()}
        state = {"epoch": 7, "state_dict": state, "best_top1_acc": 0.5}
    torch.save(state, path)
    return path


def relative_errors(keras_model, net, x) -> np.ndarray:
    """Per image, max |keras - torch| / max |torch| over the batch's logits."""
    with torch.no_grad():
        expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    logits = keras_model(x, training=False).numpy()
    assert logits.shape == expected.shape
    return np.abs(logits - expected).max(axis=1) / np.abs(expected).max()


def relative_error(keras_model, net, x) -> float:
    return float(relative_errors(keras_model, net, x).max())


def images(size, batch, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype("float32")


# Formats cycle over the variants; every format is also checked on its own below.
STYLES = ("bare", "checkpoint", "module")


@pytest.mark.parametrize("backbone,norm,stage", VARIANTS)
def test_logits_match_the_torch_model(backbone, norm, stage, tmp_path):
    net = torch_model(backbone, norm, stage)
    style = STYLES[VARIANTS.index((backbone, norm, stage)) % len(STYLES)]
    if style == "module":  # a bare state dict with DataParallel's prefix
        state = {"module." + k: v for k, v in net.state_dict().items()}
        torch.save(state, path := tmp_path / "model.pth")
    else:
        path = save(net, tmp_path / "checkpoint.pth.tar", style)
    # One model for both sizes: the input tensor leaves height and width open.
    model = zoo.from_torch(path, stage=stage, input_tensor=tf.keras.Input((None, None, 3)))
    assert model.name == f"{backbone}_{norm}"
    assert relative_error(model, net, images(32, 2)) < TOLERANCE
    if stage == 2:
        assert relative_error(model, net, images(224, 1)) < TOLERANCE


@pytest.mark.parametrize("backbone", ["reactnet_a", "reactnet18"])
def test_keras_padding_does_not_match(backbone, tmp_path):
    """The check above sees padding: Keras' "same" shifts every strided window."""
    net = torch_model(backbone, "nobn", 2)
    path = save(net, tmp_path / "checkpoint.pth.tar", "checkpoint")
    kwargs = dict(stage=2, input_shape=(32, 32, 3), num_classes=NUM_CLASSES)
    keras_padded = zoo.from_torch(path, padding="keras", **kwargs)
    assert relative_error(keras_padded, net, images(32, 2)) > 100 * TOLERANCE
    # The builder sets torch padding itself for a PyTorch file.
    builder = zoo.ReActNetA if backbone == "reactnet_a" else zoo.ReActNet18
    model = builder(norm="nobn", weights=str(path), **kwargs)
    strided = "block2" if backbone == "reactnet_a" else "block5"
    assert f"{strided}_conv3x3_subsample" in {layer.name for layer in model.layers}
    assert relative_error(model, net, images(32, 2)) < TOLERANCE


@pytest.mark.parametrize("style", ["bare", "checkpoint", "reactnet"])
def test_every_saved_format_loads(style, tmp_path):
    net = torch_model("reactnet_a", "bn", 2, seed=3)
    path = save(net, tmp_path / "checkpoint.pth.tar", style)
    model = zoo.ReActNetA(
        norm="bn", stage=2, input_shape=(32, 32, 3), num_classes=NUM_CLASSES, weights=str(path)
    )
    assert relative_error(model, net, images(32, 2)) < TOLERANCE


def test_reactnet_resnet18_with_real_downsample_weights(tmp_path):
    """ReActNet's own ReAct-ResNet-18 keeps the 1x1 downsample convolutions real."""
    net = torch_model("reactnet18", "bn", 2, seed=4, binary_downsample=False)
    path = save(net, tmp_path / "checkpoint.pth.tar", "checkpoint")
    model = zoo.from_torch(path, binary_downsample=False, input_shape=(64, 64, 3))
    assert model.get_layer("block5_downsample").kernel_quantizer is None
    assert relative_error(model, net, images(64, 2)) < TOLERANCE


def test_what_the_file_says_is_read_from_it(tmp_path):
    net = torch_model("reactnet18", "none", 1, stem="cifar")
    path = save(net, tmp_path / "model.pt", "bare")
    state = torch_weights.read_state_dict(path)
    assert torch_weights.describe(state) == {
        "model": "reactnet18_none",
        "stem": "cifar",
        "num_classes": NUM_CLASSES,
    }
    model = zoo.from_torch(path, stage=1, input_shape=(32, 32, 3))
    assert model.get_layer("conv_first").kernel.shape == (3, 3, 3, 64)
    assert relative_error(model, net, images(32, 2)) < TOLERANCE


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    net = torch_model("reactnet18", "nobn", 2, stem="cifar")
    return net.state_dict(), tmp_path_factory.mktemp("torch")


def _error(state, directory, name="broken.pth") -> str:
    path = directory / name
    torch.save(state, path)
    with pytest.raises(torch_weights.TorchWeightsError) as error:
        zoo.from_torch(path, input_shape=(32, 32, 3))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_missing_tensor_is_named(small_checkpoint):
    state, directory = small_checkpoint
    state = {k: v for k, v in state.items() if k != "layer2.0.downsample.1.gain"}
    message = _error(state, directory)
    assert "lacks tensor layer2.0.downsample.1.gain of shape (128, 1, 1, 1)" in message
    assert "block5_downsample gain" in message


def test_an_extra_tensor_is_named(small_checkpoint):
    state, directory = small_checkpoint
    message = _error({**state, "layer4.3.bn1.weight": torch.ones(512)}, directory)
    assert "has tensor layer4.3.bn1.weight that reactnet18_nobn has no weight for" in message


def test_a_misshapen_tensor_is_named(small_checkpoint):
    state, directory = small_checkpoint
    message = _error({**state, "layer1.2.prelu.weight": torch.ones(32)}, directory)
    assert message.endswith(
        "tensor layer1.2.prelu.weight has shape (32), "
        "reactnet18_nobn layer block3_rprelu_prelu alpha needs (64)"
    )


def test_a_file_without_a_state_dict(small_checkpoint):
    _, directory = small_checkpoint
    message = _error({"epoch": 3, "optimizer": {"lr": 0.1}}, directory)
    assert message.endswith(
        "holds no state dict (neither a dict of tensors nor a dict with a 'state_dict' entry)"
    )


def test_without_torch_the_error_says_what_to_install(small_checkpoint, monkeypatch):
    state, directory = small_checkpoint
    torch.save(state, directory / "model.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError) as error:
        zoo.from_torch(directory / "model.pth")
    assert str(error.value) == (
        "Reading PyTorch checkpoints needs torch: pip install 'larq-nobn[torch]'"
    )


def fit_classifier(net, x: np.ndarray, y: np.ndarray) -> None:
    """Least-squares fit of the PyTorch model's `fc` to one-hot labels on its features, so
    that the random backbone classifies digits (and top-1 agreement means something)."""
    features = []
    hook = net.fc.register_forward_hook(lambda module, inputs, output: features.append(inputs[0]))
    with torch.no_grad():
        net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    hook.remove()
    f = features[0].numpy().astype("float64")
    f = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    targets = np.eye(NUM_CLASSES)[y]
    solution = np.linalg.solve(f.T @ f + 1e-3 * np.eye(f.shape[1]), f.T @ targets)
    with torch.no_grad():
        net.fc.weight.copy_(torch.from_numpy(solution[:-1].T.astype("float32")))
        net.fc.bias.copy_(torch.from_numpy(solution[-1].astype("float32")))


def torch_sign_inputs(net, model: tf.keras.Model, x: np.ndarray) -> dict[str, np.ndarray]:
    """What the PyTorch model binarizes (with `torch.sign`, 0 at 0): the tensors of
    `sign_inputs`, channels last."""
    if torch_weights.backbone_of(model) == "reactnet_a":
        module_of = torch_weights._reactnet_a_module
    else:
        starts = torch_weights._stage_starts(model)
        design = torch_weights.design_of(model)
        module_of = lambda layer: torch_weights._reactnet18_module(layer, starts, design)  # noqa: E731
    modules = dict(net.named_modules())
    inputs = {}

    def record(name):
        def hook(module, args, output):
            inputs[name] = output.numpy().transpose(0, 2, 3, 1)

        return hook

    hooks = [
        modules[module_of(n)].register_forward_hook(record(n)) for n in sign_input_layers(model)
    ]
    with torch.no_grad():
        net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    for hook in hooks:
        hook.remove()
    return inputs


@pytest.mark.slow(50)
@pytest.mark.parametrize(
    "backbone,size,binary_convs",
    [("reactnet18", 32, 16), ("reactnet_a", 64, 31)],
)
def test_lce_export_of_a_loaded_model(backbone, size, binary_convs, tmp_path):
    kwargs = {"stem": "cifar"} if backbone == "reactnet18" else {}
    net = torch_model(backbone, "nobn", 2, seed=5, **kwargs)
    images_, labels = digits(size)
    fit_classifier(net, images_[:400], labels[:400])
    path = save(net, tmp_path / "checkpoint.pth.tar", "checkpoint")
    model = zoo.from_torch(path, input_shape=(size, size, 3))
    x, y = images_[-48:], labels[-48:]  # not used for the fit
    inputs = sign_inputs(model, x)
    # Every image agrees but those whose first differing sign is a tie: a sign input within
    # rounding of 0 (e.g. -6e-8 in Keras, 7e-7 in the flatbuffer) binarizes either way, and
    # the flip spreads through the later blocks (relative logit errors of 0.1 to 0.5). At
    # seed 5: 2 of 48 for ReActNet-18 against PyTorch (in blocks 1 and 2), 1 for
    # ReActNet-A against the flatbuffer (in block 10).
    theirs = torch_sign_inputs(net, model, x)
    signs = {name: np.sign(value) for name, value in theirs.items()}
    tie = ties(inputs, signs)
    assert np.mean(tie) <= MAX_TIE_SHARE
    assert np.all((relative_errors(model, net, x) < TOLERANCE) | tie)
    # TIE's premise: where no sign flips, the two engines' sign inputs differ by less.
    flipped = np.zeros(len(x), bool)
    for name, value in inputs.items():
        flipped |= (np.where(value >= 0, 1.0, -1.0) != signs[name]).reshape(len(x), -1).any(1)
    assert not flipped.all()
    for name, value in inputs.items():
        assert np.abs(value - theirs[name])[~flipped].max() < TIE / 2, name
    top1 = np.argmax(model(x).numpy(), axis=-1)
    assert np.mean(top1 == y) > 0.25  # it classifies the held-out digits (chance: 0.1)
    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    assert counts["LceBconv2d"] == binary_convs  # every binary convolution
    # The flatbuffer computes the Keras model: at 64x64 ReActNet-A's last 3x3 binary
    # convolution sees a 2x2 map (see `export.pad_small_binary_inputs_with_ones`).
    flat_logits, flat_signs = flatbuffer_outputs(flatbuffer, x)
    logits = model(x).numpy()
    errors = np.abs(flat_logits - logits).max(axis=1) / np.abs(logits).max()
    tie = ties(inputs, flat_signs)
    # Ties against the flatbuffer, ReActNet-18 at seed 5: 3 of 48 with every kernel
    # standardized by separate ops, 5 with the fused batch-norm statistics of its largest
    # kernels (other float32 rounding, the same math: tests/larq_nobn/test_unitwise.py).
    assert np.mean(tie) <= MAX_TIE_SHARE
    assert np.all(((errors < TOLERANCE) & (np.argmax(flat_logits, -1) == top1)) | tie)
