"""Names a user gives by string, and what they stand for: one `Registry` per kind.

One registration style for everything named by string. The zoo's models
(`larq_nobn.zoo.MODELS`), the Keras applications a run trains or distills from
(`larq_nobn.train.catalog.APPLICATIONS`) and the datasets (`larq_nobn.train.catalog.DATASETS`)
are each a `Registry`: `register(name, target)` (also a decorator), `names()`, `get(name)`.
A target may be given lazily as `"module:attribute"`, so that listing or checking names
imports nothing heavy (the training program checks its flags before TensorFlow is
imported); `get` imports it. An unknown name is always an `UnknownNameError` (a
`ValueError`) with the one-line message `unknown {kind} {name!r}; valid names: a, b, c`.
Keras classes (layers, quantizers, constraints, optimizers, schedules, losses, of the
library and of the training program alike) are registered for Keras serialization by
`keras_serializable`, as `larq_nobn>{class name}`, with the names older versions saved them
under as aliases (files saved by them still load); `larq.utils.register_alias` is used
only where larq resolves a string identifier (`kernel_quantizer="magnitude_aware_ste_sign"`,
`kernel_constraint="weight_standardization"`).

This module imports nothing but the standard library (`keras_serializable`'s decorator
imports TensorFlow when it is applied, to a Keras class).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

#: The package of every Keras class of larq-nobn in Keras' serialization registry.
KERAS_PACKAGE = "larq_nobn"


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """The one line every unknown name gets: `unknown {kind} {name!r}; valid names: ...`."""
    return f"unknown {kind} {name!r}; valid names: {', '.join(valid)}"


class UnknownNameError(ValueError):
    """A name that is not registered; the message (one line) lists the valid ones.

    Args:
        kind: What was named ("model", "dataset", "--strategy", ...).
        name: The name asked for.
        valid: The registered names.
    """

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        super().__init__(unknown_name_message(kind, name, self.valid))


def resolve(target: Any) -> Any:
    """`target` itself, or the attribute a `"module:attribute"` string names, imported."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name.

    Args:
        name: The registered name.
        target: The object, or a `"module:attribute"` string naming it (imported on use).
        kwargs: Keyword arguments bound to a callable target (`functools.partial`).
    """

    name: str
    target: Any
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def load(self) -> Any:
        """The target, imported, with `kwargs` bound when there are any."""
        target = resolve(self.target)
        return functools.partial(target, **self.kwargs) if self.kwargs else target


class Registry:
    """Names of one kind, each standing for an object that `get` returns.

    ```python
    MODELS = Registry("model")
    MODELS.register("reactnet18_nobn", "larq_nobn.zoo.reactnet18:ReActNet18", norm="nobn")

    @MODELS.register("tiny")
    def tiny(**kwargs): ...

    MODELS.names()  # ("reactnet18_nobn", "tiny"), nothing imported
    MODELS.get("reactnet18_nobn")(stage=1)  # imports larq_nobn.zoo.reactnet18
    ```

    Args:
        kind: What the names name, for the message of `UnknownNameError`.
        error: The error `get` and `entry` raise, `UnknownNameError` or a subclass of it.
    """

    def __init__(self, kind: str, error: type[UnknownNameError] = UnknownNameError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any = None, **kwargs) -> Any:
        """Registers `target` (an object or `"module:attribute"`) as `name`.

        Without `target`, returns a decorator registering what it decorates.

        Args:
            name: The name; registering one twice is an error.
            target: The object, or a `"module:attribute"` string imported by `get`.
            **kwargs: Keyword arguments `get` binds to a callable target.

        Raises:
            ValueError: `name` is registered already.
        """
        if target is None:

            def decorator(obj):
                self.register(name, obj, **kwargs)
                return obj

            return decorator
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = Entry(name, target, dict(kwargs))
        return target

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (nothing is imported)."""
        return tuple(self._entries)

    def entry(self, name: str) -> Entry:
        """The `Entry` of `name` (its target not imported).

        Raises:
            UnknownNameError: `name` is not registered (`self.error`).
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self.error(self.kind, name, self.names()) from None

    def get(self, name: str) -> Any:
        """What `name` stands for, imported (with its bound keyword arguments).

        Raises:
            UnknownNameError: `name` is not registered (`self.error`).
        """
        return self.entry(name).load()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={list(self._entries)})"


def keras_serializable(*aliases: str) -> Callable[[type], type]:
    """Registers a Keras class for serialization, as `larq_nobn>{class name}`.

    The one style for the Keras objects of larq-nobn and its training program (layers,
    quantizers, constraints, optimizers, schedules, losses): saved models and optimizers
    load without `custom_objects`.

    ```python
    @keras_serializable("larq_nobn_train>LinearDecay")  # its name in older files
    class LinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule): ...
    ```

    Args:
        *aliases: Names the class was registered under before (`ScaledWSConv2D`,
            `larq_nobn_train>LinearDecay`): files saved with them still load.

    Returns:
        The decorator, which returns the class.
    """

    def decorator(cls: type) -> type:
        import tensorflow as tf  # the class is a Keras one: TensorFlow is imported

        tf.keras.utils.register_keras_serializable(package=KERAS_PACKAGE)(cls)
        custom_objects = tf.keras.utils.get_custom_objects()
        for alias in aliases:
            custom_objects[alias] = cls
        return cls

    return decorator
