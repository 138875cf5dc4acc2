"""Fashion-MNIST, from TFDS or from IDX files (Debian's `dataset-fashion-mnist`)."""

import gzip
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from larq_nobn.train.data.augment import pad_crop_maps
from larq_nobn.train.data.source import DatasetError, Request, Source, subset

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


def _arrays(data_dir: str | None) -> tuple[np.ndarray, ...]:
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


def source(request: Request) -> Source:
    """28x28 zero-padded to 32x32 (then resized if asked), 4-pixel crops and flips."""
    x_train, y_train, x_test, y_test = _arrays(request.data_dir)
    x_train, y_train = subset(x_train, y_train, request.train_subset)
    size = request.image_size or 32
    pad = [[0, 0], [2, 2], [2, 2], [0, 0]]
    x_train, x_test = np.pad(x_train, pad), np.pad(x_test, pad)  # 28x28 -> 32x32, zeros
    mean, std = (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,)
    maps = pad_crop_maps(size, mean, std)
    return Source.from_arrays(
        (x_train, y_train), (x_test, y_test), maps, 10, size, mean=mean, std=std
    )
