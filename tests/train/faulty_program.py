"""The training program with a fault of the tests: `python tests/train/faulty_program.py
FAULT flags...` runs `train/main.py flags...` after installing FAULT, one of `KILLS`, a
SIGKILL the program sends itself at that exact moment of a run, of `FAULTS` (a SIGTERM,
a full disk), or of `STOPS`, a SIGSTOP that freezes it there until the test kills it (for
runs of several processes).

The faults live here, not in the program: it only offers the extension points they use
(`runner.Run`'s `callbacks`, passed through `main.run`). `NanAtEpoch` is for runs in the
tests' own process (`program.run_main(..., callbacks=...)`).
"""

import errno
import os
import signal
import sys

from larq_nobn.train import (
    main,  # Keras 2 before TensorFlow
    process,
)

with process.tensorflow_noise_filtered():  # as the program imports it: stderr as its own
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


class AtStep(tf.keras.callbacks.Callback):
    """Calls `action()` at the end of step `step` of epoch `epoch` (both 1-based; the steps
    this process ran of the epoch), or at the epoch's end (`step=None`, before the program
    checkpoints it)."""

    def __init__(self, action, epoch: int, step: int | None = None):
        super().__init__()
        self.action = action
        self.epoch, self.step = epoch, step
        self.current, self.steps = None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current, self.steps = epoch + 1, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.current == self.epoch and self.steps == self.step:
            self.action()

    def on_epoch_end(self, epoch, logs=None):
        if self.current == self.epoch and self.step is None:
            self.action()


def sigterm() -> None:
    """SIGTERM to this process, as a cluster scheduler sends before a kill."""
    os.kill(os.getpid(), signal.SIGTERM)


class DiskFullAtSave:
    """Replaces the checkpoint saver's `save_v2` (install with `install`): its `n`-th call
    writes its shard, then fails as a write to a full disk does in TensorFlow."""

    def __init__(self, n: int):
        from tensorflow.python.ops import io_ops  # what the checkpoint saver calls

        self.real, self.n, self.calls = io_ops.save_v2, n, 0

    def __call__(self, prefix, *args, **kwargs):
        self.calls += 1
        result = self.real(prefix, *args, **kwargs)
        if self.calls == self.n:
            path = prefix.numpy().decode() if hasattr(prefix, "numpy") else str(prefix)
            message = f"{path}.tempstate7; {os.strerror(errno.ENOSPC)}"
            raise tf.errors.ResourceExhaustedError(None, None, message)
        return result

    def install(self) -> None:
        from tensorflow.python.ops import io_ops

        io_ops.save_v2 = self


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


# The faults a run survives without a kill: FAULT -> as in KILLS.
FAULTS = {
    # The SIGTERM arrives in step 2 of stage 1's epoch 2, of 4 steps.
    "sigterm stage-1 epoch 2 step 2": (
        None,
        lambda stage: [AtStep(sigterm, epoch=2, step=2)] if stage == 1 else [],
    ),
    # Between two checkpoints of --checkpoint_every_steps 2 (after steps 2 and 4).
    "sigkill stage-1 epoch 2 step 3": (
        None,
        lambda stage: [AtStep(die, epoch=2, step=3)] if stage == 1 else [],
    ),
    "disk full at the second save": (lambda: DiskFullAtSave(2).install(), None),
}


if __name__ == "__main__":
    fault = sys.argv.pop(1)
    install, callbacks = {**KILLS, **FAULTS, **STOPS}[fault]
    if install:
        install()
    main.run(callbacks=callbacks)
