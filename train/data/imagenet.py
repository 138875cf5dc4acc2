"""ImageNet (ILSVRC 2012) from TFDS: random-resized crops, flips and lighting noise."""

import tensorflow as tf

from larq_nobn.train.data.augment import normalize, to_unit
from larq_nobn.train.data.source import Image, Request, Seed, Source, tfds_load, train_split

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
_IMAGENET_SHUFFLE_BUFFER = 10_000


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
    crop = tf.image.resize(to_unit(crop), [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(crop, 0.0, 1.0)


def decode_center_crop(encoded: tf.Tensor, size: int) -> Image:
    """Decode, resize the shorter side to ``size * 256 / 224``, center-crop ``size``."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = to_unit(image)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.round(size * 256 / 224)
    new_shape = tf.cast(tf.round(shape * short / tf.reduce_min(shape)), tf.int32)
    new_shape = tf.maximum(new_shape, size)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    image = tf.image.crop_to_bounding_box(image, top, left, size, size)
    return tf.clip_by_value(image, 0.0, 1.0)


def source(request: Request) -> Source:
    """Train records read in one seeded file order (sharded by `request.input_context`),
    not cached, shuffled per epoch in a 10,000-example buffer; validation as the test split."""
    import tensorflow_datasets as tfds

    skip = {"image": tfds.decode.SkipDecoding()}  # decode (and crop) inside our own map
    train = tfds_load(
        "imagenet2012",
        train_split(request.train_subset),
        request.data_dir,
        shuffle_files=True,
        decoders=skip,
        # A fixed file order (a function of the seed): reshuffling files per iteration would
        # make an epoch's data depend on the iterations before it in this process. The
        # per-epoch element shuffle reorders within its buffer.
        read_config=tfds.ReadConfig(
            shuffle_seed=request.seed,
            shuffle_reshuffle_each_iteration=False,
            input_context=request.input_context,
        ),
    )
    test = tfds_load("imagenet2012", "validation", request.data_dir, decoders=skip)
    size = request.image_size or 224

    def train_map(encoded: tf.Tensor, seed: Seed) -> Image:
        crop_seed, flip_seed, light_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        image = decode_random_resized_crop(encoded, size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        image = lighting(image, light_seed)
        return normalize(image, IMAGENET_MEAN, IMAGENET_STD)

    def test_map(encoded: tf.Tensor) -> Image:
        return normalize(decode_center_crop(encoded, size), IMAGENET_MEAN, IMAGENET_STD)

    return Source.from_datasets(
        train,
        test,
        train_map=train_map,
        test_map=test_map,
        num_classes=1000,
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        cache=False,
        shuffle_buffer=_IMAGENET_SHUFFLE_BUFFER,
        train_sharded=request.input_context is not None,
    )
