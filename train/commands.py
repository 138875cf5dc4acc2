"""The program's console scripts, `larq-nobn-train`, `larq-nobn-spp` and `larq-nobn-convert`.

The first two need the `train` extra (`pip install "larq-nobn[train]"`); without it they
stop with one line that says so, before importing anything that needs it. The third needs
torch (and larq-compute-engine for `--tflite`), and says so likewise.
"""

import importlib.util
import sys

#: The modules the program imports that the library does not need, and their packages.
TRAIN_EXTRA = {
    "absl": "absl-py",
    "matplotlib": "matplotlib",
    "sklearn": "scikit-learn",
    "tensorflow_datasets": "tensorflow-datasets",
}


def missing_train_extra() -> list[str]:
    """The packages of the `train` extra that are not installed (by package name).

    Returns:
        The names, sorted; empty when the extra is complete.
    """
    return sorted(
        package
        for module, package in TRAIN_EXTRA.items()
        if importlib.util.find_spec(module) is None
    )


def require_train_extra(command: str) -> None:
    """Exits with one line on stderr if the `train` extra is incomplete.

    Args:
        command: the command's name, for the message.
    """
    if missing := missing_train_extra():
        print(
            f"error: {command} needs the train extra (missing {', '.join(missing)}): "
            'pip install "larq-nobn[train]"',
            file=sys.stderr,
        )
        raise SystemExit(2)


def train() -> None:
    """The `larq-nobn-train` command (also `python -m larq_nobn.train`)."""
    require_train_extra("larq-nobn-train")
    from larq_nobn.train.main import run

    run()


def spp() -> None:
    """The `larq-nobn-spp` command (also `python -m larq_nobn.train.spp`)."""
    require_train_extra("larq-nobn-spp")
    from larq_nobn.train.spp import main

    raise SystemExit(main())


def convert() -> None:
    """The `larq-nobn-convert` command (also `python -m larq_nobn.train.convert`)."""
    from larq_nobn.train.convert import run

    run()
