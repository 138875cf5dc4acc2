"""What every dataset family shares: the request, the raw source, errors, subsets, TFDS."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

_SPLIT_SEED = 0  # fixed seed for dataset splits/subsets, independent of the training seed

Image = tf.Tensor
Seed = tf.Tensor  # shape [2] stateless seed


class DatasetError(Exception):
    """A dataset is unknown or not available locally (message is one user-facing line)."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a loaded dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_examples: int
    test_examples: int
    # The images are (rgb - mean) / std with rgb in [0, 1] (grayscale repeated to RGB):
    # per-channel or one value for all. A teacher that expects other inputs undoes it.
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclasses.dataclass(frozen=True)
class Request:
    """What `data.load` asks of a family's `source`; each family reads what it needs."""

    name: str
    data_dir: str | None = None
    image_size: int | None = None
    train_subset: int | None = None  # checked once, in `data.load`
    seed: int = 0
    num_classes: int | None = None
    synthetic_examples: int = 512
    input_context: tf.distribute.InputContext | None = None
    # CIFAR's preprocessing (`hyperparameters.Recipe`): its own statistics or ImageNet's,
    # zero or reflect padding before the random crops.
    normalization: str = "dataset"
    padding_mode: str = "constant"


@dataclasses.dataclass
class Source:
    """Un-batched raw splits plus the per-example transforms applied after caching."""

    train: tf.data.Dataset  # (raw image, label)
    test: tf.data.Dataset
    train_map: Callable[[Image, Seed], Image]  # augment + normalize
    test_map: Callable[[Image], Image]  # normalize
    num_classes: int
    image_size: int
    train_examples: int
    test_examples: int
    cache: bool = True
    shuffle_buffer: int | None = None  # None: whole (per-pipeline) train split
    train_sharded: bool = False  # True if the reader already sharded by input pipeline
    mean: tuple[float, ...] = (0.0,)  # the normalization of train_map's / test_map's output
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def from_arrays(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        maps: tuple[Callable[[Image, Seed], Image], Callable[[Image], Image]],
        num_classes: int,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> Source:
        """A source of in-memory (images, labels) splits; `maps` is (train_map, test_map)."""
        return cls(
            train=tf.data.Dataset.from_tensor_slices(train),
            test=tf.data.Dataset.from_tensor_slices(test),
            train_map=maps[0],
            test_map=maps[1],
            num_classes=num_classes,
            image_size=image_size,
            train_examples=len(train[1]),
            test_examples=len(test[1]),
            mean=mean,
            std=std,
        )

    @classmethod
    def from_datasets(cls, train: tf.data.Dataset, test: tf.data.Dataset, **fields) -> Source:
        """A source of TFDS splits, their sizes counted (`fields`: the other attributes)."""
        return cls(
            train=train,
            test=test,
            train_examples=_cardinality(train),
            test_examples=_cardinality(test),
            **fields,
        )


def check_positive(name: str, value: int | None) -> None:
    """Raises `ValueError` unless `value` is None or positive (`name` is the argument's)."""
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def subset(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, ...]:
    """First ``n`` examples after a fixed seeded permutation (no-op if ``n`` is None)."""
    if n is None:
        return images, labels
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))[:n]
    return images[order], labels[order]


def train_split(n: int | None) -> str:
    """The TFDS split of the first ``n`` train records (TFDS stores them in a fixed
    shuffled order, so a slice is a fixed random subset)."""
    return "train" if n is None else f"train[:{n}]"


def _tfds_error(name: str, data_dir: str | None) -> DatasetError:
    where = data_dir or os.path.join("~", "tensorflow_datasets")
    if name == "imagenet2012":
        how = (
            "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a manual dir and run "
            f"`tfds build imagenet2012 --manual_dir <dir> --data_dir {where}`"
        )
    else:
        how = f"run `tfds build {name} --data_dir {where}` on a machine with internet access"
    return DatasetError(f"dataset {name!r} is not prepared in {where}; to prepare it: {how}")


def tfds_load(name: str, split: str, data_dir: str | None, **kwargs) -> tf.data.Dataset:
    """``tfds.load(..., download=False, as_supervised=True)``; missing data -> DatasetError.

    TFDS's own message is multi-line and suggests download=True, which is impossible here:
    the error says how to prepare the data instead.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.load(
            name, split=split, data_dir=data_dir, download=False, as_supervised=True, **kwargs
        )
    except (
        AssertionError,
        OSError,
        tf.errors.OpError,
        tfds.core.registered.DatasetNotFoundError,
    ) as e:
        raise _tfds_error(name, data_dir) from e


def _cardinality(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(0, lambda count, _: count + 1))
    return n
