"""The installed `larq-nobn-convert` command (train/convert.py), run as a subprocess: a
checkpoint saved as A&B BNN released theirs becomes the zoo model `zoo.from_torch` loads,
and every bad input is one line on stderr with exit code 2."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch

import larq_nobn
from larq_nobn import export, zoo
from larq_nobn.train import convert as convert_command
from tests.train.program import SUBPROCESS_TIMEOUT, program_env
from tests.zoo import ab_torch_models

COMMAND = os.path.join(os.path.dirname(sys.executable), "larq-nobn-convert")
# Stage 2 ReActNet-18: sixteen 3x3 convolutions of binary inputs and weights (its three
# 1x1 downsamples have binary weights but real inputs: float convolutions for the engine).
BINARY_CONVOLUTIONS = 16


def convert(*args, cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMMAND, *map(str, args)],
        cwd=cwd,
        env=program_env(**env),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A random A&B ReActNet-18 (CIFAR stem, 10 classes), saved as their released files."""
    directory = tmp_path_factory.mktemp("released")
    net = ab_torch_models.build("reactnet18", 2, 10, "cifar", seed=5)
    path = directory / "cifar10_reactnet18_step2.h5"
    ab_torch_models.save_released(net, path)
    return path


@pytest.mark.slow(60)
def test_a_released_file_becomes_the_keras_model_and_a_flatbuffer(released, tmp_path):
    result = convert(released, "--tflite", "model.tflite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reactnet18_ab" in result.stdout and "ImageNet's mean" in result.stdout
    for name in larq_nobn.__all__:  # registers the Keras classes before the file is read
        getattr(larq_nobn, name)
    # --out by default: the checkpoint's name, here.
    saved = tf.keras.models.load_model(tmp_path / "cifar10_reactnet18_step2.keras")
    assert saved.name == "reactnet18_ab" and saved.input_shape == (None, 32, 32, 3)
    loaded = zoo.from_torch(released, input_shape=(32, 32, 3))
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        saved(images, training=False).numpy(), loaded(images, training=False).numpy()
    )
    flatbuffer = (tmp_path / "model.tflite").read_bytes()
    assert export.op_counts(flatbuffer)["LceBconv2d"] == BINARY_CONVOLUTIONS


def _shadow(tmp_path, module: str) -> str:
    """A directory whose `module` fails to import, as an environment without it."""
    package = tmp_path / "shadow" / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(f"raise ImportError({f'No module named {module}'!r})\n")
    return str(tmp_path / "shadow")


def test_bad_inputs_are_one_line_each(released, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hdf5 = tmp_path / "weights.h5"
    zoo.get_model("reactnet18_ab", stem="cifar", input_shape=(8, 8, 3)).save_weights(hdf5)
    torch.save({"features.weight": torch.zeros(3)}, tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    cases = {
        ("missing.h5",): "error: no such file: missing.h5",
        ("text.pth",): "error: text.pth is not a readable PyTorch checkpoint",
        ("weights.h5",): "error: weights.h5 is an HDF5 file (Keras weights?), not a PyTorch",
        ("other.pth",): "error: other.pth holds neither a ReActNet-A",
        (released, "--model", "reactnet_a_ab"): "lacks tensor feature.0.conv1.weight",
        (released, "--input_size", "20"): "divisible by 8, got (20, 20)",
        (released, "--out", "model.h5"): "error: --out must name a .keras file, got model.h5",
        (released, "--stem", "tiny"): "error: unknown --stem 'tiny'; valid names: imagenet,",
        (released, "--stage", "3"): "error: --stage must be 1 or 2, got 3",
        (released, "--nope"): "error: Unknown command line flag 'nope'",
        (): "error: larq-nobn-convert takes one checkpoint file, got none",
    }
    for args, expected in cases.items():
        assert convert_command.main([convert_command.PROGRAM, *map(str, args)]) == 2, args
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], args
    assert not list(tmp_path.glob("*.keras"))


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    assert "text.pth is not a readable PyTorch checkpoint" in error_line(
        convert("text.pth", cwd=tmp_path)
    )


@pytest.mark.parametrize(
    "module, args, expected",
    [
        ("torch", (), "Reading PyTorch checkpoints needs torch: pip install 'larq-nobn[torch]'"),
        ("larq_compute_engine", ("--tflite", "m.tflite"), "--tflite needs larq_compute_engine"),
    ],
)
def test_missing_packages_are_one_line(released, tmp_path, module, args, expected):
    path = os.pathsep.join([_shadow(tmp_path, module), program_env()["PYTHONPATH"]])
    result = convert(released, "--out", "m.keras", *args, cwd=tmp_path, PYTHONPATH=path)
    assert expected in error_line(result)
    assert not (tmp_path / "m.keras").exists()
