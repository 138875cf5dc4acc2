"""Trains a larq-nobn zoo model with the recipe of "BNN - BN = ?".

    larq-nobn-train --model reactnet_nobn            # offline, on the embedded digits
    larq-nobn-train --model reactnet18_nobn --dataset cifar10 --loss kd --teacher T
    larq-nobn-train --model resnet50 --dataset cifar10       # a full-precision teacher

The same program: `python -m larq_nobn.train`, or `python train/main.py` in a checkout.

See the README for the paper's full commands.
"""

import contextlib
import os
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# isort: split
# Everything imported up to `main` is free of TensorFlow: the flags are parsed and checked
# first (`options`, `config`), so that bad input answers at once. `larq_nobn` selects
# Keras 2 (TF_USE_LEGACY_KERAS) before anything imports TensorFlow.
from absl import app, flags  # noqa: E402

from larq_nobn.train import files, options, preemption, process  # noqa: E402
from larq_nobn.train.config import Config, ConfigError  # noqa: E402

COMMAND = "larq-nobn-train"
# Set (to anything but 0), errors show their traceback too, as with --traceback.
TRACEBACK_VARIABLE = "LARQ_NOBN_TRACEBACK"

FLAGS = flags.FLAGS
options.define_flags(FLAGS)
flags.adopt_module_key_flags(options)  # absl's help lists them as this program's


def config_from_flags() -> Config:
    """The resolved `Config` of the parsed flags; raises ConfigError."""
    return Config(**options.from_flags(FLAGS)).resolved()


def main(argv: list[str], **run_options) -> int:
    """The program: `run_options` go to `runner.Run` (extra callbacks, e.g. a test's)."""
    if len(argv) > 1:
        return fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:  # the checks that need no TensorFlow, before it is imported
        config = config_from_flags()
        config.check_files()
    except ConfigError as error:
        return fail(str(error))
    # From here a SIGTERM or SIGINT stops the run with a line saying how to resume (see
    # `preemption`); the workers of a multi-worker run stop together, after a step.
    with preemption.handled(act_at_once=config.strategy != "multi_worker"):
        try:
            return train(config, **run_options)
        except preemption.Stopped as stop:
            print(stop, file=sys.stderr, flush=True)
            return stop.exit_code


def train(config: Config, **run_options) -> int:
    """Runs `config` (imports TensorFlow); the exit code. `run_options` as for `main`."""
    process.reuse_freed_memory()  # before TensorFlow allocates anything
    # Set-up without TensorFlow's noise (cuInit on CPU machines, CPU features, ...);
    # everything else it writes, and errors, still show.
    with process.tensorflow_noise_filtered():
        import tensorflow as tf
        from absl import logging as absl_logging

        import larq_nobn
        from larq_nobn.train import data
        from larq_nobn.train.runner import Run, TrainingError

        absl_logging.set_verbosity(absl_logging.WARNING)
        for name in larq_nobn.__all__:  # registers every Keras class before files are read
            getattr(larq_nobn, name)
    try:
        with process.tensorflow_noise_filtered():
            tf.keras.utils.set_random_seed(config.seed)
            if config.deterministic:
                make_deterministic()
            program = Run(config, **run_options)
        program.run()
    except (ConfigError, data.DatasetError) as error:
        return fail(str(error))
    except TrainingError as error:
        return fail(str(error), code=1)
    except (OSError, tf.errors.OpError) as error:
        message = system_error(error)
        if message is None:
            raise
        return fail(message, code=1)
    return 0


def system_error(error: Exception) -> str | None:
    """The one line of a failed read or write of the system's making (a full disk, a
    permission, a read-only file system), or None for an error of another kind."""
    if files.is_disk_full(error):
        where = getattr(error, "filename", None)
        free = files.free_bytes(where) if where else None
        space = f" ({files.megabytes(free)} free)" if free is not None else ""
        what = f"for {where}" if where else f"({files.reason(error)})"
        return (
            f"no space left on device {what}{space}: free space and rerun the same command "
            "to continue"
        )
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or files.reason(error)}"
    return None


def make_deterministic() -> None:
    """Same seed and flags, same weights, bit for bit, in any process.

    Op determinism alone is not enough on CPUs: Grappler's arithmetic optimizer rewrites
    gradient sums (where residual branches join) into forms whose float additions happen
    in the order inter-op threads finish.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})


def fail(message: str, code: int = 2) -> int:
    """Prints the one `error:` line (after the traceback of the error being handled, with
    --traceback or LARQ_NOBN_TRACEBACK); returns the exit code."""
    if show_traceback() and sys.exc_info()[0] is not None:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def show_traceback() -> bool:
    if os.environ.get(TRACEBACK_VARIABLE, "0") not in ("", "0"):
        return True
    return FLAGS.is_parsed() and bool(FLAGS["traceback"].value)


def run(**run_options) -> None:
    """The `larq-nobn-train` command; `run_options` as for `main`."""
    # Before absl parses anything and before TensorFlow: the program's flags by group
    # (absl's own `--help` lists only the flags of `__main__`, none of them here).
    app.define_help_flags()  # listed by --helpfull
    options.exit_if_help_requested(COMMAND, __doc__, options.OPTIONS, sys.argv[1:], FLAGS)
    # absl's start-up (its init callbacks) initializes TensorFlow's devices: on a CPU
    # machine, cuInit's error. Filtered until `main` starts; from there output is live.
    with contextlib.ExitStack() as startup:
        startup.enter_context(process.tensorflow_noise_filtered())

        def main_after_startup(argv: list[str]) -> int:
            startup.close()
            return main(argv, **run_options)

        app.run(main_after_startup)


if __name__ == "__main__":
    run()
