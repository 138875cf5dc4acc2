"""What the training program's flags name, registered without importing TensorFlow.

`APPLICATIONS`: the Keras applications a run trains (`--model resnet50`) or distills from
(`--teacher resnet50`); `DATASETS`: the datasets of `--dataset`, each name standing for its
loader in `data`. Both are `larq_nobn.registry.Registry`s (see there for the one
registration style): names are listed and checked before TensorFlow is imported; an
application's builder and a dataset's loader are imported on use.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping

from larq_nobn.registry import Registry

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# How tf_keras names the weight files: `{model name}{"" or "_notop"}`, per module.
_RESNET_FILE = "{}_weights_tf_dim_ordering_tf_kernels{}.h5"
_PLAIN_FILE = "{}{}.h5"


@dataclasses.dataclass(frozen=True)
class Application:
    """A Keras application usable as a teacher.

    Args:
        builder: The name of the `tf.keras.applications` function building the model.
        module: Its module in `tf.keras.applications`, whose `preprocess_input` maps RGB in
            [0, 255] to the model's input.
        size: Native ImageNet resolution (side of the square input).
        top1: Published ImageNet top-1 accuracy in percent (Keras applications table).
        keras_name: The model name tf_keras gives it, which also names its weight files.
        weights_url: The folder URL tf_keras downloads its weight files from.
        file_pattern: Weight file name pattern, formatted with `keras_name` and the
            `"_notop"` suffix (empty with the ImageNet head).
        build_kwargs: Extra constructor arguments.
    """

    builder: str
    module: str
    size: int
    top1: float
    keras_name: str
    weights_url: str
    file_pattern: str
    build_kwargs: Mapping[str, object] = dataclasses.field(default_factory=dict)

    @property
    def constructor(self) -> Callable:
        """The `tf.keras.applications` function building the model (imports TensorFlow)."""
        return getattr(self._applications(), self.builder)

    @property
    def preprocess_input(self) -> Callable:
        """Its module's `preprocess_input` (imports TensorFlow)."""
        return getattr(self._applications(), self.module).preprocess_input

    @staticmethod
    def _applications():
        return importlib.import_module("tensorflow").keras.applications

    def weights_file(self, include_top: bool) -> str:
        """The name of the ImageNet weight file, with or without the ImageNet head."""
        return self.file_pattern.format(self.keras_name, "" if include_top else "_notop")


def _resnet(builder: str, module: str, keras_name: str, top1: float) -> Application:
    return Application(
        builder, module, 224, top1, keras_name, _WEIGHTS_URL + "resnet/", _RESNET_FILE
    )


def _included(builder, module, folder, keras_name, size, top1) -> Application:
    # The model rescales 0..255 RGB itself; the module's preprocess_input is identity.
    return Application(
        builder,
        module,
        size,
        top1,
        keras_name,
        _WEIGHTS_URL + folder,
        _PLAIN_FILE,
        {"include_preprocessing": True},
    )


APPLICATIONS = Registry("application")
for _name, _application in {
    "resnet50": _resnet("ResNet50", "resnet", "resnet50", 74.9),
    "resnet101": _resnet("ResNet101", "resnet", "resnet101", 76.4),
    "resnet152": _resnet("ResNet152", "resnet", "resnet152", 76.6),
    "resnet50v2": _resnet("ResNet50V2", "resnet_v2", "resnet50v2", 76.0),
    "efficientnetv2_b0": _included(
        "EfficientNetV2B0", "efficientnet_v2", "efficientnet_v2/", "efficientnetv2-b0", 224, 78.7
    ),
    "efficientnetv2_s": _included(
        "EfficientNetV2S", "efficientnet_v2", "efficientnet_v2/", "efficientnetv2-s", 384, 83.9
    ),
    "efficientnetv2_m": _included(
        "EfficientNetV2M", "efficientnet_v2", "efficientnet_v2/", "efficientnetv2-m", 480, 85.3
    ),
    "convnext_tiny": _included("ConvNeXtTiny", "convnext", "convnext/", "convnext_tiny", 224, 81.3),
    "convnext_base": _included("ConvNeXtBase", "convnext", "convnext/", "convnext_base", 224, 85.3),
}.items():
    APPLICATIONS.register(_name, _application)

# Each dataset's loader in `data`, given `load`'s arguments (a `data.Request`).
DATASETS = Registry("dataset")
DATASETS.register("digits", "larq_nobn.train.data.digits:source")
DATASETS.register("fashion_mnist", "larq_nobn.train.data.fashion_mnist:source")
DATASETS.register("cifar10", "larq_nobn.train.data.cifar:source")
DATASETS.register("cifar100", "larq_nobn.train.data.cifar:source")
DATASETS.register("imagenet2012", "larq_nobn.train.data.imagenet:source")
DATASETS.register("synthetic", "larq_nobn.train.data.synthetic:source")
