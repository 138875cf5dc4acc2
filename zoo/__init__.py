"""The networks of "BNN - BN = ?": ReActNet-A and ReActNet-18, each in three variants.

```python
from larq_nobn import zoo
model = zoo.get_model("reactnet18_nobn", stage=1, stem="cifar", input_shape=(32, 32, 3),
                      num_classes=10)
model = zoo.from_torch("checkpoint.pth.tar")  # a PyTorch checkpoint of the reference
stats = larq_nobn.signal_propagation(model, images, **zoo.signal_propagation_layers(model))
```
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from larq_nobn.registry import Registry
from larq_nobn.zoo.variants import DESIGNS, NORMS, PADDINGS, STAGES, STEMS, Design

if TYPE_CHECKING:
    import tensorflow as tf

    from larq_nobn.zoo.reactnet18 import ReActNet18, ReActNet34
    from larq_nobn.zoo.reactnet_a import ReActNetA

# The builders behind the registry names, by backbone ("module:attribute", imported on use:
# the names are listed and checked without TensorFlow).
_BACKBONES = {
    "reactnet_a": "larq_nobn.zoo.reactnet_a:ReActNetA",
    "reactnet18": "larq_nobn.zoo.reactnet18:ReActNet18",
}
MODELS = Registry("model")
for _norm in NORMS:
    MODELS.register(f"reactnet_a_{_norm}", _BACKBONES["reactnet_a"], norm=_norm)
    MODELS.register(f"reactnet18_{_norm}", _BACKBONES["reactnet18"], norm=_norm)
    MODELS.register(f"reactnet_{_norm}", _BACKBONES["reactnet_a"], norm=_norm)  # short alias
# A&B BNN's models (Ma et al. 2024): BN-free, its block design; ReActNet-34 is ResNet-shaped.
MODELS.register("reactnet_a_ab", _BACKBONES["reactnet_a"], norm="nobn", design="ab")
MODELS.register("reactnet18_ab", _BACKBONES["reactnet18"], norm="nobn", design="ab")
MODELS.register(
    "reactnet34_ab",
    _BACKBONES["reactnet18"],
    norm="nobn",
    design="ab",
    blocks_per_stage=(6, 8, 12, 6),
)

MODEL_NAMES: tuple[str, ...] = MODELS.names()


def get_model(name: str, **kwargs) -> tf.keras.Model:
    """Builds the zoo model registered as `name` with the factory's keyword arguments.

    Raises:
        UnknownNameError: for an unknown name (a `ValueError`); the message lists the
            valid ones.
    """
    return MODELS.get(name)(**kwargs)


def backbone(name: str) -> str:
    """ "reactnet_a" or "reactnet18": the architecture behind a registry name.

    Raises:
        UnknownNameError: for an unknown name, as `get_model`.
    """
    target = MODELS.entry(name).target
    return next(key for key, value in _BACKBONES.items() if value == target)


def design(name: str) -> str:
    """ "reference" or "ab" (`DESIGNS`): whose block the model registered as `name` has.

    Raises:
        UnknownNameError: for an unknown name, as `get_model`.
    """
    return MODELS.entry(name).kwargs.get("design", "reference")


def __getattr__(name: str):
    # The builders and the checkpoint reader import TensorFlow: on first use only.
    lazy = {
        "ReActNet18": "reactnet18",
        "ReActNet34": "reactnet18",
        "ReActNetA": "reactnet_a",
        "signal_propagation_layers": "spp",
        "transition_blocks": "spp",
        "torch_weights": None,
    }
    if name not in lazy:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{lazy[name] or name}")
    return module if lazy[name] is None else getattr(module, name)


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
    from larq_nobn.zoo import torch_weights

    state = torch_weights.read_state_dict(path)
    found = torch_weights.describe(state)
    name = found.pop("model")
    if model is not None:
        if backbone(model) != backbone(name):
            found.pop("stem", None)
        name = model
    kwargs = {"padding": "torch", **found, **kwargs}
    built = get_model(name, stage=stage, **kwargs)
    return torch_weights.load_state_dict(built, state, source=os.fspath(path))


__all__ = [
    "DESIGNS",
    "Design",
    "MODELS",
    "MODEL_NAMES",
    "NORMS",
    "PADDINGS",
    "STAGES",
    "STEMS",
    "ReActNet18",
    "ReActNet34",
    "ReActNetA",
    "backbone",
    "design",
    "from_torch",
    "get_model",
    "signal_propagation_layers",
    "transition_blocks",
]
