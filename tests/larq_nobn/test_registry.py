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


def test_the_registries_hold_what_the_modules_list():
    assert zoo.MODEL_NAMES == zoo.MODELS.names()
    assert teachers.APPLICATION_NAMES == catalog.APPLICATIONS.names()
    assert set(teachers.APPLICATIONS) == set(catalog.APPLICATIONS)
    assert data.DATASET_NAMES == catalog.DATASETS.names()
    for name in catalog.DATASETS:
        assert callable(catalog.DATASETS.get(name))


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
