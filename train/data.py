"""Input pipelines for training binary networks (digits, Fashion-MNIST, CIFAR, ImageNet, synthetic).

Every pipeline yields batches of ``(float32 NHWC images, int32 labels)``. The training batches
of an epoch are a function of ``(seed, stream, epoch)`` only: the shuffle order and the seeds of
the stateless augmentation ops are derived from that key, never from how many times this
process iterated a dataset before. A resumed run, a skipped stage or a restarted worker sees
exactly the data an uninterrupted run sees, while every epoch still gets a fresh order and
fresh augmentations.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from larq_nobn.registry import UnknownNameError
from larq_nobn.train.catalog import DATASETS

DATASET_NAMES: tuple[str, ...] = DATASETS.names()

AUTOTUNE = tf.data.AUTOTUNE

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet-style PCA lighting noise, as in the PyTorch reference.
LIGHTING_ALPHASTD = 0.1
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

DIGITS_TEST_EXAMPLES = 360
_SPLIT_SEED = 0  # fixed seed for dataset splits/subsets, independent of the training seed
_IMAGENET_SHUFFLE_BUFFER = 10_000
_GRAPH_SEED = 1  # graph-level seed of the per-epoch pipelines

Image = tf.Tensor
Seed = tf.Tensor  # shape [2] stateless seed


class DatasetError(Exception):
    """A dataset is unknown or not available locally (message is one user-facing line)."""


class UnknownDatasetError(UnknownNameError, DatasetError):
    """A dataset name that `catalog.DATASETS` does not hold."""


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


@dataclasses.dataclass
class _Source:
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
        train_map: Callable[[Image, Seed], Image],
        test_map: Callable[[Image], Image],
        num_classes: int,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> _Source:
        """A source of in-memory (images, labels) splits."""
        return cls(
            train=tf.data.Dataset.from_tensor_slices(train),
            test=tf.data.Dataset.from_tensor_slices(test),
            train_map=train_map,
            test_map=test_map,
            num_classes=num_classes,
            image_size=image_size,
            train_examples=len(train[1]),
            test_examples=len(test[1]),
            mean=mean,
            std=std,
        )


# ----------------------------------------------------------------------------- transforms


def _to_unit(image: Image) -> Image:
    """uint8 [0, 255] (or float [0, 1]) -> float32 [0, 1]."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def _normalize(image: Image, mean: tuple[float, ...], std: tuple[float, ...]) -> Image:
    """(image - mean) / std with per-channel (or scalar) statistics."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _to_rgb(image: Image) -> Image:
    """Replicate a single-channel image to 3 channels (no-op for RGB)."""
    if image.shape[-1] == 1:
        return tf.tile(image, [1, 1, 3])
    return image


def _pad_crop(image: Image, padding: int, size: int, seed: Seed) -> Image:
    """Zero-pad ``padding`` pixels on each side, then take a random ``size`` x ``size`` crop."""
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, [size, size, image.shape[-1]], seed=seed)


def lighting(image: Image, seed: Seed, alphastd: float = LIGHTING_ALPHASTD) -> Image:
    """AlexNet PCA lighting noise: ``image + eigvec @ (alpha * eigval)``, alpha ~ N(0, alphastd)."""
    alpha = tf.random.stateless_normal([3], seed=seed, stddev=alphastd)
    eigval = tf.constant(LIGHTING_EIGVAL, tf.float32)
    eigvec = tf.constant(LIGHTING_EIGVEC, tf.float32)
    rgb = tf.linalg.matvec(eigvec, alpha * eigval)
    return image + rgb


def _crop_window(
    shape: tf.Tensor,
    seed: Seed,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Random-resized-crop window ``[y, x, h, w]`` for an image of ``shape`` (H, W, C)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=scale[0],
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_random_resized_crop(encoded: tf.Tensor, size: int, seed: Seed) -> Image:
    """Decode an encoded image, crop a random window (scale 0.08-1, ratio 3/4-4/3), resize."""

    def jpeg() -> Image:
        window = _crop_window(tf.image.extract_jpeg_shape(encoded), seed)
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other() -> Image:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        w = _crop_window(tf.shape(image), seed)
        return tf.image.crop_to_bounding_box(image, w[0], w[1], w[2], w[3])

    crop = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    crop = tf.image.resize(_to_unit(crop), [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(crop, 0.0, 1.0)


def decode_center_crop(encoded: tf.Tensor, size: int) -> Image:
    """Decode, resize the shorter side to ``size * 256 / 224``, center-crop ``size``."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = _to_unit(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.round(size * 256 / 224)
    new_shape = tf.cast(tf.round(shape * short / tf.reduce_min(shape)), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, size, size)
    return tf.clip_by_value(image, 0.0, 1.0)


# ----------------------------------------------------------------------------- sources


def _tfds_error(name: str, data_dir: str | None, exc: BaseException) -> DatasetError:
    where = data_dir or os.path.join("~", "tensorflow_datasets")
    if name == "imagenet2012":
        how = (
            "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a manual dir and run "
            f"`tfds build imagenet2012 --manual_dir <dir> --data_dir {where}`"
        )
    else:
        how = f"run `tfds build {name} --data_dir {where}` on a machine with internet access"
    del exc  # TFDS's own message is multi-line and suggests download=True, which is impossible
    return DatasetError(f"dataset {name!r} is not prepared in {where}; to prepare it: {how}")


def _tfds_load(name: str, split: str, data_dir: str | None, **kwargs) -> tf.data.Dataset:
    """``tfds.load(..., download=False, as_supervised=True)``; missing data -> DatasetError."""
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
        raise _tfds_error(name, data_dir, e) from e


def _cardinality(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n < 0:
        n = int(ds.reduce(0, lambda count, _: count + 1))
    return n


def _subset(images: np.ndarray, labels: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """First ``n`` examples after a fixed seeded permutation (no-op if ``n`` is None)."""
    if n is None:
        return images, labels
    if n <= 0:
        raise ValueError(f"train_subset must be positive, got {n}")
    order = np.random.RandomState(_SPLIT_SEED).permutation(len(labels))[:n]
    return images[order], labels[order]


def _digits(image_size: int | None, train_subset: int | None) -> _Source:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_EXAMPLES, stratify=labels, random_state=_SPLIT_SEED
    )
    x_train, y_train = _subset(x_train, y_train, train_subset)
    size = image_size or 32

    def upsample(x: np.ndarray) -> np.ndarray:
        return tf.image.resize(x, [size, size], method="bilinear").numpy()

    x_train, x_test = upsample(x_train), upsample(x_test)
    mean, std = float(x_train.mean()), float(x_train.std())

    def train_map(image: Image, seed: Seed) -> Image:
        image = _pad_crop(image, 2, size, seed)  # translation only: digits are not mirror-symmetric
        return _normalize(_to_rgb(image), (mean,), (std,))

    def test_map(image: Image) -> Image:
        return _normalize(_to_rgb(image), (mean,), (std,))

    return _Source.from_arrays(
        (x_train, y_train),
        (x_test, y_test),
        train_map,
        test_map,
        num_classes=10,
        image_size=size,
        mean=(mean,),
        std=(std,),
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a numpy array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: IDX header says shape {shape} but holds {array.size} bytes")
    return array.reshape(shape)


def _find_idx_dir(dirs: list[str]) -> dict[str, Path] | None:
    for d in dirs:
        found = {}
        for key, base in FASHION_MNIST_FILES.items():
            for candidate in (Path(d) / base, Path(d) / f"{base}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


def _fashion_mnist_arrays(data_dir: str | None) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): uint8 (N, 28, 28, 1) / int32, from TFDS or IDX."""
    import tensorflow_datasets as tfds

    try:
        splits = tfds.load(
            "fashion_mnist",
            split=["train", "test"],
            data_dir=data_dir,
            download=False,
            as_supervised=True,
            batch_size=-1,
        )
        (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
        return x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)
    except (AssertionError, OSError, tf.errors.OpError):
        pass
    dirs = [d for d in (data_dir, DEBIAN_FASHION_MNIST_DIR) if d]
    files = _find_idx_dir(dirs)
    if files is None:
        tfds_dir = data_dir or os.path.join("~", "tensorflow_datasets")
        raise DatasetError(
            f"Fashion-MNIST not found: no TFDS data in {tfds_dir} and no IDX files "
            f"({', '.join(FASHION_MNIST_FILES.values())}[.gz]) in {' or '.join(dirs)}; "
            "prepare it with `apt-get install dataset-fashion-mnist`, or put the IDX files "
            "in --data_dir, or run `tfds build fashion_mnist`"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            where = files[f"{split}_images"].parent
            raise DatasetError(
                f"Fashion-MNIST IDX files in {where} are inconsistent: "
                f"images {x.shape}, labels {y.shape}"
            )
    return (
        arrays["train_images"][..., None],
        arrays["train_labels"].astype(np.int32),
        arrays["test_images"][..., None],
        arrays["test_labels"].astype(np.int32),
    )


def _fashion_mnist(data_dir: str | None, image_size: int | None, subset: int | None) -> _Source:
    x_train, y_train, x_test, y_test = _fashion_mnist_arrays(data_dir)
    x_train, y_train = _subset(x_train, y_train, subset)
    size = image_size or 32
    pad = [[0, 0], [2, 2], [2, 2], [0, 0]]
    x_train, x_test = np.pad(x_train, pad), np.pad(x_test, pad)  # 28x28 -> 32x32, zeros

    def prepare(image: Image) -> Image:
        """uint8 32x32 -> float [0, 1] at the requested size."""
        image = _to_unit(image)
        if size != 32:
            image = tf.image.resize(image, [size, size], method="bilinear")
        return image

    def train_map(image: Image, seed: Seed) -> Image:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = _pad_crop(prepare(image), 4, size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return _normalize(_to_rgb(image), (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,))

    def test_map(image: Image) -> Image:
        return _normalize(_to_rgb(prepare(image)), (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,))

    return _Source.from_arrays(
        (x_train, y_train),
        (x_test, y_test),
        train_map,
        test_map,
        num_classes=10,
        image_size=size,
        mean=(FASHION_MNIST_MEAN,),
        std=(FASHION_MNIST_STD,),
    )


def _cifar(name: str, data_dir: str | None, image_size: int | None, subset: int | None) -> _Source:
    if subset is not None and subset <= 0:
        raise ValueError(f"train_subset must be positive, got {subset}")
    # TFDS stores records in a fixed shuffled order, so a slice is a fixed random subset.
    train = _tfds_load(name, "train" if subset is None else f"train[:{subset}]", data_dir)
    test = _tfds_load(name, "test", data_dir)
    mean, std = CIFAR_STATS[name]
    size = image_size or 32

    def resize(image: Image) -> Image:
        if size != 32:
            image = tf.image.resize(image, [size, size], method="bilinear")
        return image

    def train_map(image: Image, seed: Seed) -> Image:
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = _pad_crop(resize(_to_unit(image)), 4, size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return _normalize(image, mean, std)

    def test_map(image: Image) -> Image:
        return _normalize(resize(_to_unit(image)), mean, std)

    return _Source(
        train=train,
        test=test,
        train_map=train_map,
        test_map=test_map,
        num_classes=100 if name == "cifar100" else 10,
        image_size=size,
        mean=mean,
        std=std,
        train_examples=_cardinality(train),
        test_examples=_cardinality(test),
    )


def _imagenet(
    data_dir: str | None,
    image_size: int | None,
    subset: int | None,
    seed: int,
    input_context: tf.distribute.InputContext | None,
) -> _Source:
    import tensorflow_datasets as tfds

    if subset is not None and subset <= 0:
        raise ValueError(f"train_subset must be positive, got {subset}")
    skip = {"image": tfds.decode.SkipDecoding()}  # decode (and crop) inside our own map
    train = _tfds_load(
        "imagenet2012",
        "train" if subset is None else f"train[:{subset}]",
        data_dir,
        shuffle_files=True,
        decoders=skip,
        # A fixed file order (a function of the seed): reshuffling files per iteration would
        # make an epoch's data depend on the iterations before it in this process. The
        # per-epoch element shuffle below reorders within its buffer.
        read_config=tfds.ReadConfig(
            shuffle_seed=seed,
            shuffle_reshuffle_each_iteration=False,
            input_context=input_context,
        ),
    )
    test = _tfds_load("imagenet2012", "validation", data_dir, decoders=skip)
    size = image_size or 224

    def train_map(encoded: tf.Tensor, seed: Seed) -> Image:
        crop_seed, flip_seed, light_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        image = decode_random_resized_crop(encoded, size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        image = lighting(image, light_seed)
        return _normalize(image, IMAGENET_MEAN, IMAGENET_STD)

    def test_map(encoded: tf.Tensor) -> Image:
        return _normalize(decode_center_crop(encoded, size), IMAGENET_MEAN, IMAGENET_STD)

    return _Source(
        train=train,
        test=test,
        train_map=train_map,
        test_map=test_map,
        num_classes=1000,
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        train_examples=_cardinality(train),
        test_examples=_cardinality(test),
        cache=False,
        shuffle_buffer=_IMAGENET_SHUFFLE_BUFFER,
        train_sharded=input_context is not None,
    )


def _synthetic(
    image_size: int | None, num_classes: int | None, examples: int, seed: int
) -> _Source:
    if examples <= 0:
        raise ValueError(f"synthetic_examples must be positive, got {examples}")
    size, classes = image_size or 32, num_classes or 10
    rng = np.random.default_rng(seed)

    def make(n: int) -> tf.data.Dataset:
        images = rng.standard_normal((n, size, size, 3), dtype=np.float32)
        labels = rng.integers(0, classes, size=n, dtype=np.int32)
        return tf.data.Dataset.from_tensor_slices((images, labels))

    test_examples = max(1, examples // 4)
    return _Source(
        train=make(examples),
        test=make(test_examples),
        train_map=lambda image, seed: image,
        test_map=lambda image: image,
        num_classes=classes,
        image_size=size,
        mean=(0.5,),  # standard normal images read as normalized RGB around mid-gray
        std=(0.25,),
        train_examples=examples,
        test_examples=test_examples,
    )


# ----------------------------------------------------------------------------- dispatch


@dataclasses.dataclass(frozen=True)
class Request:
    """`load`'s arguments, as every loader of `catalog.DATASETS` takes them."""

    name: str
    data_dir: str | None
    image_size: int | None
    train_subset: int | None
    seed: int
    input_context: tf.distribute.InputContext | None
    num_classes: int | None
    synthetic_examples: int


def _load_digits(r: Request) -> _Source:
    return _digits(r.image_size, r.train_subset)


def _load_fashion_mnist(r: Request) -> _Source:
    return _fashion_mnist(r.data_dir, r.image_size, r.train_subset)


def _load_cifar(r: Request) -> _Source:
    return _cifar(r.name, r.data_dir, r.image_size, r.train_subset)


def _load_imagenet(r: Request) -> _Source:
    return _imagenet(r.data_dir, r.image_size, r.train_subset, r.seed, r.input_context)


def _load_synthetic(r: Request) -> _Source:
    return _synthetic(r.image_size, r.num_classes, r.synthetic_examples, r.seed)


# ----------------------------------------------------------------------------- public API


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
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
    """Returns (train, test, info): batched, prefetched (float32 NHWC images, int32 labels).

    ``train`` holds the batches of epochs ``first_epoch, ..., first_epoch + epochs - 1`` (0-based)
    of ``stream``, one epoch after the other, ``train_examples // batch`` batches each (the
    remainder is dropped). Each epoch's batches are a function of ``(seed, stream, epoch)``
    only: every iteration of ``train`` yields the same batches, and ``first_epoch=k`` yields
    the batches that epoch k has in a dataset that starts at 0. The training program uses one
    stream per stage.

    ``num_classes`` and ``synthetic_examples`` only apply to "synthetic". With ``input_context``
    the train split is sharded per input pipeline and both splits are batched per replica.
    """
    if first_epoch < 0 or epochs <= 0:
        raise ValueError(f"need first_epoch >= 0 and epochs > 0, got {first_epoch}, {epochs}")
    try:
        loader = DATASETS.get(name)
    except UnknownNameError as error:
        raise UnknownDatasetError(error.kind, name, error.valid) from None
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if image_size is not None and image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")

    src = loader(
        Request(
            name,
            data_dir,
            image_size,
            train_subset,
            seed,
            input_context,
            num_classes,
            synthetic_examples,
        )
    )

    batch_size = global_batch_size
    num_pipelines = 1
    train = src.train
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        num_pipelines = input_context.num_input_pipelines
        if num_pipelines > 1 and not src.train_sharded:
            train = train.shard(num_pipelines, input_context.input_pipeline_id)
    if src.train_examples // num_pipelines < batch_size:
        raise DatasetError(
            f"{name}: {src.train_examples} train examples over {num_pipelines} input pipeline(s) "
            f"cannot fill one batch of {batch_size} (train batches drop the remainder)"
        )

    def as_label(label: tf.Tensor) -> tf.Tensor:
        return tf.cast(label, tf.int32)

    test = src.test
    if src.cache:
        train, test = train.cache(), test.cache()

    buffer = src.shuffle_buffer or max(1, -(-src.train_examples // num_pipelines))
    stream_key = tf.constant([seed, stream], tf.int64)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        # Traced in a graph of its own: its graph-level seed (the first of the shuffle's two
        # seeds) is fixed here, so the order depends on the key below only, not on the
        # process's global seed (which `tf.random.set_seed` would otherwise lend it; a
        # global seed of 0 would even fail with a tensor op seed).
        tf.random.set_seed(_GRAPH_SEED)
        key = tf.random.experimental.stateless_fold_in(stream_key, epoch)
        order_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        examples = train.shuffle(buffer, seed=order_seed, reshuffle_each_iteration=False)
        # Each example's augmentation seed: the epoch's key folded with its position, so
        # parallel maps stay deterministic.
        examples = examples.enumerate().map(
            lambda index, example: (
                src.train_map(example[0], tf.random.experimental.stateless_fold_in(key, index)),
                as_label(example[1]),
            ),
            num_parallel_calls=AUTOTUNE,
        )
        return examples.batch(batch_size, drop_remainder=True)

    train = tf.data.Dataset.range(first_epoch, first_epoch + epochs).flat_map(one_epoch)
    train = train.prefetch(AUTOTUNE)

    test = test.map(lambda x, y: (src.test_map(x), as_label(y)), num_parallel_calls=AUTOTUNE)
    test = test.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)

    info = DatasetInfo(
        name=name,
        num_classes=src.num_classes,
        image_shape=(src.image_size, src.image_size, 3),
        train_examples=src.train_examples,
        test_examples=src.test_examples,
        mean=src.mean,
        std=src.std,
    )
    return train, test, info
