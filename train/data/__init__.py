"""Input pipelines for training binary networks (digits, Fashion-MNIST, CIFAR, ImageNet, synthetic).

Every pipeline yields batches of ``(float32 NHWC images, int32 labels)``. The training batches
of an epoch are a function of ``(seed, stream, epoch)`` only: the shuffle order and the seeds of
the stateless augmentation ops are derived from that key, never from how many times this
process iterated a dataset before. A resumed run, a skipped stage or a restarted worker sees
exactly the data an uninterrupted run sees, while every epoch still gets a fresh order and
fresh augmentations.

One module per dataset family (`digits`, `fashion_mnist`, `cifar`, `imagenet`, `synthetic`),
each with a `source(request)`; what they share is in `source` (the request, the raw source,
errors, subsets, TFDS), `augment` (image transforms) and `pipeline` (the tf.data assembly).
"""

import tensorflow as tf

from larq_nobn.registry import UnknownNameError
from larq_nobn.train.catalog import DATASETS
from larq_nobn.train.data import cifar, digits, fashion_mnist, imagenet, synthetic
from larq_nobn.train.data.cifar import CIFAR_STATS
from larq_nobn.train.data.digits import DIGITS_TEST_EXAMPLES
from larq_nobn.train.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    read_idx,
)
from larq_nobn.train.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LIGHTING_ALPHASTD,
    LIGHTING_EIGVAL,
    LIGHTING_EIGVEC,
    decode_center_crop,
    decode_random_resized_crop,
    lighting,
)
from larq_nobn.train.data.pipeline import AUTOTUNE, assemble
from larq_nobn.train.data.source import (
    DatasetError,
    DatasetInfo,
    Request,
    Source,
    check_positive,
)
from larq_nobn.train.hyperparameters import NORMALIZATIONS, PADDINGS

DATASET_NAMES: tuple[str, ...] = DATASETS.names()


class UnknownDatasetError(UnknownNameError, DatasetError):
    """A dataset name that `catalog.DATASETS` (the one table of the datasets) does not hold."""


def load(
    name: str,
    *,
    global_batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    train_subset: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    synthetic_examples: int = 512,
    input_context: tf.distribute.InputContext | None = None,
    stream: int = 0,
    first_epoch: int = 0,
    epochs: int = 1,
    normalization: str = "dataset",
    padding_mode: str = "constant",
    first_step: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
    """Returns (train, test, info): batched, prefetched (float32 NHWC images, int32 labels).

    ``train`` holds the batches of epochs ``first_epoch, ..., first_epoch + epochs - 1`` (0-based)
    of ``stream``, one epoch after the other, ``train_examples // batch`` batches each (the
    remainder is dropped). Each epoch's batches are a function of ``(seed, stream, epoch)``
    only: every iteration of ``train`` yields the same batches, and ``first_epoch=k`` yields
    the batches that epoch k has in a dataset that starts at 0. The training program uses one
    stream per stage. ``first_step=s`` leaves out the first ``s`` batches of the first epoch
    (a run resumed inside an epoch): the others are the same batches.

    ``num_classes`` and ``synthetic_examples`` only apply to "synthetic". With ``input_context``
    the train split is sharded per input pipeline and both splits are batched per replica.

    ``normalization`` and ``padding_mode`` are CIFAR's preprocessing (the other datasets have
    their own): "dataset" normalizes with CIFAR's mean and std, "imagenet" with ImageNet's
    (as A&B BNN's CIFAR models were trained); the random crops pad with zeros ("constant")
    or by reflection ("reflect").
    """
    if first_epoch < 0 or epochs <= 0 or first_step < 0:
        raise ValueError(
            "need first_epoch >= 0, epochs > 0 and first_step >= 0, got "
            f"{first_epoch}, {epochs}, {first_step}"
        )
    try:
        source = DATASETS.get(name)  # the family module's `source(request)`
    except UnknownNameError as error:
        raise UnknownDatasetError(error.kind, name, error.valid) from None
    for argument, value, valid in (
        ("normalization", normalization, NORMALIZATIONS),
        ("padding_mode", padding_mode, PADDINGS),
    ):
        if value not in valid:
            raise ValueError(f"`{argument}` must be one of {valid}, got {value!r}")
    check_positive("global_batch_size", global_batch_size)
    check_positive("image_size", image_size)
    check_positive("train_subset", train_subset)
    request = Request(
        name=name,
        data_dir=data_dir,
        image_size=image_size,
        train_subset=train_subset,
        seed=seed,
        num_classes=num_classes,
        synthetic_examples=synthetic_examples,
        input_context=input_context,
        normalization=normalization,
        padding_mode=padding_mode,
    )
    return assemble(
        name,
        source(request),
        global_batch_size=global_batch_size,
        seed=seed,
        input_context=input_context,
        stream=stream,
        first_epoch=first_epoch,
        epochs=epochs,
        first_step=first_step,
    )


__all__ = [
    # The family modules, each with its `source(request)` (what `catalog.DATASETS` names).
    "cifar",
    "digits",
    "fashion_mnist",
    "imagenet",
    "synthetic",
    "Source",
    "AUTOTUNE",
    "CIFAR_STATS",
    "DATASET_NAMES",
    "DEBIAN_FASHION_MNIST_DIR",
    "DIGITS_TEST_EXAMPLES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LIGHTING_ALPHASTD",
    "LIGHTING_EIGVAL",
    "LIGHTING_EIGVEC",
    "DatasetError",
    "DatasetInfo",
    "UnknownDatasetError",
    "Request",
    "decode_center_crop",
    "decode_random_resized_crop",
    "lighting",
    "load",
    "read_idx",
]
