"""Teachers: Keras applications fed the student's normalized batches (offline, weights=None)."""

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn.train import teachers
from tests.train.program import offline

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GRAY = ((0.2860,), (0.3530,))  # Fashion-MNIST, broadcast to RGB


def _student_batch(norm, size=32, seed=0):
    """Raw uint8-range RGB images (float32) and their student normalization."""
    mean, std = norm
    channels = len(mean)  # a scalar normalization means a grayscale dataset
    raw = np.random.default_rng(seed).integers(0, 256, (2, size, size, channels))
    raw = np.broadcast_to(raw, (2, size, size, 3)).astype(np.float32)
    x = (raw / 255.0 - np.array(mean)) / np.array(std)
    return raw, x.astype(np.float32)


def _preprocessed(name, raw, size=None):
    raw = tf.constant(raw)
    if size is not None:
        raw = tf.image.resize(raw, (size, size), method="bilinear")
    return teachers.APPLICATIONS[name].preprocess_input(raw)


def _squashed(name):
    return name.replace("_", "").replace("-", "").lower()


@pytest.mark.parametrize("name", teachers.APPLICATION_NAMES)
def test_registry_entries_match_their_keras_module(name):
    app = teachers.APPLICATIONS[name]
    assert teachers.is_application(name) and not teachers.is_application(name + "x")
    assert _squashed(app.constructor.__name__) == _squashed(name) == _squashed(app.keras_name)
    assert app.preprocess_input.__module__ == app.constructor.__module__
    assert app.weights_url.startswith("https://storage.googleapis.com/tensorflow/")


def test_weight_file_names_follow_tf_keras():
    # As read in tf_keras/src/applications/{resnet,efficientnet_v2,convnext}.py.
    apps = teachers.APPLICATIONS
    assert apps["resnet50"].weights_file(False) == (
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    assert apps["resnet152"].weights_file(True) == "resnet152_weights_tf_dim_ordering_tf_kernels.h5"
    assert apps["efficientnetv2_s"].weights_file(False) == "efficientnetv2-s_notop.h5"
    assert apps["convnext_base"].weights_file(True) == "convnext_base.h5"


@pytest.mark.parametrize("name", teachers.APPLICATION_NAMES)
def test_builds_with_a_new_head_at_the_student_resolution(name):
    model = teachers.build_application(
        name, num_classes=10, input_shape=(32, 32, 3), mean=IMAGENET[0], std=IMAGENET[1]
    )
    logits = model(_student_batch(IMAGENET)[1])
    assert model.name == f"teacher_{name}"
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    assert model.get_layer("fc").units == 10
    # The backbone's name is the stem of its weight files.
    assert model.layers[2].name == teachers.APPLICATIONS[name].keras_name


@pytest.mark.parametrize("name", teachers.APPLICATION_NAMES)
@pytest.mark.parametrize("norm", [IMAGENET, GRAY], ids=["rgb", "gray"])
@pytest.mark.parametrize("size", [None, 48])
def test_adapter_equals_the_applications_own_preprocessing(name, norm, size):
    raw, x = _student_batch(norm)
    adapter = teachers.ApplicationInput(name, *norm, size=size)
    np.testing.assert_allclose(adapter(x), _preprocessed(name, raw, size), rtol=1e-5, atol=1e-4)


def test_caffe_mode_is_bgr_minus_the_imagenet_mean():
    raw, x = _student_batch(IMAGENET)
    out = teachers.ApplicationInput("resnet50", *IMAGENET)(x).numpy()
    np.testing.assert_allclose(out[..., 0], raw[..., 2] - 103.939, atol=1e-3)
    np.testing.assert_allclose(out[..., 2], raw[..., 0] - 123.68, atol=1e-3)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_a_wrong_normalization_is_caught(name):
    raw, x = _student_batch(IMAGENET)
    expected = _preprocessed(name, raw)
    mean, std = IMAGENET
    for wrong in [(mean[::-1], std), (mean, std[::-1])]:
        out = teachers.ApplicationInput(name, *wrong)(x)
        assert not np.allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_adapter_computes_in_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        adapter = teachers.ApplicationInput("resnet50", *IMAGENET)
        out = adapter(tf.cast(_student_batch(IMAGENET)[1], tf.float16))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert adapter.compute_dtype == "float32" and out.dtype == tf.float32


def test_config_round_trip_through_a_keras_file(tmp_path):
    from tf_keras.src.applications import convnext  # its layers are not registered

    inputs = tf.keras.Input((32, 32, 3))
    x = teachers.ApplicationInput("efficientnetv2_s", *GRAY, size=40)(inputs)
    x = convnext.LayerScale(0.5, 4)(tf.keras.layers.Conv2D(4, 3)(x))
    x = convnext.StochasticDepth(0.1)(x)
    outputs = tf.keras.layers.Dense(3)(tf.keras.layers.GlobalAveragePooling2D()(x))
    model = tf.keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    with pytest.raises((TypeError, ValueError)):
        tf.keras.models.load_model(tmp_path / "m.keras")
    loaded = tf.keras.models.load_model(
        tmp_path / "m.keras", custom_objects=teachers.CUSTOM_OBJECTS
    )
    adapter = loaded.layers[1]
    assert isinstance(adapter, teachers.ApplicationInput)
    assert adapter.get_config() == model.layers[1].get_config()
    batch = _student_batch(GRAY)[1]
    np.testing.assert_allclose(loaded(batch), model(batch), rtol=1e-6)


class _KerasCache:
    """Stands in for Keras' weight cache: records each file asked for and each load."""

    def __init__(self, monkeypatch, path):
        from tf_keras.src.engine import training
        from tf_keras.src.utils import data_utils  # what the applications call

        self.path, self.asked, self.loaded = path, [], []
        monkeypatch.setattr(data_utils, "get_file", self.get_file)
        monkeypatch.setattr(tf.keras.utils, "get_file", self.get_file)  # what teachers calls
        monkeypatch.setattr(
            training.Model,
            "load_weights",
            lambda model, path, **_: self.loaded.append((model.name, path)),
        )

    def get_file(self, fname, origin, cache_subdir="datasets", **kwargs):
        self.asked.append((fname, origin, cache_subdir))
        return self.path


@pytest.mark.parametrize("name, num_classes", [("efficientnetv2_b0", 1000), ("resnet50", 10)])
def test_imagenet_weights_are_the_file_keras_asks_for(monkeypatch, name, num_classes):
    cache = _KerasCache(monkeypatch, "/cache/file.h5")
    app = teachers.APPLICATIONS[name]
    teacher = teachers.build_application(
        name, num_classes=num_classes, input_shape=(32, 32, 3), mean=GRAY[0], std=GRAY[1],
        weights="imagenet",
    )  # fmt: skip
    file_name = app.weights_file(include_top=num_classes == 1000)
    assert cache.asked == [(file_name, app.weights_url + file_name, "models")] * 2  # ours, Keras'
    assert cache.loaded == [(app.keras_name, "/cache/file.h5")]
    raw, x = _student_batch(GRAY)
    logits = teacher(x)
    assert logits.dtype == tf.float32 and logits.shape == (2, num_classes)
    if num_classes == 1000:  # the ImageNet head, at the native size, without softmax
        backbone = teacher.get_layer(app.keras_name)
        expected = backbone(_preprocessed(name, raw, app.size))
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
        assert backbone.layers[-1].activation is tf.keras.activations.linear


def test_missing_weights_fail_fast_with_one_line(monkeypatch, tmp_path):
    """Offline with an empty cache: one attempt to download, then one line saying where the
    file goes, before any model is built."""
    looked_up = offline(monkeypatch, tmp_path)
    built = []
    monkeypatch.setattr(
        tf.keras.applications, "EfficientNetV2S", lambda **kwargs: built.append(kwargs)
    )
    with pytest.raises(teachers.WeightsUnavailableError) as caught:
        teachers.build_application(
            "efficientnetv2_s", num_classes=10, input_shape=(32, 32, 3), mean=IMAGENET[0],
            std=IMAGENET[1], weights="imagenet",
        )  # fmt: skip
    assert looked_up == ["storage.googleapis.com"] and built == []
    message = str(caught.value)
    assert "\n" not in message
    for part in (
        "efficientnetv2-s_notop.h5",
        str(tmp_path / ".keras" / "models"),
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
        "efficientnetv2-s_notop.h5",
        "download it elsewhere and place it there",
    ):
        assert part in message


def test_errors():
    kwargs = dict(num_classes=10, input_shape=(32, 32, 3), mean=IMAGENET[0], std=IMAGENET[1])
    with pytest.raises(ValueError, match="valid names") as caught:
        teachers.build_application("resnet18", **kwargs)
    assert all(name in str(caught.value) for name in teachers.APPLICATION_NAMES)
    with pytest.raises(ValueError, match="valid names"):
        teachers.ApplicationInput("vgg16", *IMAGENET)
    with pytest.raises(ValueError, match="at least 32"):
        teachers.build_application("resnet50", size=31, **kwargs)
    with pytest.raises(ValueError, match="at least 32"):  # Fashion-MNIST's 28x28, not resized
        teachers.build_application("resnet50", **{**kwargs, "input_shape": (28, 28, 3)})
    with pytest.raises(ValueError, match="needs size 224"):
        teachers.build_application(
            "resnet50", **{**kwargs, "num_classes": 1000}, weights="imagenet", size=160
        )
    with pytest.raises(ValueError, match="1 or 3 values"):
        teachers.ApplicationInput("resnet50", (0.5, 0.5), (0.2, 0.2))
    with pytest.raises(ValueError, match="weights"):
        teachers.build_application("resnet50", weights="noisy-student", **kwargs)


def test_batch_norm_follows_the_batches_at_torchs_rate():
    model = teachers.build_application(
        "resnet50", num_classes=10, input_shape=(32, 32, 3), mean=IMAGENET[0], std=IMAGENET[1]
    )
    norms = [
        layer
        for layer in model.get_layer("resnet50").layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    assert len(norms) == 53 and {layer.momentum for layer in norms} == {0.9}
