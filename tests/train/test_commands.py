"""Tests for the program's commands (train/commands.py) and its Keras 2 selection."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from larq_nobn.train import commands, convert, options

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


COMMANDS = {
    "larq-nobn-train": options.OPTIONS,
    "larq-nobn-spp": options.SPP_OPTIONS,
    "larq-nobn-convert": convert.OPTIONS,
}
# What each command's usage line takes besides its flags.
POSITIONAL = {"larq-nobn-convert": " CHECKPOINT"}


def absl_internal_flags() -> set[str]:
    """The flags absl defines for every program (logging, help, debugging, flag files),
    but --helpfull, which --help names as the way to see them."""
    from absl import app, flags
    from absl import logging as _  # noqa: F401  (defines the logging flags)

    app.define_help_flags()
    names = {
        flag.name
        for module, defined in flags.FLAGS.flags_by_module_dict().items()
        if module.startswith("absl.")
        for flag in defined
    }
    assert {"logtostderr", "only_check_args", "help"} <= names
    return (names | {"flagfile", "undefok"}) - {"helpfull"}


def installed(command: str) -> str:
    """The console script pip installed beside this Python (what a user runs)."""
    path = Path(sys.executable).parent / command
    assert path.exists(), f"{command} is not installed beside {sys.executable}"
    return str(path)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argument", ["--help", "-h"])
def test_help_lists_the_options_by_group_without_absl_flags_or_tensorflow(command, argument):
    """The installed command's --help: every option of its definition with its default,
    under its group, nothing of absl's own, and no TensorFlow imported (-X importtime
    lists every module the process imported)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", installed(command), argument],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith(f"usage: {command}{POSITIONAL.get(command, '')} [flags]")
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines()]
    assert "larq_nobn.train.options" in imported  # the list is complete
    assert not [name for name in imported if name.split(".")[0] == "tensorflow"]
    assert not [line for line in result.stderr.splitlines() if "import time" not in line]

    used = [group for group in options.GROUPS if any(o.group == group for o in COMMANDS[command])]
    assert [line.split(":")[0] for line in text.splitlines() if _is_heading(line)] == used
    for option in COMMANDS[command]:
        block = _flag_block(text, option.usage())
        heading = _heading_above(text, option.usage())
        assert heading == option.group, option.name
        help_words = " ".join(block.split()[1:])
        assert " ".join(option.help.split()) in help_words, option.name
        if option.default is not None:
            assert f"(default: {option.to_text(option.default)})" in help_words, option.name
        else:
            assert "default" in help_words, option.name
    for name in absl_internal_flags():
        assert not re.search(rf"--(\[no\])?{re.escape(name)}\b", text), name


def _flag_block(text: str, usage: str) -> str:
    """A flag's lines in the help: its usage line and the indented lines below it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [usage])
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * 10):
        end += 1
    return "\n".join(lines[start:end])


def _is_heading(line: str) -> bool:
    return line.split(":")[0] in options.GROUPS and line.startswith(line.split(":")[0] + ": ")


def _heading_above(text: str, usage: str) -> str:
    """The group heading the flag is listed under."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [usage])
    return next(line for line in reversed(lines[:start]) if _is_heading(line)).split(":")[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_helpfull_adds_what_absl_defines(command):
    result = subprocess.run(
        [installed(command), "--helpfull"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for option in COMMANDS[command]:
        assert option.usage() in result.stdout
    assert "--flagfile" in result.stdout
    if command == "larq-nobn-train":  # absl.app's run: its logging and debugging flags
        assert "--[no]logtostderr" in result.stdout and "--[no]only_check_args" in result.stdout


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
