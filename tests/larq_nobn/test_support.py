"""`import larq_nobn` names the supported Python and TensorFlow in one line elsewhere."""

import configparser
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from larq_nobn import _support

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = "larq_nobn supports Python 3.10 to 3.12 and TensorFlow 2.16 to 2.21"


def _requirements() -> tuple[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    options = config["options"]
    lines = [line.strip() for line in options["install_requires"].splitlines()]
    return options["python_requires"], [line for line in lines if line and line[0] != "#"]


def test_setup_cfg_states_the_ranges_that_import_checks():
    python_requires, install_requires = _requirements()
    (lo, lo_minor), (hi, hi_minor) = _support.PYTHON
    assert python_requires == f">={lo}.{lo_minor},<{hi}.{hi_minor + 1}"
    (lo, lo_minor), (hi, hi_minor) = _support.TENSORFLOW
    spec = f">={lo}.{lo_minor},<{hi}.{hi_minor + 1}"
    assert f"tensorflow{spec}" in install_requires
    assert f"tf-keras{spec}" in install_requires


@pytest.mark.parametrize(
    "python,tensorflow",
    [((3, 10), "2.16.0"), ((3, 12), "2.21.0"), ((3, 11), "2.16.0rc1"), ((3, 12), "2.21.7")]
    + [((3, 11), None)],  # TensorFlow not installed: its own import error says so
)
def test_supported_versions_pass(python, tensorflow):
    assert _support.unsupported(python, tensorflow) is None


@pytest.mark.parametrize(
    "python,tensorflow,names,why",
    [
        ((3, 13), None, "not Python 3.13", "NumPy 1"),
        ((3, 13), "2.21.0", "not Python 3.13", "NumPy 1"),
        ((3, 9), "2.16.0", "not Python 3.9", "Python 3.10 or later"),
        ((3, 11), "2.15.1", "not TensorFlow 2.15.1", "tf_keras.src"),
        ((3, 11), "2.22.0", "not TensorFlow 2.22.0", "tf_keras.src"),
        ((3, 12), "2.22.0rc0", "not TensorFlow 2.22.0rc0", "tf_keras.src"),
    ],
)
def test_unsupported_versions_get_one_line(python, tensorflow, names, why):
    message = _support.unsupported(python, tensorflow)
    assert message.startswith(SUPPORTED + ", " + names + ": ")
    assert why in message
    assert "\n" not in message
    if tensorflow is not None and names.startswith("not TensorFlow"):
        assert 'pip install "tensorflow>=2.16,<2.22" "tf-keras>=2.16,<2.22"' in message


def _import_larq_nobn(python: str, preamble: str = "") -> subprocess.CompletedProcess:
    """`import larq_nobn` from this repository in a fresh `python`, site-packages aside."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [python, "-s", "-c", preamble + "import larq_nobn"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_with_a_newer_tensorflow_raises_before_using_it():
    """A `tensorflow` already imported whose version is out of range (a stand-in module):
    the one line, before larq_nobn touches TensorFlow (`tf.keras`, which the stand-in
    lacks)."""
    preamble = "import sys, types\nsys.modules['tensorflow'] = types.ModuleType('tensorflow')\n"
    preamble += "sys.modules['tensorflow'].__version__ = '2.22.0'\n"
    result = _import_larq_nobn(sys.executable, preamble)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "ImportError: " + _support.unsupported(sys.version_info[:2], "2.22.0")


def _python_3_13() -> str | None:
    """A Python 3.13 interpreter: `python3.13` on PATH, or pyenv's."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = ["python3.13", *sorted(glob.glob(os.path.join(root, "versions/3.13*/bin/python")))]
    for candidate in candidates:
        try:
            version = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except OSError:
            continue
        if version.returncode == 0 and version.stdout.strip() == "(3, 13)":
            return candidate
    return None


def test_import_on_python_3_13_says_what_is_supported():
    """Python 3.13 (without TensorFlow, NumPy 1 or larq, none of which it can install):
    `import larq_nobn` raises the one line, from the check that runs first."""
    python = _python_3_13()
    if python is None:  # .ci/run's hosts have pyenv's 3.13
        pytest.skip("no Python 3.13 interpreter on this machine")
    result = _import_larq_nobn(python)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "ImportError: " + _support.unsupported((3, 13), None)
    assert "_support.py" in result.stderr  # raised by the check, not by a failed import
