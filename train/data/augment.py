"""Per-example image transforms shared by the dataset families."""

from collections.abc import Callable

import tensorflow as tf

from larq_nobn.train.data.source import Image, Seed


def to_unit(image: Image) -> Image:
    """uint8 [0, 255] (or float [0, 1]) -> float32 [0, 1]."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def normalize(image: Image, mean: tuple[float, ...], std: tuple[float, ...]) -> Image:
    """(image - mean) / std with per-channel (or scalar) statistics."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def to_rgb(image: Image) -> Image:
    """Replicate a single-channel image to 3 channels (no-op for RGB)."""
    if image.shape[-1] == 1:
        return tf.tile(image, [1, 1, 3])
    return image


def pad_crop(image: Image, padding: int, size: int, seed: Seed, mode: str = "constant") -> Image:
    """Pad ``padding`` pixels on each side, then take a random ``size`` x ``size`` crop.

    ``mode`` is `tf.pad`'s: "constant" pads with zeros, "reflect" mirrors the image without
    repeating its border (torchvision's ``Pad(padding_mode="reflect")``).
    """
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode=mode)
    return tf.image.stateless_random_crop(padded, [size, size, image.shape[-1]], seed=seed)


def pad_crop_maps(
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    padding: int = 4,
    flip: bool = True,
    raw_size: int = 32,
    padding_mode: str = "constant",
) -> tuple[Callable[[Image, Seed], Image], Callable[[Image], Image]]:
    """(train_map, test_map) of small images: random crops of the padded image.

    Both bring the raw image to [0, 1], resize it from ``raw_size`` to ``size`` (if they
    differ) and normalize it, grayscale repeated to RGB. The train map first crops a random
    ``size`` window of the image padded by ``padding`` and, with ``flip``, mirrors it with
    probability 1/2 (its seed split in two: crop, flip).

    Args:
        size: the output's height and width.
        mean: the normalization's mean, per channel or one for all.
        std: its standard deviation, likewise.
        padding: pixels on each side before the random crop.
        flip: random horizontal flips (not for digits, which are not mirror-symmetric).
        raw_size: the raw images' height and width.
        padding_mode: "constant" (zeros) or "reflect" (see `pad_crop`).

    Returns:
        The train map (image, seed) -> image and the test map image -> image.
    """

    def prepare(image: Image) -> Image:
        image = to_unit(image)
        if size != raw_size:
            image = tf.image.resize(image, [size, size], method="bilinear")
        return image

    def train_map(image: Image, seed: Seed) -> Image:
        crop_seed = seed
        if flip:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        image = pad_crop(prepare(image), padding, size, crop_seed, padding_mode)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return normalize(to_rgb(image), mean, std)

    def test_map(image: Image) -> Image:
        return normalize(to_rgb(prepare(image)), mean, std)

    return train_map, test_map
