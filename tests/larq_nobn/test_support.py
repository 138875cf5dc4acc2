"""`import larq_nobn` names the supported Python and TensorFlow in one line elsewhere."""

import configparser
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from larq_nobn import _support

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = (
    "larq_nobn supports Python 3.10 to 3.12 and TensorFlow 2.16 to 2.21 (2.19 to 2.21 on "
    "Python 3.12)"
)


def _setup_cfg_options() -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["options"]


def _spec(versions) -> str:
    (lo, lo_minor), (hi, hi_minor) = versions
    return f">={lo}.{lo_minor},<{hi}.{hi_minor + 1}"


def test_setup_cfg_requires_the_python_that_import_checks():
    assert _setup_cfg_options()["python_requires"] == _spec(_support.PYTHON)


@pytest.mark.parametrize(
    "python,tf_keras",
    [((3, 10), ">=2.16,<2.22"), ((3, 11), ">=2.16,<2.22"), ((3, 12), ">=2.19,<2.22")],
)
def test_setup_cfg_requires_the_tensorflow_that_import_checks(python, tf_keras):
    """On each supported Python, the requirements whose markers hold there bound tf-keras
    (which pins TensorFlow's minor version) as `tensorflow_range` does."""
    lines = [line.strip() for line in _setup_cfg_options()["install_requires"].splitlines()]
    environment = {"python_version": f"{python[0]}.{python[1]}"}
    specs = {}
    for line in lines:
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                specs[requirement.name] = specs.get(requirement.name, SpecifierSet())
                specs[requirement.name] &= requirement.specifier
    assert specs["tf-keras"] == SpecifierSet(tf_keras)
    assert _spec(_support.tensorflow_range(python)) == tf_keras
    assert specs["tensorflow"] == SpecifierSet(">=2.16,<2.22")


@pytest.mark.parametrize(
    "python,tensorflow",
    [((3, 10), "2.16.0"), ((3, 12), "2.21.0"), ((3, 11), "2.16.0rc1"), ((3, 12), "2.19.0")]
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
        ((3, 11), "2.15.1", "not TensorFlow 2.15.1 on Python 3.11", "tf_keras.src"),
        ((3, 10), "2.22.0", "not TensorFlow 2.22.0 on Python 3.10", "tf_keras.src"),
        ((3, 12), "2.22.0rc0", "not TensorFlow 2.22.0rc0 on Python 3.12", "tf_keras.src"),
        ((3, 12), "2.18.1", "not TensorFlow 2.18.1 on Python 3.12", "randint(1, 1e9)"),
        ((3, 12), "2.16.2", "not TensorFlow 2.16.2 on Python 3.12", "randint(1, 1e9)"),
    ],
)
def test_unsupported_versions_get_one_line(python, tensorflow, names, why):
    message = _support.unsupported(python, tensorflow)
    assert message.startswith(SUPPORTED + ", " + names + ": ")
    assert why in message
    assert "\n" not in message
    if names.startswith("not TensorFlow"):
        lo = "2.19" if python == (3, 12) else "2.16"
        assert f'pip install "tensorflow>={lo},<2.22" "tf-keras>={lo},<2.22"' in message


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
