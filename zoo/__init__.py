"""The networks of "BNN - BN = ?": ReActNet-A and ReActNet-18, each in three variants.

```python
from larq_nobn import zoo
model = zoo.get_model("reactnet18_nobn", stage=1, stem="cifar", input_shape=(32, 32, 3),
                      num_classes=10)
model = zoo.from_torch("checkpoint.pth.tar")  # a PyTorch checkpoint of the reference
stats = larq_nobn.signal_propagation(model, images, **zoo.signal_propagation_layers(model))
```
"""

import larq_nobn  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# isort: split
import functools
import os
from collections.abc import Callable

import tensorflow as tf

from larq_nobn.zoo import torch_weights
from larq_nobn.zoo.blocks import NORMS, PADDINGS, STAGES
from larq_nobn.zoo.reactnet18 import ReActNet18
from larq_nobn.zoo.reactnet_a import ReActNetA
from larq_nobn.zoo.spp import signal_propagation_layers, transition_blocks

_REGISTRY: dict[str, Callable[..., tf.keras.Model]] = {}
for _norm in NORMS:
    _REGISTRY[f"reactnet_a_{_norm}"] = functools.partial(ReActNetA, norm=_norm)
    _REGISTRY[f"reactnet18_{_norm}"] = functools.partial(ReActNet18, norm=_norm)
    _REGISTRY[f"reactnet_{_norm}"] = _REGISTRY[f"reactnet_a_{_norm}"]  # short alias

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, **kwargs) -> tf.keras.Model:
    """Builds the zoo model registered as `name` with the factory's keyword arguments.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}.")
    return _REGISTRY[name](**kwargs)


def backbone(name: str) -> str:
    """ "reactnet_a" or "reactnet18": the architecture behind a registry name."""
    get_model_factory = _REGISTRY[name]
    return "reactnet18" if get_model_factory.func is ReActNet18 else "reactnet_a"


def from_torch(
    path: str | os.PathLike, model: str | None = None, *, stage: int = 2, **kwargs
) -> tf.keras.Model:
    """The zoo model of a PyTorch checkpoint of the reference or of ReActNet, loaded.

    The backbone, the variant (batch norm, scaled-WS gains, or neither), the number of
    classes and ReActNet-18's stem are read from the checkpoint's tensors; the stage
    cannot be (both have the same tensors) and is 2 (binary weights) unless given. The
    model pads as PyTorch does (`padding="torch"`) unless `padding` says otherwise.

    ```python
    model = zoo.from_torch("checkpoint.pth.tar")  # e.g. ReActNet-A's release: reactnet_a_bn
    ```

    Args:
        path: a file saved by `torch.save`: a `state_dict`, or a dict with a `state_dict`
            entry, keys with or without `module.`.
        model: a registry name (`MODEL_NAMES`), to override what the file says.
        stage: 1 (real weights) or 2 (binary weights) for the reference's `Qa_*` and
            `Qaw_*` models.
        **kwargs: passed to the model builder (`input_shape`, `binary_downsample`, ...).

    Returns:
        The `tf.keras.Model`, its weights those of the checkpoint.

    Raises:
        ImportError: torch is not installed (`pip install 'larq-nobn[torch]'`).
        TorchWeightsError: one line naming a missing, extra or misshapen tensor.
    """
    state = torch_weights.read_state_dict(path)
    found = torch_weights.describe(state)
    name = found.pop("model")
    if model is not None:
        if model not in _REGISTRY:
            raise ValueError(f"Unknown model {model!r}; valid names: {', '.join(MODEL_NAMES)}.")
        if backbone(model) != backbone(name):
            found.pop("stem", None)
        name = model
    kwargs = {"padding": "torch", **found, **kwargs}
    built = get_model(name, stage=stage, **kwargs)
    return torch_weights.load_state_dict(built, state, source=os.fspath(path))


__all__ = [
    "MODEL_NAMES",
    "NORMS",
    "PADDINGS",
    "STAGES",
    "ReActNet18",
    "ReActNetA",
    "backbone",
    "from_torch",
    "get_model",
    "signal_propagation_layers",
    "transition_blocks",
]
