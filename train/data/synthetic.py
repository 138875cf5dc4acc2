"""Synthetic data: standard normal images and uniform labels, for smoke tests."""

import numpy as np
import tensorflow as tf

from larq_nobn.train.data.source import Request, Source, check_positive


def source(request: Request) -> Source:
    """`request.synthetic_examples` train and a quarter as many test examples (at least
    one), `request.num_classes` classes (10 by default), drawn from `request.seed`; with
    `request.train_subset`, the first that many train examples only."""
    examples = request.synthetic_examples
    check_positive("synthetic_examples", examples)
    size, classes = request.image_size or 32, request.num_classes or 10
    rng = np.random.default_rng(request.seed)

    def make(n: int, keep: int | None = None) -> tf.data.Dataset:
        images = rng.standard_normal((n, size, size, 3), dtype=np.float32)
        labels = rng.integers(0, classes, size=n, dtype=np.int32)
        return tf.data.Dataset.from_tensor_slices((images[:keep], labels[:keep]))

    test_examples = max(1, examples // 4)
    train_examples = min(examples, request.train_subset or examples)
    return Source(
        train=make(examples, train_examples),
        test=make(test_examples),
        train_map=lambda image, seed: image,
        test_map=lambda image: image,
        num_classes=classes,
        image_size=size,
        mean=(0.5,),  # standard normal images read as normalized RGB around mid-gray
        std=(0.25,),
        train_examples=train_examples,
        test_examples=test_examples,
    )
