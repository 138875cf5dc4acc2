"""Tests for the program's commands (train/commands.py) and its Keras 2 selection."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from larq_nobn.train import commands

ROOT = Path(__file__).resolve().parents[2]


def test_commands_stop_with_one_line_without_the_train_extra(monkeypatch, capsys):
    real = commands.importlib.util.find_spec
    monkeypatch.setattr(
        commands.importlib.util,
        "find_spec",
        lambda name, *args: None if name in ("sklearn", "absl") else real(name, *args),
    )
    assert commands.missing_train_extra() == ["absl-py", "scikit-learn"]
    for command in (commands.train, commands.spp):
        with pytest.raises(SystemExit) as exit_:
            command()
        assert exit_.value.code == 2
        message = capsys.readouterr().err
        assert message.count("\n") == 1 and "larq-nobn[train]" in message
        assert "absl-py, scikit-learn" in message


def test_spp_command_help(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["larq-nobn-spp", "--help"])
    with pytest.raises(SystemExit) as exit_:
        commands.spp()
    assert exit_.value.code == 0
    assert "--backbone" in capsys.readouterr().out


@pytest.mark.parametrize(
    "imports",
    ["sys.path.insert(0, 'train')\nimport main\n", "import larq_nobn.train.main\n"],
    ids=["python train/main.py", "python -m larq_nobn.train"],
)
def test_the_program_selects_keras_2_through_the_library(imports):
    """TF_USE_LEGACY_KERAS is set by `larq_nobn` only: main.py as a top-level module (as
    `python train/main.py` runs it) and through the package both get Keras 2."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = (
        "import os, sys\n"
        "assert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
        + imports
        + "import tensorflow as tf, tf_keras\n"
        "print('LEGACY=' + str(tf.keras.layers.Layer is tf_keras.layers.Layer))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LEGACY=True" in result.stdout
