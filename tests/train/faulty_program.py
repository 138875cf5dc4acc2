"""The training program with a fault of the tests: `python tests/train/faulty_program.py
FAULT flags...` runs `train/main.py flags...` after installing FAULT, one of `KILLS`, a
SIGKILL the program sends itself at that exact moment of a run, or of `STOPS`, a SIGSTOP
that freezes it there until the test kills it (for runs of several processes).

The faults live here, not in the program: it only offers the extension points they use
(`runner.Run`'s `callbacks`, passed through `main.run`). `NanAtEpoch` is for runs in the
tests' own process (`program.run_main(..., callbacks=...)`).
"""

import os
import signal
import sys

from larq_nobn.train import main  # Keras 2 before TensorFlow

# isort: split
import tensorflow as tf


def die() -> None:
    """SIGKILL to this process: no handler, no flush, no cleanup, as a crash or an OOM kill."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class NanAtEpoch(tf.keras.callbacks.Callback):
    """Turns the weights NaN at the start of epoch `epoch` (1-based), as a diverging run."""

    def __init__(self, epoch: int):
        super().__init__()
        self.nan_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.nan_epoch:
            variable = self.model.trainable_variables[0]
            variable.assign(tf.fill(variable.shape, float("nan")))


class KillInEpoch(tf.keras.callbacks.Callback):
    """SIGKILL after the first step of epoch `epoch` (1-based): inside the epoch, after the
    checkpoints of the epochs before it."""

    def __init__(self, epoch: int):
        super().__init__()
        self.kill_epoch = epoch
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.kill_epoch:
            die()


class StopAtEpoch(tf.keras.callbacks.Callback):
    """SIGSTOP at the start of epoch `epoch` (1-based): after everything the epochs before
    it wrote, before any step of this one. The process stays, frozen, until killed."""

    def __init__(self, epoch: int):
        super().__init__()
        self.stop_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.stop_epoch:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)


def kill_after_preflight() -> None:
    """SIGKILL at start-up: the run is set up and checked, nothing is written yet."""
    from larq_nobn.train import runner

    preflight = runner.Run.preflight

    def preflight_then_die(self):
        preflight(self)
        die()

    runner.Run.preflight = preflight_then_die


def kill_in_checkpoint_write() -> None:
    """SIGKILL in the first checkpoint write, after its shards are written (`ckpt-N_temp/`)
    and before they are merged into `ckpt-N.index` and the state file names it."""
    from tensorflow.python.ops import gen_io_ops  # what the checkpoint saver calls

    def merge_never(*args, **kwargs):
        die()

    gen_io_ops.merge_v2_checkpoints = merge_never


# FAULT -> (what to install before the run, a function of the stage giving its callbacks).
KILLS = {
    "start-up": (kill_after_preflight, None),
    "checkpoint write": (kill_in_checkpoint_write, None),
    "stage-1 epoch 2": (None, lambda stage: [KillInEpoch(2)] if stage == 1 else []),
    # When the program asks for stage 2's callbacks, stage 1 has just finished.
    "stage handoff": (None, lambda stage: die() if stage == 2 else []),
    "stage-2 epoch 2": (None, lambda stage: [KillInEpoch(2)] if stage == 2 else []),
}

# FAULT -> (install, callbacks) as in KILLS, for a SIGSTOP.
STOPS = {
    "stop at stage-1 epoch 2": (None, lambda stage: [StopAtEpoch(2)] if stage == 1 else []),
}


if __name__ == "__main__":
    fault = sys.argv.pop(1)
    install, callbacks = {**KILLS, **STOPS}[fault]
    if install:
        install()
    main.run(callbacks=callbacks)
