"""Tests for the one registration style of names (larq_nobn/registry.py) and its users."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from larq_nobn import zoo
from larq_nobn.registry import Registry, UnknownNameError
from larq_nobn.train import catalog, data, teachers

ROOT = Path(__file__).resolve().parents[2]


def test_register_get_names_and_lazy_targets():
    registry = Registry("thing")
    registry.register("join", "os.path:join")
    registry.register("split", os.path.split)

    @registry.register("tiny", size=1)
    def tiny(size, scale=1):
        return size * scale

    assert registry.names() == ("join", "split", "tiny")
    assert "join" in registry and "nope" not in registry and 3 not in registry
    assert registry.get("join") is os.path.join
    assert registry.get("split") is os.path.split
    assert registry.get("tiny")(scale=3) == 3
    assert tiny(2) == 2  # the decorator returns what it decorates
    with pytest.raises(ValueError, match="registered already"):
        registry.register("join", "os.path:join")


def test_an_unknown_name_is_one_error_with_one_message():
    registry = Registry("thing")
    registry.register("a", 1)
    registry.register("b", 2)
    with pytest.raises(UnknownNameError) as caught:
        registry.get("c")
    assert str(caught.value) == "unknown thing 'c'; valid names: a, b"
    assert isinstance(caught.value, ValueError)
    assert (caught.value.kind, caught.value.name, caught.value.valid) == ("thing", "c", ("a", "b"))


@pytest.mark.parametrize(
    "look_up, kind",
    [
        (lambda: zoo.get_model("resnet50"), "model"),
        (lambda: zoo.backbone("resnet50"), "model"),
        (lambda: teachers.get_application("resnet18"), "application"),
        (lambda: data.load("mnist3d", global_batch_size=8), "dataset"),
    ],
    ids=["get_model", "backbone", "application", "dataset"],
)
def test_every_kind_of_name_raises_unknown_name_error(look_up, kind):
    with pytest.raises(UnknownNameError, match=f"^unknown {kind} '.*'; valid names: "):
        look_up()


def test_an_unknown_dataset_is_also_a_dataset_error():
    with pytest.raises(data.DatasetError):
        data.load("mnist3d", global_batch_size=8)


def test_every_dataset_name_stands_for_a_loader_of_the_data_package():
    # The registry's targets are strings, resolved on use: a misspelt one fails only here.
    assert set(data.DATASET_NAMES) == {
        "digits",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "imagenet2012",
        "synthetic",
    }
    for name in data.DATASET_NAMES:
        loader = catalog.DATASETS.get(name)
        assert callable(loader) and loader.__module__.startswith("larq_nobn.train.data."), name


def test_names_are_listed_without_tensorflow():
    code = (
        "import sys\n"
        "from larq_nobn import zoo\n"
        "from larq_nobn.train import catalog, options\n"
        "assert zoo.MODELS.names() and catalog.APPLICATIONS.names()\n"
        "assert catalog.DATASETS.names() and options.OPTIONS\n"
        "print(zoo.backbone('reactnet18_nobn'), 'tensorflow' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["reactnet18", "False"]


# ----------------------------------------------------------------------------- Keras classes

# The names older versions registered these classes under (larq's bare class names, and
# the training program's own package), by the name they have now.
OLD_NAMES = {
    "larq_nobn>ScaledWSConv2D": "ScaledWSConv2D",
    "larq_nobn>ScaledWSQuantConv2D": "ScaledWSQuantConv2D",
    "larq_nobn>LearnableBias": "LearnableBias",
    "larq_nobn>MagnitudeAwareSteSign": "MagnitudeAwareSteSign",
    "larq_nobn>WeightStandardization": "WeightStandardization",
    "larq_nobn>LinearDecay": "larq_nobn_train>LinearDecay",
    "larq_nobn>SparseSmoothedCrossEntropy": "larq_nobn_train>SparseSmoothedCrossEntropy",
}


def _registered_classes() -> dict:
    """Each registered name and the class it must stand for."""
    import larq_nobn
    from larq_nobn.train import recipe

    return {
        "larq_nobn>ScaledWSConv2D": larq_nobn.ScaledWSConv2D,
        "larq_nobn>ScaledWSQuantConv2D": larq_nobn.ScaledWSQuantConv2D,
        "larq_nobn>LearnableBias": larq_nobn.LearnableBias,
        "larq_nobn>MagnitudeAwareSteSign": larq_nobn.MagnitudeAwareSteSign,
        "larq_nobn>WeightStandardization": larq_nobn.WeightStandardization,
        "larq_nobn>LinearDecay": recipe.LinearDecay,
        "larq_nobn>SparseSmoothedCrossEntropy": recipe.SparseSmoothedCrossEntropy,
        "larq_nobn>AdaptiveGradientClipping": larq_nobn.AdaptiveGradientClipping,
        "larq_nobn>TorchAdam": larq_nobn.TorchAdam,
        "larq_nobn>QuantConv2D": larq_nobn.QuantConv2D,
        "larq_nobn>ApplicationInput": teachers.ApplicationInput,
    }


def _old_style_model():
    import larq as lq
    import tensorflow as tf

    import larq_nobn
    from larq_nobn.train import recipe

    inputs = tf.keras.Input((8, 8, 3))
    x = larq_nobn.ScaledWSConv2D(4, 3, name="ws")(inputs)
    x = larq_nobn.LearnableBias(name="bias")(x)
    x = larq_nobn.ScaledWSQuantConv2D(
        4, 3, input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_ste_sign"
    )(x)
    x = lq.layers.QuantConv2D(4, 1, kernel_constraint="weight_standardization")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(3, name="fc")(x))
    model.compile(optimizer=recipe.optimizer(1e-3, 10, 0.02), loss=recipe.loss("ls", 3))
    return model


def test_every_keras_class_is_registered_in_one_package():
    import tensorflow as tf

    for name, cls in _registered_classes().items():
        assert tf.keras.utils.get_registered_object(name) is cls, name
        assert tf.keras.utils.get_registered_name(cls) == name
        if name in OLD_NAMES:
            assert tf.keras.utils.get_registered_object(OLD_NAMES[name]) is cls, name


def test_models_saved_under_the_old_names_still_load(tmp_path):
    """A `.keras` file as the older versions wrote it (its classes under their old
    registered names) loads without `custom_objects`, optimizer and loss included."""
    import json
    import zipfile

    import numpy as np
    import tensorflow as tf

    model = _old_style_model()
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    model.fit(x, np.arange(4) % 3, epochs=1, verbose=0)
    new = str(tmp_path / "new.keras")
    model.save(new)
    old = str(tmp_path / "old.keras")
    with zipfile.ZipFile(new) as source, zipfile.ZipFile(old, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "config.json":
                text = content.decode()
                for name, old_name in OLD_NAMES.items():
                    assert json.dumps(name) in text, name  # the file names every class
                    text = text.replace(json.dumps(name), json.dumps(old_name))
                content = text.encode()
            target.writestr(item, content)

    loaded = tf.keras.models.load_model(old)  # no custom_objects
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert type(loaded.optimizer.inner_optimizer._learning_rate).__name__ == "LinearDecay"
    assert type(loaded.loss).__name__ == "SparseSmoothedCrossEntropy"
    assert int(loaded.optimizer.iterations) == 1
