"""scikit-learn's digits: 1,797 real 8x8 scans, offline, upsampled (32x32 by default)."""

import numpy as np
import tensorflow as tf

from larq_nobn.train.data.augment import pad_crop_maps
from larq_nobn.train.data.source import _SPLIT_SEED, Request, Source, subset

DIGITS_TEST_EXAMPLES = 360


def source(request: Request) -> Source:
    """A stratified split (360 test images), normalized with the train split's statistics;
    translation (2-pixel crops) as the only augmentation."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_EXAMPLES, stratify=labels, random_state=_SPLIT_SEED
    )
    x_train, y_train = subset(x_train, y_train, request.train_subset)
    size = request.image_size or 32

    def upsample(x: np.ndarray) -> np.ndarray:
        return tf.image.resize(x, [size, size], method="bilinear").numpy()

    x_train, x_test = upsample(x_train), upsample(x_test)
    mean, std = (float(x_train.mean()),), (float(x_train.std()),)
    # Translation only: digits are not mirror-symmetric.
    maps = pad_crop_maps(size, mean, std, padding=2, flip=False, raw_size=size)
    return Source.from_arrays(
        (x_train, y_train), (x_test, y_test), maps, 10, size, mean=mean, std=std
    )
