"""SIGTERM and SIGINT: the run finishes its step, writes a checkpoint and says how to resume.

Cluster schedulers send SIGTERM some time before they kill a job; Ctrl-C sends SIGINT.
While a stage trains (inside `deferred`, around `fit`), a signal is only noted:
`outputs.TrainingState` acts on it at the end of the current step, writes a checkpoint of
that step and raises `Stopped`. Outside `fit` (set-up, evaluation, writing the outputs) the
run holds nothing its checkpoints lack, and a signal stops it at once. Either way the
program exits with one line saying where it stopped and to rerun the same command, and
the exit code 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell
reports a process the signal ended. A second signal is not handled: it ends the process
at once (the checkpoints are written so that a kill never breaks them).

Multi-worker runs: every step and every checkpoint is collective, so the workers must stop
after the same step. A worker only notes its signals, even outside `fit`; at the end of
every step the workers add up their notes (one all-reduce of a number,
`rundir.RunDirectory.agree`), so a signal to any worker stops all of them after the same
step. TensorFlow's `tf.distribute.experimental.PreemptionCheckpointHandler` agrees the same
way over its coordination service, but it writes checkpoints of its own, with its own
names, and exits the process itself; the agreement here keeps one kind of checkpoint.
"""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal.

    Args:
        signum: the signal this process received, or None (another worker's).
        where: where the run stopped, and its newest checkpoint.
    """

    def __init__(self, signum: int | None, where: str):
        self.signum = signum
        self.where = where
        cause = f"by {signal.Signals(signum).name}" if signum else "by a signal to another worker"
        super().__init__(f"stopped {cause} {where}; rerun the same command to resume")

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


class _State:
    active = False  # inside `handled`
    requested: int | None = None  # the signal received, if any
    act_at_once = True  # outside `deferred` (one-worker runs only)
    deferring = False


_state = _State()


def requested() -> int | None:
    """The signal this process received since `handled` began, or None."""
    return _state.requested


@contextlib.contextmanager
def handled(act_at_once: bool = True):
    """SIGTERM and SIGINT handled as the module docstring says, for the duration.

    Args:
        act_at_once: outside `deferred`, stop at once (one-worker runs); False: only note
            the signal (the workers of a multi-worker run stop together, at a step's end).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _state.requested, _state.act_at_once, _state.deferring = None, act_at_once, False
    _state.active = True
    _install()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.active, _state.requested, _state.deferring = False, None, False


def _install() -> None:
    for signum in SIGNALS:
        signal.signal(signum, _handle)


@contextlib.contextmanager
def deferred():
    """Signals wait for the end of the current step (`outputs.TrainingState`)."""
    # TensorFlow's coordination service (multi-worker runs) sets a SIGTERM handler of its
    # own when it starts, in C++: the program's are set again before every fit.
    if _state.active and _state.requested is None:
        _install()
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = False


def _handle(signum, frame):
    _state.requested = signum
    for other in SIGNALS:  # a second signal ends the process at once
        signal.signal(other, signal.SIG_DFL)
    if _state.act_at_once and not _state.deferring:
        raise Stopped(signum, "outside training, where nothing is left to save")
