"""The networks of "BNN - BN = ?": ReActNet-A and ReActNet-18, each in three variants.

```python
from larq_nobn import zoo
model = zoo.get_model("reactnet18_nobn", stage=1, stem="cifar", input_shape=(32, 32, 3),
                      num_classes=10)
```
"""

import larq_nobn  # noqa: F401  (selects Keras 2 before TensorFlow is imported)

# isort: split
import functools
from collections.abc import Callable

import tensorflow as tf

from larq_nobn.zoo.blocks import NORMS, STAGES
from larq_nobn.zoo.reactnet18 import ReActNet18
from larq_nobn.zoo.reactnet_a import ReActNetA

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


__all__ = ["MODEL_NAMES", "NORMS", "STAGES", "ReActNet18", "ReActNetA", "backbone", "get_model"]
