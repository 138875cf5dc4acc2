"""Full-precision teachers for distillation: Keras applications fed the student's batches.

The student sees normalized images, `x = (raw / 255 - mean) / std` with per-channel (or one
scalar) `mean` and `std` on the [0, 1] scale. `ApplicationInput` undoes that normalization
and applies the application's own `preprocess_input`, so a teacher built by
`build_application` takes exactly the student's batch.

ImageNet weights come from Keras' cache (`~/.keras/models/`, see `keras_cache_dir`); when a
file is missing and cannot be downloaded, `build_application` raises `WeightsUnavailableError`
before building the model.
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence

import tensorflow as tf
from tf_keras.src.applications import convnext as _convnext  # its unregistered layers

from larq_nobn.registry import keras_serializable
from larq_nobn.train import catalog
from larq_nobn.train.catalog import Application

MIN_SIZE = 32  # the smallest input side every listed application accepts
IMAGENET_CLASSES = 1000
# Batch norm's moving averages follow the batches at torch's default rate (Keras' 0.99 takes
# thousands of steps to forget their initial values: a short teacher run then evaluates
# with statistics that are not its network's).
BN_MOMENTUM = 0.9


#: The applications by name (`catalog.APPLICATIONS`, a `Registry`, as a mapping).
APPLICATIONS: Mapping[str, Application] = types.MappingProxyType(
    {name: catalog.APPLICATIONS.get(name) for name in catalog.APPLICATIONS}
)
APPLICATION_NAMES: tuple[str, ...] = catalog.APPLICATIONS.names()
#: What `tf.keras.models.load_model` needs for a saved ConvNeXt teacher: tf_keras does not
#: register these two layers of its ConvNeXt, so such a file fails to load without them.
CUSTOM_OBJECTS: Mapping[str, type] = types.MappingProxyType(
    {"LayerScale": _convnext.LayerScale, "StochasticDepth": _convnext.StochasticDepth}
)


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in Keras' cache nor downloadable."""


def is_application(name: str) -> bool:
    """Whether `name` is one of `APPLICATION_NAMES`."""
    return name in catalog.APPLICATIONS


def get_application(name: str) -> Application:
    """The registry entry of `name`.

    Raises:
        UnknownNameError: `name` is not one of `APPLICATION_NAMES` (a `ValueError`).
    """
    return catalog.APPLICATIONS.get(name)


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ValueError(
            f"size must be at least {MIN_SIZE}, got {size} (pass size= to resize the images)"
        )


def keras_cache_dir() -> str:
    """The folder where tf_keras looks for and stores application weights.

    Follows `tf.keras.utils.get_file(..., cache_subdir="models")` of tf_keras 2.x:
    `~/.keras/models`, or `/tmp/.keras/models` when `~/.keras` is not writable. (tf_keras'
    `get_file` ignores `KERAS_HOME`; only Keras 3 honours it.)
    """
    base = os.path.expanduser(os.path.join("~", ".keras"))
    if not os.access(base, os.W_OK):
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models")


def _fetch_weights(app: Application, include_top: bool) -> None:
    """Puts the weight file into Keras' cache (no-op when present), or fails fast."""
    file_name = app.weights_file(include_top)
    url = app.weights_url + file_name
    try:
        # Same call as the application's except for the hash, which the application
        # verifies when it loads the file.
        tf.keras.utils.get_file(file_name, url, cache_subdir="models")
    except Exception as err:  # get_file wraps every download failure in a bare Exception
        raise WeightsUnavailableError(
            f"ImageNet weights {file_name} are not in {keras_cache_dir()} and could not be "
            f"downloaded from {url}: download it elsewhere and place it there"
        ) from err


@keras_serializable()
class ApplicationInput(tf.keras.layers.Layer):
    """Turns student-normalized images into the input a Keras application expects.

    Computes `raw = (x * std + mean) * 255` (RGB in [0, 255]), resizes it bilinearly to
    `(size, size)` when `size` is given and differs, and applies the application's own
    `preprocess_input`. The layer computes in float32 by default, also under a mixed
    precision policy: the pixel values reach 255, where float16 resolves only 0.125, and
    `tf.image.resize` returns float32 anyway; the application casts to its own dtype.

    Args:
        application: One of `APPLICATION_NAMES`.
        mean: Per-channel (3 values) or scalar (1 value) mean of the student's
            normalization, on the [0, 1] scale.
        std: Its standard deviation, likewise.
        size: Side of the square images the application sees; None keeps the input size.
        **kwargs: Keras layer arguments.

    Raises:
        ValueError: Unknown application, `mean`/`std` not of 1 or 3 values, a non-positive
            `std`, or `size` below `MIN_SIZE`.
    """

    def __init__(
        self,
        application: str,
        mean: Sequence[float],
        std: Sequence[float],
        size: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self._preprocess = get_application(application).preprocess_input
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) not in (1, 3) or len(std) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values, got {mean} and {std}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        if size is not None:
            _check_size(size)
        self.application, self.mean, self.std, self.size = application, mean, std, size

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        raw = (inputs * tf.constant(self.std) + tf.constant(self.mean)) * 255.0
        if self.size is not None and raw.shape[1:3] != (self.size, self.size):
            raw = tf.image.resize(raw, (self.size, self.size), method="bilinear")
        return self._preprocess(raw)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "application": self.application,
            "mean": list(self.mean),
            "std": list(self.std),
            "size": self.size,
        }


def build_application(
    name: str,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    weights: str | None = None,
    size: int | None = None,
) -> tf.keras.Model:
    """A Keras application as a teacher taking the student's normalized batches.

    With `weights="imagenet"` and `num_classes=1000` the model keeps the application's
    ImageNet head and `size` defaults to the native resolution. Otherwise it gets
    `include_top=False, pooling="avg"` (backbone weights None or ImageNet) and a new
    `Dense(num_classes)` head named `fc`, and `size` defaults to the student's resolution.
    Its batch norm layers get momentum `BN_MOMENTUM` (torch's default) for training.

    Args:
        name: One of `APPLICATION_NAMES`.
        num_classes: Number of logits.
        input_shape: The student's input shape `(height, width, 3)`.
        mean: The student's normalization mean (1 or 3 values, [0, 1] scale).
        std: Its standard deviation, likewise.
        weights: None (random initialization) or `"imagenet"`.
        size: Side of the square images the application sees.

    Returns:
        A functional model named `teacher_{name}` returning float32 logits (no softmax).

    Raises:
        ValueError: Unknown name, bad `weights`, `input_shape` or `size` (below `MIN_SIZE`,
            or not the native resolution with the ImageNet head).
        WeightsUnavailableError: ImageNet weights are neither cached nor downloadable.
    """
    app = get_application(name)
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights must be None or 'imagenet', got {weights!r}")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {tuple(input_shape)}")
    imagenet_head = weights == "imagenet" and num_classes == IMAGENET_CLASSES
    if size is None:
        size = app.size if imagenet_head else input_shape[0]
    _check_size(size)
    if imagenet_head and size != app.size:
        raise ValueError(f"{name}'s ImageNet head needs size {app.size}, got {size}")
    if weights == "imagenet":
        _fetch_weights(app, include_top=imagenet_head)

    backbone = app.constructor(
        include_top=imagenet_head,
        weights=weights,
        input_shape=(size, size, 3),
        pooling=None if imagenet_head else "avg",
        classifier_activation=None,
        **app.build_kwargs,
    )
    for layer in backbone.layers:  # no effect on a frozen teacher (inference mode)
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    inputs = tf.keras.Input(shape=tuple(input_shape))
    x = ApplicationInput(name, mean, std, size, name="application_input")(inputs)
    x = backbone(x)
    if imagenet_head:  # float32 logits also under a mixed precision policy
        outputs = tf.keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    else:
        outputs = tf.keras.layers.Dense(num_classes, name="fc", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs, name=f"teacher_{name}")
