"""Tests for train/data/: offline datasets, TFDS pipelines on mock data, augmentation, seeding."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn.train import data
from tests.train.program import mock_data


def _raw_tfds(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, as_supervised=True, download=False)
    images, labels = zip(*tfds.as_numpy(ds), strict=True)
    return np.stack(images), np.array(labels)


def _collect(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _is_crop_of_padded(
    image: np.ndarray, raws: np.ndarray, pad: int, flips: bool, mode: str = "constant"
) -> bool:
    """True if ``image`` equals a window of some raw image padded by ``np.pad(mode=mode)``
    (zeros, or "reflect": mirrored without repeating the border), optionally mirrored."""
    h, w = image.shape[:2]
    for raw in raws:
        padded = np.pad(raw, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
        for dy in range(padded.shape[0] - h + 1):
            for dx in range(padded.shape[1] - w + 1):
                window = padded[dy : dy + h, dx : dx + w]
                if np.allclose(window, image, atol=1e-4):
                    return True
                if flips and np.allclose(window[:, ::-1], image, atol=1e-4):
                    return True
    return False


# ----------------------------------------------------------------------------- arguments


def test_unknown_name_lists_valid_names():
    with pytest.raises(data.DatasetError) as err:
        data.load("mnist3d", global_batch_size=8)
    msg = str(err.value)
    assert "mnist3d" in msg and "\n" not in msg
    for name in data.DATASET_NAMES:
        assert name in msg


@pytest.mark.parametrize("batch", [0, -4])
def test_non_positive_batch_size(batch):
    with pytest.raises(ValueError):
        data.load("synthetic", global_batch_size=batch)


# ----------------------------------------------------------------------------- digits


def test_digits_split_shapes_and_normalization():
    train, test, info = data.load("digits", global_batch_size=64)
    assert info == data.DatasetInfo("digits", 10, (32, 32, 3), 1437, 360, info.mean, info.std)
    assert info.train_examples + info.test_examples == 1797

    x_test, y_test = _collect(test)
    assert x_test.shape == (360, 32, 32, 3) and x_test.dtype == np.float32
    assert y_test.dtype == np.int32
    assert np.bincount(y_test, minlength=10).min() >= 35  # stratified: 36 per class (+-1)
    np.testing.assert_array_equal(x_test[..., 0], x_test[..., 2])  # grey replicated to RGB

    x_train, y_train = _collect(train)
    assert x_train.shape == (1437 // 64 * 64, 32, 32, 3)  # drop_remainder
    assert set(np.unique(y_train)) == set(range(10))
    # Normalized with the train split's own statistics (translation adds a little background).
    assert abs(x_train.mean()) < 0.1 and abs(x_train.std() - 1.0) < 0.1
    # Digits are normalized from [0, 1]: background (0) is the minimum value everywhere,
    # and info's statistics undo the normalization.
    assert np.isclose(x_train.min(), x_test.min(), atol=1e-5)
    unit = x_test * info.std[0] + info.mean[0]
    assert abs(unit.min()) < 1e-5 and 0.95 < unit.max() < 1 + 1e-5


def test_digits_image_size_and_translation_only():
    _, test, info = data.load("digits", global_batch_size=16, image_size=16, train_subset=16)
    assert info.image_shape == (16, 16, 3) and info.train_examples == 16
    assert next(iter(test))[0].shape == (16, 16, 16, 3)


def test_digits_augmentation_is_translation_without_flip():
    src = data.digits.source(data.Request("digits"))
    raw, _ = next(iter(src.train))  # un-augmented [0, 1] image, (32, 32, 1)
    raw = raw.numpy()
    assert not np.allclose(raw, raw[:, ::-1])  # so a mirrored copy would be detected
    normalized = src.test_map(raw).numpy()[..., 0]
    scale = np.ptp(raw) / np.ptp(normalized)
    shift = raw.min() - normalized.min() * scale
    outputs = [src.train_map(raw, tf.constant([i, 1], tf.int64)).numpy() for i in range(12)]
    for out in outputs:
        assert out.shape == (32, 32, 3)
        unit = out[..., :1] * scale + shift
        assert _is_crop_of_padded(unit, raw[None], 2, flips=False)
    assert len({o.tobytes() for o in outputs}) > 3


def _images(train) -> list[np.ndarray]:
    return [images.numpy() for images, _ in train]


def test_same_seed_same_first_batch_and_epochs_differ():
    first = [next(iter(data.load("digits", global_batch_size=32, seed=s)[0])) for s in (7, 7, 8)]
    np.testing.assert_array_equal(first[0][0], first[1][0])
    np.testing.assert_array_equal(first[0][1], first[1][1])
    assert not np.array_equal(first[0][0], first[2][0])

    train, _, info = data.load("digits", global_batch_size=32, seed=7, epochs=2)
    steps = info.train_examples // 32
    batches = _images(train)
    assert len(batches) == 2 * steps  # two epochs, one after the other
    np.testing.assert_array_equal(batches[0], first[0][0])
    assert not np.array_equal(batches[0], batches[steps])  # reshuffled / re-augmented


def test_an_epochs_batches_depend_on_seed_stream_and_epoch_only():
    """Whatever was iterated before, in this process or another: a dataset that starts at
    epoch 2 yields epoch 2 of one that starts at 0; every iteration yields the same
    batches; another stream (the program's stage) has other batches."""
    train, _, info = data.load("digits", global_batch_size=32, seed=7, epochs=3)
    steps = info.train_examples // 32
    whole = _images(train)
    assert len(whole) == 3 * steps
    again = _images(train)  # a second iterator of the same dataset
    assert all(np.array_equal(a, b) for a, b in zip(whole, again, strict=True))
    later, _, _ = data.load("digits", global_batch_size=32, seed=7, first_epoch=2)
    later = _images(later)
    assert len(later) == steps
    assert all(np.array_equal(a, b) for a, b in zip(later, whole[2 * steps :], strict=True))
    other_stream, _, _ = data.load("digits", global_batch_size=32, seed=7, stream=2)
    assert not np.array_equal(next(iter(other_stream))[0].numpy(), whole[0])
    # Nor on the process's global seed (the program sets one per stage), 0 included.
    for global_seed in (0, 12):
        tf.keras.utils.set_random_seed(global_seed)
        reseeded, _, _ = data.load("digits", global_batch_size=32, seed=7, epochs=3)
        assert all(np.array_equal(a, b) for a, b in zip(_images(reseeded), whole, strict=True))


@pytest.mark.parametrize("first_epoch, epochs", [(-1, 1), (0, 0)])
def test_bad_epoch_range(first_epoch, epochs):
    with pytest.raises(ValueError, match="epoch"):
        data.load("synthetic", global_batch_size=8, first_epoch=first_epoch, epochs=epochs)


# ----------------------------------------------------------------------------- distribution


def test_input_context_halves_batch_and_shards_train():
    seen = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        train, test, info = data.load(
            "synthetic", global_batch_size=16, synthetic_examples=64, input_context=ctx
        )
        x, y = _collect(train)
        assert x.shape == (32, 32, 32, 3) and next(iter(train))[0].shape[0] == 8
        assert next(iter(test))[0].shape[0] == 8
        assert info.train_examples == 64
        seen.append({img.tobytes() for img in x})
    assert len(seen[0]) == len(seen[1]) == 32 and not seen[0] & seen[1]


def test_input_context_digits_per_replica_batch():
    ctx = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2
    )
    train, _, _ = data.load("digits", global_batch_size=64, input_context=ctx)
    assert next(iter(train))[0].shape == (32, 32, 32, 3)


def test_synthetic():
    train, test, info = data.load(
        "synthetic", global_batch_size=8, image_size=12, num_classes=3, synthetic_examples=40
    )
    assert info == data.DatasetInfo("synthetic", 3, (12, 12, 3), 40, 10, (0.5,), (0.25,))
    x, y = _collect(train)
    assert x.shape == (40, 12, 12, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert y.min() >= 0 and y.max() < 3
    assert _collect(test)[0].shape == (10, 12, 12, 3)


def test_synthetic_train_subset_trains_on_fewer_and_keeps_the_test_split():
    train, test, info = data.load(
        "synthetic", global_batch_size=4, synthetic_examples=40, train_subset=8
    )
    _, full_test, full_info = data.load("synthetic", global_batch_size=4, synthetic_examples=40)
    assert (info.train_examples, full_info.train_examples) == (8, 40)
    assert _collect(train)[0].shape[0] == 8  # two batches of 4 per epoch
    np.testing.assert_array_equal(_collect(test)[0], _collect(full_test)[0])


# ----------------------------------------------------------------------------- Fashion-MNIST


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(1, 256, (20, 28, 28)),
        "train_labels": np.arange(20) % 10,
        "test_images": rng.integers(1, 256, (10, 28, 28)),
        "test_labels": (np.arange(10) * 3) % 10,
    }
    for i, (key, base) in enumerate(data.FASHION_MNIST_FILES.items()):
        _write_idx(tmp_path / base, arrays[key], compress=i % 2 == 0)
    return tmp_path, arrays


def test_fashion_mnist_from_idx(fake_fashion):
    path, arrays = fake_fashion
    train, test, info = data.load("fashion_mnist", global_batch_size=5, data_dir=str(path))
    stats = (data.FASHION_MNIST_MEAN,), (data.FASHION_MNIST_STD,)
    assert info == data.DatasetInfo("fashion_mnist", 10, (32, 32, 3), 20, 10, *stats)

    x_test, y_test = _collect(test)
    assert x_test.shape == (10, 32, 32, 3) and x_test.dtype == np.float32
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    unit = x_test * data.FASHION_MNIST_STD + data.FASHION_MNIST_MEAN
    expected = np.pad(arrays["test_images"] / 255.0, ((0, 0), (2, 2), (2, 2)))
    np.testing.assert_allclose(unit, np.repeat(expected[..., None], 3, axis=-1), atol=1e-5)

    x_train, y_train = _collect(train)
    assert x_train.shape == (20, 32, 32, 3)
    assert sorted(y_train) == sorted(arrays["train_labels"])
    raw = np.pad(arrays["train_images"] / 255.0, ((0, 0), (2, 2), (2, 2)))[..., None]
    unit = (x_train * data.FASHION_MNIST_STD + data.FASHION_MNIST_MEAN)[..., :1]
    for image, label in zip(unit[:6], y_train[:6], strict=True):
        candidates = raw[arrays["train_labels"] == label]
        assert _is_crop_of_padded(image, candidates, 4, flips=True)


def test_fashion_mnist_subset_and_size(fake_fashion):
    path, _ = fake_fashion
    train, test, info = data.load(
        "fashion_mnist", global_batch_size=4, data_dir=str(path), train_subset=8, image_size=24
    )
    assert info.train_examples == 8 and info.image_shape == (24, 24, 3)
    assert _collect(train)[0].shape == (8, 24, 24, 3)
    assert _collect(test)[0].shape == (10, 24, 24, 3)


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian"))
    with pytest.raises(data.DatasetError) as err:
        data.load("fashion_mnist", global_batch_size=4, data_dir=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "debian" in msg and "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "tfds build fashion_mnist" in msg


def test_read_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(data.DatasetError):
        data.read_idx(bad)


# ----------------------------------------------------------------------------- TFDS (mocked)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_mock(name):
    mean, std = (np.array(v, np.float32) for v in data.CIFAR_STATS[name])
    with mock_data(num_examples=8):
        raw_test, raw_test_labels = _raw_tfds(name, "test")
        raw_train, _ = _raw_tfds(name, "train")
        train, test, info = data.load(name, global_batch_size=4, seed=1)
        x_test, y_test = _collect(test)
        x_train, y_train = _collect(train)
        first_again = next(iter(data.load(name, global_batch_size=4, seed=1)[0]))[0]
        other_seed = next(iter(data.load(name, global_batch_size=4, seed=2)[0]))[0]

    classes = 100 if name == "cifar100" else 10
    assert info == data.DatasetInfo(name, classes, (32, 32, 3), 8, 8, *data.CIFAR_STATS[name])
    assert x_test.shape == x_train.shape == (8, 32, 32, 3)
    assert x_test.dtype == x_train.dtype == np.float32 and y_test.dtype == y_train.dtype == np.int32
    assert 0 <= y_train.min() and y_train.max() < classes
    # Test split: per-channel normalization only, same order as TFDS.
    np.testing.assert_array_equal(y_test, raw_test_labels)
    np.testing.assert_allclose(x_test, (raw_test / 255.0 - mean) / std, atol=1e-5)
    # Train split: every image is a (possibly mirrored) 32x32 window of the 4-px zero-padded raw.
    unit = x_train * std + mean
    assert all(_is_crop_of_padded(img, raw_train / 255.0, 4, flips=True) for img in unit)
    raws = raw_train / 255.0
    assert any(not any(np.allclose(img, r, atol=1e-4) for r in raws) for img in unit)
    np.testing.assert_array_equal(first_again, x_train[:4])
    assert not np.array_equal(other_seed, x_train[:4])


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_cifar_with_ab_bnns_preprocessing():
    """A&B BNN's CIFAR transforms: ImageNet's mean and std, crops of the reflect-padded image."""
    mean, std = (np.array(v, np.float32) for v in IMAGENET_STATS)
    with mock_data(num_examples=8):
        raw_test, _ = _raw_tfds("cifar10", "test")
        raw_train, _ = _raw_tfds("cifar10", "train")
        train, test, info = data.load(
            "cifar10",
            global_batch_size=4,
            seed=1,
            normalization="imagenet",
            padding_mode="reflect",
        )
        x_test, _ = _collect(test)
        x_train, _ = _collect(train)
    assert (info.mean, info.std) == IMAGENET_STATS
    np.testing.assert_allclose(x_test, (raw_test / 255.0 - mean) / std, atol=1e-5)
    unit, raws = x_train * std + mean, raw_train / 255.0
    assert all(_is_crop_of_padded(img, raws, 4, flips=True, mode="reflect") for img in unit)
    # Some crop reaches into the border, where zeros would differ.
    assert not all(_is_crop_of_padded(img, raws, 4, flips=True) for img in unit)
    with pytest.raises(ValueError, match="`normalization` must be one of"):
        data.load("cifar10", global_batch_size=4, normalization="cifar")
    with pytest.raises(ValueError, match="`padding_mode` must be one of"):
        data.load("cifar10", global_batch_size=4, padding_mode="edge")


@pytest.mark.parametrize(
    "model, stats", [("reactnet18_ab", IMAGENET_STATS), ("reactnet18_nobn", CIFAR10_STATS)]
)
def test_the_program_feeds_cifar_as_the_models_recipe_says(model, stats):
    """What a converted A&B CIFAR-10 model was trained on (ImageNet's statistics), and the
    paper's models CIFAR's own."""
    from larq_nobn.train.config import Config
    from larq_nobn.train.feed import Feed

    config = Config(model=model, dataset="cifar10", batch_size=4).resolved()
    with mock_data(num_examples=8):
        raw_test, _ = _raw_tfds("cifar10", "test")
        feed = Feed(config)
        x_test, _ = _collect(feed.test_ds)
    assert (feed.info.mean, feed.info.std) == stats
    mean, std = (np.array(v, np.float32) for v in stats)
    np.testing.assert_allclose(x_test, (raw_test / 255.0 - mean) / std, atol=1e-5)


def test_imagenet_mock():
    mean, std = np.array(data.IMAGENET_MEAN), np.array(data.IMAGENET_STD)
    with mock_data(num_examples=6):
        train, test, info = data.load("imagenet2012", global_batch_size=3, image_size=64, seed=0)
        x_train, y_train = _collect(train)
        x_test, y_test = _collect(test)
    stats = data.IMAGENET_MEAN, data.IMAGENET_STD
    assert info == data.DatasetInfo("imagenet2012", 1000, (64, 64, 3), 6, 6, *stats)
    assert x_train.shape == x_test.shape == (6, 64, 64, 3)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0 <= y_test.min() and y_test.max() < 1000
    unit_test = x_test * std + mean
    assert unit_test.min() >= -1e-4 and unit_test.max() <= 1 + 1e-4
    # Train images are [0, 1] crops plus a lighting offset of a few hundredths at most.
    unit_train = x_train * std + mean
    assert unit_train.min() > -0.2 and unit_train.max() < 1.2


def test_tfds_missing_data_message(tmp_path):
    for name in ("cifar10", "imagenet2012"):
        with pytest.raises(data.DatasetError) as err:
            data.load(name, global_batch_size=4, data_dir=str(tmp_path))
        msg = str(err.value)
        assert name in msg and str(tmp_path) in msg and "\n" not in msg
        assert "tfds build" in msg
    assert "manual_dir" in msg


# ----------------------------------------------------------------------------- ImageNet ops


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """uint8 image whose channels encode row and column position."""
    rows = np.repeat(np.linspace(0, 255, h)[:, None], w, axis=1)
    cols = np.repeat(np.linspace(0, 255, w)[None, :], h, axis=0)
    return np.stack([rows, cols, np.zeros_like(rows)], -1).round().astype(np.uint8)


@pytest.mark.parametrize("encode", [tf.io.encode_png, tf.io.encode_jpeg])
def test_random_resized_crop_scale_and_ratio(encode):
    encoded = encode(_coordinate_image(120, 120))
    areas = []
    for i in range(16):
        out = data.decode_random_resized_crop(encoded, 32, tf.constant([i, 5])).numpy()
        assert out.shape == (32, 32, 3) and out.min() >= 0 and out.max() <= 1
        span_h = np.ptp(out[..., 0]) * 120 / 119 + 1 / 120
        span_w = np.ptp(out[..., 1]) * 120 / 119 + 1 / 120
        areas.append(span_h * span_w)
        assert span_h * span_w > 0.08 - 0.03  # JPEG / resize tolerance
        assert 3 / 4 - 0.15 < span_w / span_h < 4 / 3 + 0.15
    assert max(areas) - min(areas) > 0.1  # the crop really is random


def test_center_crop_resizes_shorter_side():
    encoded = tf.io.encode_png(_coordinate_image(60, 120))
    out = data.decode_center_crop(encoded, 56).numpy()
    assert out.shape == (56, 56, 3)
    # Shorter side -> 64 (= 56 * 256 / 224): the crop keeps 56/64 of the rows, centred.
    assert abs(np.ptp(out[..., 0]) - 56 / 64) < 0.05
    assert abs(out[..., 1].mean() - 0.5) < 0.02 and abs(out[..., 0].mean() - 0.5) < 0.02


def test_lighting_noise_is_a_bounded_per_channel_shift():
    image = tf.random.stateless_uniform([8, 8, 3], seed=[1, 2])
    eigvec = np.array(data.LIGHTING_EIGVEC)
    eigval = np.array(data.LIGHTING_EIGVAL)
    shifts = []
    for i in range(200):
        delta = (data.lighting(image, tf.constant([i, 0])) - image).numpy()
        np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape), atol=1e-6)
        shifts.append(delta[0, 0])
    shifts = np.array(shifts)
    # alpha ~ N(0, 0.1): each channel's shift has std 0.1 * ||eigvec[i] * eigval||.
    expected_std = 0.1 * np.sqrt(((eigvec * eigval) ** 2).sum(axis=1))
    np.testing.assert_allclose(shifts.std(axis=0), expected_std, rtol=0.25)
    assert np.abs(shifts).max() < 5 * 0.1 * np.abs(eigvec * eigval).sum(axis=1).max()
    assert np.abs(shifts).max() > 0
    same = data.lighting(image, tf.constant([3, 0])) - data.lighting(image, tf.constant([3, 0]))
    assert not np.any(same.numpy())
