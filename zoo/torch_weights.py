"""PyTorch checkpoints of the reference (VITA-Group/BNN_NoBN), of ReActNet and of A&B BNN.

The reference's models (`models/Qa*_reactnet_{A,18}_{bn,bf,none}.py`) and ReActNet's
(liuzechun/ReActNet, `mobilenet/` and `resnet/`) save `torch.save({"state_dict":
model.state_dict(), ...})` of a `DataParallel` model: keys such as
`module.feature.3.binary_3x3.weight`. A&B BNN (Ruichen0424/AB-BNN) released its trained
models as bare `DataParallel` state dicts in files named `*_step2.h5` (PyTorch files, not
HDF5), with its quantized PReLU's `L_alpha` and ReActNet-18's binary convolution as
`layerK.B.conv1`. Every tensor is mapped to a zoo layer by its module path and role (never
by position), with the layouts converted:

- conv `weight` (O, I, kh, kw), or ReActNet-A's binary `weights` (O * I * kh * kw, 1):
  `kernel` (kh, kw, I, O);
- scaled-WS `gain` (O, 1, 1, 1): `gain` (O,);
- `LearnableBias.bias` (1, C, 1, 1): `LearnableBias` `bias` (C,);
- `nn.PReLU.weight` (C,): `PReLU` `alpha` (1, 1, C);
- A&B's `Q_PReLU.L_alpha` (C,): `QuantizedPReLU` `log2_slope` (C,);
- `BatchNorm2d` weight, bias, running_mean, running_var: gamma, beta, moving_mean,
  moving_variance (`num_batches_tracked` is not used);
- `nn.Linear` `fc` weight (out, in) and bias: `fc` kernel (in, out) and bias.

```python
from larq_nobn import zoo
model = zoo.from_torch("checkpoint.pth.tar")  # variant and classes read from the file
model = zoo.ReActNetA(norm="bn", stage=2, weights="checkpoint.pth.tar")
```

Reading the file needs torch (`pip install 'larq-nobn[torch]'`).
"""

import os
import re
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

TORCH_SUFFIXES = (".pth", ".pth.tar", ".pt")

_BN_ROLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# Buffers the zoo has no use for (BatchNorm2d's step counter).
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


IMAGENET_CLASSES = 1000


class TorchWeightsError(ValueError):
    """A PyTorch checkpoint that does not fit the model: one line saying which tensor."""


# What `torch.save` writes: a zip archive (PyTorch 1.6 and later) or a pickle (protocol 2+).
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class TorchFileError(TorchWeightsError):
    """A file torch cannot read as a checkpoint (truncated, garbled, not PyTorch's)."""


def is_torch_file(path) -> bool:
    """Whether `path` names a PyTorch checkpoint: `.pth`, `.pth.tar` or `.pt`, or an `.h5`
    file that is not HDF5 but `torch.save`'s format (as A&B BNN's released models)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    name = os.fspath(path).lower()
    if name.endswith(TORCH_SUFFIXES):
        return True
    if not name.endswith(".h5") or not os.path.isfile(path):
        return False
    with open(path, "rb") as file:
        head = file.read(8)
    return head.startswith(_TORCH_MAGIC) and not head.startswith(_HDF5_MAGIC)


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch: pip install 'larq-nobn[torch]'"
        ) from error
    return torch


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint as float32 NumPy arrays, by parameter name.

    Accepts what the reference and ReActNet save: a bare `state_dict`, or a dict with a
    `state_dict` entry (next to `epoch`, `optimizer`, ...); keys with or without
    `DataParallel`'s `module.` prefix. Read with `torch.load(weights_only=True)`: no code
    in the file runs.

    Args:
        path: the checkpoint file.

    Returns:
        A dict from parameter name (without `module.`) to array, BN step counters dropped.

    Raises:
        ImportError: torch is not installed.
        TorchFileError: torch cannot read the file (truncated, garbled, or not
            `torch.save`'s: an HDF5 file of Keras weights says so).
        TorchWeightsError: the file holds no state dict.
        OSError: the file cannot be read (e.g. `FileNotFoundError`).
    """
    torch = _torch()
    try:
        checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except OSError:
        raise  # a missing or unreadable file says so itself
    except Exception as error:  # torch's errors for bad bytes have no common class
        with open(path, "rb") as file:
            if file.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC:
                raise TorchFileError(
                    f"{path} is an HDF5 file (Keras weights?), not a PyTorch checkpoint"
                ) from None
        raise TorchFileError(
            f"{path} is not a readable PyTorch checkpoint ({_load_failure(error)})"
        ) from None
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise TorchWeightsError(
            f"{path} holds no state dict (neither a dict of tensors nor a dict with a "
            "'state_dict' entry)"
        )
    state = {}
    for key, tensor in checkpoint.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if not _IGNORED.search(name):
            state[name] = tensor.detach().to(torch.float32).numpy()
    return state


def _load_failure(error: Exception) -> str:
    """What `torch.load` found wrong with a file, in a few words: the unpickler's own
    complaint (under torch's advice about `weights_only`), or the error's first sentence."""
    text, marker = str(error), "WeightsUnpickler error:"
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        return f"unpickling: {rest[0][:120]}" if rest else "unpickling failed"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).split(". ")[0].rstrip(".")[:160]


def backbone_of(model: tf.keras.Model) -> str:
    """ "reactnet_a" or "reactnet18", from the zoo's layer names."""
    names = {layer.name for layer in model.layers}
    if "block1_bias1" in names:
        return "reactnet_a"
    if "block1_bias" in names:
        return "reactnet18"
    raise TorchWeightsError(f"{model.name} is neither a zoo ReActNet-A nor a ReActNet-18")


def _reactnet_a_module(layer: str) -> str | None:
    """The reference's module path of a ReActNet-A zoo layer (`models/*_reactnet_A_*.py`)."""
    fixed = {"conv_first": "feature.0.conv1", "conv_first_bn": "feature.0.bn1", "fc": "fc"}
    if layer in fixed:
        return fixed[layer]
    match = re.fullmatch(r"block(\d+)_(\w+)", layer)
    if match is None:
        return None
    block, part = match.groups()
    modules = {
        "bias1": "move11",
        "conv3x3": "binary_3x3",
        "conv3x3_bn": "bn1",
        "rprelu1_bias_in": "move12",
        "rprelu1_prelu": "prelu1",
        "rprelu1_bias_out": "move13",
        "bias2": "move21",
        "conv1x1": "binary_pw",
        "conv1x1_bn": "bn2",
        "conv1x1_1": "binary_pw_down1",
        "conv1x1_1_bn": "bn2_1",
        "conv1x1_2": "binary_pw_down2",
        "conv1x1_2_bn": "bn2_2",
        "rprelu2_bias_in": "move22",
        "rprelu2_prelu": "prelu2",
        "rprelu2_bias_out": "move23",
    }
    return f"feature.{block}.{modules[part]}" if part in modules else None


def _reactnet18_module(layer: str, stage_starts: tuple[int, ...], design: str) -> str | None:
    """The reference's (or A&B BNN's) module path of a ReActNet-18 or -34 zoo layer
    (`models/*_reactnet_18_*.py`, AB-BNN `Network/ReActNet_18_*.py`): block n (1-based) is
    `layer{k}.{n - stage_starts[k - 1]}` in the stage k it belongs to."""
    fixed = {"conv_first": "conv1", "conv_first_bn": "bn1", "fc": "fc"}
    if layer in fixed:
        return fixed[layer]
    match = re.fullmatch(r"block(\d+)_(\w+)", layer)
    if match is None:
        return None
    block, part = int(match.group(1)), match.group(2)
    stage = sum(start <= block for start in stage_starts)
    modules = {
        "bias": "move0",
        "conv3x3": "conv1" if design == "ab" else "binary_conv",
        "conv3x3_bn": "bn1",
        "downsample": "downsample.1",
        "downsample_bn": "downsample.2",
        "rprelu_bias_in": "move1",
        "rprelu_prelu": "prelu",
        "rprelu_bias_out": "move2",
    }
    if part not in modules:
        return None
    return f"layer{stage}.{block - stage_starts[stage - 1]}.{modules[part]}"


def _stage_starts(model: tf.keras.Model) -> tuple[int, ...]:
    """The first block of each of a zoo ReActNet-18's (or -34's) stages: block 1, then each
    block with a downsampling shortcut."""
    names = {layer.name for layer in model.layers}
    count = sum(bool(re.fullmatch(r"block\d+_bias", name)) for name in names)
    return (1, *(n for n in range(2, count + 1) if f"block{n}_downsample" in names))


def design_of(model: tf.keras.Model) -> str:
    """ "ab" for a model of A&B BNN's design (it has quantized PReLUs), else "reference"."""
    from larq_nobn.layers import QuantizedPReLU

    ab = any(isinstance(layer, QuantizedPReLU) for layer in model.layers)
    return "ab" if ab else "reference"


def _torch_parameter(layer: tf.keras.layers.Layer, role: str) -> str:
    """The torch parameter name (within its module) of a Keras weight role of `layer`."""
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        return _BN_ROLES[role]
    if isinstance(layer, tf.keras.layers.PReLU):
        return "weight"
    return {"kernel": "weight", "gain": "gain", "bias": "bias", "log2_slope": "L_alpha"}[role]


def _expected_torch_shape(layer, role: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the reference stores a Keras weight of `shape` in."""
    if role == "kernel" and len(shape) == 4:  # (kh, kw, in, out) -> (out, in, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if role == "kernel":  # Dense (in, out) -> Linear (out, in)
        return (shape[1], shape[0])
    if role == "gain":
        return (shape[0], 1, 1, 1)
    if isinstance(layer, tf.keras.layers.PReLU):
        return (shape[-1],)
    if role == "bias" and not isinstance(layer, tf.keras.layers.Dense):  # LearnableBias
        return (1, shape[0], 1, 1)
    return shape


def _to_keras(array: np.ndarray, role: str, shape: tuple[int, ...]) -> np.ndarray:
    """`array`, in the reference's layout (already checked), in the Keras `shape`."""
    if role == "kernel" and len(shape) == 4:
        return np.transpose(array, (2, 3, 1, 0))
    if role == "kernel":
        return array.T
    return array.reshape(shape)


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def load_state_dict(
    model: tf.keras.Model, state_dict: Mapping[str, np.ndarray], source: str = "the state dict"
) -> tf.keras.Model:
    """Sets every weight of a zoo model from a reference `state_dict`, by name and role.

    All tensors must be used and all weights set: a missing, an extra or a misshapen
    tensor raises, naming it. A binary convolution's kernel may also come as ReActNet's
    flat `weights` (O*I*kh*kw, 1).

    Args:
        model: a zoo ReActNet-A or ReActNet-18 (any variant and stage; with the top).
        state_dict: parameter names (without `module.`) to arrays, as `read_state_dict`.
        source: what to call the state dict in errors (e.g. its path).

    Returns:
        `model`, with its weights set.

    Raises:
        TorchWeightsError: one line naming the tensor that is missing, extra or of the
            wrong shape.
    """
    if backbone_of(model) == "reactnet_a":
        module_of = _reactnet_a_module
    else:
        starts, design = _stage_starts(model), design_of(model)
        module_of = lambda layer: _reactnet18_module(layer, starts, design)  # noqa: E731
    unused = dict(state_dict)
    updates = []
    for layer in model.layers:
        if not layer.weights:
            continue
        module = module_of(layer.name)
        if module is None:
            raise TorchWeightsError(f"{model.name} layer {layer.name} has no reference module")
        values = []
        for weight in layer.weights:
            role = weight.name.split("/")[-1].split(":")[0]
            shape = tuple(weight.shape)
            key = f"{module}.{_torch_parameter(layer, role)}"
            expected = _expected_torch_shape(layer, role, shape)
            array = unused.pop(key, None)
            if array is None and role == "kernel" and f"{module}.weights" in unused:
                key = f"{module}.weights"  # ReActNet-A's HardBinaryConv: flat (N, 1)
                array = unused.pop(key)
                if array.shape == (int(np.prod(expected)), 1):
                    array = array.reshape(expected)
            if array is None:
                raise TorchWeightsError(
                    f"{source} lacks tensor {key} of shape {_shape(expected)} "
                    f"(for {model.name} layer {layer.name} {role}; "
                    f"{len(state_dict) - len(unused)} of {len(state_dict)} tensors matched)"
                )
            if array.shape != expected:
                raise TorchWeightsError(
                    f"{source} tensor {key} has shape {_shape(array.shape)}, "
                    f"{model.name} layer {layer.name} {role} needs {_shape(expected)}"
                )
            values.append(_to_keras(array, role, shape))
        updates.append((layer, values))
    if unused:
        first = sorted(unused)[0]
        more = f" and {len(unused) - 1} more" if len(unused) > 1 else ""
        raise TorchWeightsError(
            f"{source} has tensor {first}{more} that {model.name} has no weight for "
            "(another variant, backbone or stem?)"
        )
    for layer, values in updates:
        layer.set_weights(values)
    return model


def load_torch_weights(model: tf.keras.Model, path: str | os.PathLike) -> tf.keras.Model:
    """Reads a PyTorch checkpoint (`read_state_dict`) into a zoo model (`load_state_dict`).

    Args:
        model: a zoo ReActNet-A or ReActNet-18 of the checkpoint's variant.
        path: the checkpoint file.

    Returns:
        `model`, with its weights set.
    """
    return load_state_dict(model, read_state_dict(path), source=os.fspath(path))


def describe(state_dict: Mapping[str, np.ndarray]) -> dict:
    """The zoo model a state dict belongs to, read from its names and shapes.

    Returns:
        `{"model": registry name, "num_classes": ...}`, plus `"stem"` for ReActNet-18 and
        -34 (from the first convolution's kernel) and for A&B BNN's ReActNet-A (whose CIFAR
        models differ only in the first convolution's stride, which no tensor shows: "cifar"
        unless the classifier has ImageNet's 1000 classes). The stage cannot be read (both
        stages have the same tensors).

    Raises:
        TorchWeightsError: neither backbone's first convolution is in it.
    """
    ab = any(key.endswith(".L_alpha") for key in state_dict)
    if "feature.0.conv1.weight" in state_dict:
        backbone, kwargs = "reactnet_a", {}
        if ab and "fc.weight" in state_dict:
            classes = state_dict["fc.weight"].shape[0]
            kwargs["stem"] = "imagenet" if classes == IMAGENET_CLASSES else "cifar"
    elif "conv1.weight" in state_dict:
        kernel_size = state_dict["conv1.weight"].shape[-1]
        backbone, kwargs = "reactnet18", {"stem": "imagenet" if kernel_size == 7 else "cifar"}
        if ab and "layer1.4.move0.bias" in state_dict:
            backbone = "reactnet34"
    else:
        raise TorchWeightsError(
            "neither a ReActNet-A (feature.0.conv1.weight) nor a ReActNet-18 (conv1.weight) "
            "state dict"
        )
    if ab:
        norm = "ab"
    elif any(key.endswith(".running_mean") for key in state_dict):
        norm = "bn"
    elif any(key.endswith(".gain") for key in state_dict):
        norm = "nobn"
    else:
        norm = "none"
    if "fc.weight" in state_dict:
        kwargs["num_classes"] = int(state_dict["fc.weight"].shape[0])
    return {"model": f"{backbone}_{norm}", **kwargs}
