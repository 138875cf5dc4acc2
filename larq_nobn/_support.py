"""The Python and TensorFlow versions larq_nobn supports, checked when it is imported.

The check runs before TensorFlow is imported (it reads the installed TensorFlow's version
from its package metadata), so that an unsupported environment gets one line saying what
is supported and why, instead of an error deep inside larq or TensorFlow.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

# Both ends of each range are tested (.ci/run); setup.cfg states the same ranges.
PYTHON = ((3, 10), (3, 12))
TENSORFLOW = ((2, 16), (2, 21))
# A later oldest TensorFlow (and tf-keras) on some Pythons: see _SEEDING.
TENSORFLOW_FROM = {(3, 12): (2, 19)}

# Why not outside the ranges: what the dependencies allow, and what is tested.
_OLDER_PYTHON = "larq 0.14 and larq-compute-engine 0.16 need Python 3.10 or later"
_NEWER_PYTHON = (
    "larq 0.14 needs NumPy 1, which has no wheels for Python 3.13 or later, and "
    "larq-compute-engine 0.16 has wheels up to Python 3.12"
)
_OTHER_TENSORFLOW = (
    "larq_nobn reaches into tf-keras internals (tf_keras.src), which move between "
    "releases, and it is tested on both ends of that range"
)
_SEEDING = (
    "tf-keras 2.16 to 2.18 draw the seeds of unseeded initializers (after "
    "tf.keras.utils.set_random_seed) with random.randint(1, 1e9), whose float bound Python "
    "3.12 rejects"
)
# The names the `tensorflow` module is published under on PyPI, most common first.
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel")


def _version(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _span(versions: tuple[tuple[int, int], tuple[int, int]]) -> str:
    return f"{_version(versions[0])} to {_version(versions[1])}"


def _within(version: tuple[int, int], versions: tuple[tuple[int, int], ...]) -> bool:
    return versions[0] <= version <= versions[1]


def tensorflow_range(python: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (oldest, newest) supported TensorFlow (major, minor) on Python `python`."""
    return TENSORFLOW_FROM.get(python, TENSORFLOW[0]), TENSORFLOW[1]


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_tensorflow() -> str | None:
    """The version of the TensorFlow that `import tensorflow` gives, without importing it:
    `tensorflow.__version__` if it is imported already, else its package metadata; None if
    it is not installed (or installed under a name not in `_TENSORFLOW_DISTRIBUTIONS`)."""
    if "tensorflow" in sys.modules:
        return getattr(sys.modules["tensorflow"], "__version__", None)
    for name in _TENSORFLOW_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def unsupported(python: tuple[int, int], tensorflow: str | None) -> str | None:
    """One line saying why `python` (major, minor) or `tensorflow` (a version string, None
    when not installed) is not supported, or None when both are.

    Args:
        python: the interpreter's (major, minor) version.
        tensorflow: TensorFlow's version string, such as "2.21.0", or None.

    Returns:
        The message, or None.
    """
    exceptions = ", ".join(
        f"{_span(tensorflow_range(py))} on Python {_version(py)}" for py in TENSORFLOW_FROM
    )
    supported = (
        f"larq_nobn supports Python {_span(PYTHON)} and TensorFlow {_span(TENSORFLOW)} "
        f"({exceptions})"
    )
    if not _within(python, PYTHON):
        why = _OLDER_PYTHON if python < PYTHON[0] else _NEWER_PYTHON
        return f"{supported}, not Python {_version(python)}: {why}."
    version = _major_minor(tensorflow) if tensorflow is not None else None
    versions = tensorflow_range(python)
    if version is not None and not _within(version, versions):
        why = _OTHER_TENSORFLOW if not _within(version, TENSORFLOW) else _SEEDING
        (lo_major, lo_minor), (hi_major, hi_minor) = versions
        spec = f">={lo_major}.{lo_minor},<{hi_major}.{hi_minor + 1}"
        return (
            f"{supported}, not TensorFlow {tensorflow} on Python {_version(python)}: {why} "
            f'(pip install "tensorflow{spec}" "tf-keras{spec}").'
        )
    return None


def check() -> None:
    """Raises ImportError with `unsupported`'s line for this interpreter and TensorFlow."""
    message = unsupported(sys.version_info[:2], installed_tensorflow())
    if message is not None:
        raise ImportError(message)
