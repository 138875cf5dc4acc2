"""Bad files, full disks and preemption: a short named error or a visible recovery, never a
traceback, and no lost training.

Every bad file and every failed write is one line naming the file (exit 2 when the user
must act, 1 when a write failed) and leaves the run directory's good files as they were;
the recoveries (an unreadable checkpoint or history.csv) say in one line what they did
and end with an uninterrupted run's weights. A SIGTERM stops a run after its step with a
checkpoint (exit 143), and a run killed between two checkpoints inside an epoch resumes
inside it: both end with the uninterrupted run's weights, bit for bit, and its history.

The runs are one stage of ReActNet-18 (CIFAR stem) on 64 digits of 8x8 pixels, batches of
16 (4 steps per epoch), 2 epochs, --deterministic: the cheapest zoo model.
"""

import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from larq_nobn.train import checkpoints, data, files, outputs
from larq_nobn.train import main as main_mod
from larq_nobn.train.options import ConfigError
from tests.train import faulty_program
from tests.train.program import (
    FAULTY_PROGRAM,
    PROGRAM,
    REPO,
    SUBPROCESS_TIMEOUT,
    digest_line,
    program_env,
    read_history,
    run_main,
    snapshot,
)
from tests.zoo.optional_torch import torch

RUN = ["--model=reactnet18_nobn", "--stem=cifar", "--image_size=8", "--dataset=digits"]
RUN += ["--stages=1", "--train_subset=64", "--batch_size=16", "--epochs=2"]
RUN += ["--deterministic", "--seed=3", "--verbose=0"]
STEPS = 64 // 16  # per epoch


@pytest.fixture(autouse=True)
def _reset_global_state():
    """A --deterministic run turns on op determinism; later tests must not see it."""
    yield
    tf_config.disable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": True})
    main_mod.FLAGS.unparse_flags()


# ----------------------------------------------------------------------------- helpers


def run_program(tmp_path, name: str, args: list[str], fault: str | None = None, **popen):
    """`train/main.py args` (with `fault` of faulty_program.py: FAULT or KILLS) as a
    process: (exit code, stdout, stderr lines)."""
    command = [FAULTY_PROGRAM, fault] if fault else [PROGRAM]
    result = subprocess.run(
        [sys.executable, *command, *args],
        cwd=REPO,
        env=program_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        **popen,
    )
    (tmp_path / f"{name}.log").write_text(result.stdout + result.stderr)
    return result.returncode, result.stdout, result.stderr.splitlines()


def contents(directory) -> dict[str, str]:
    """Every file under `directory` by relative path: a hash of its bytes."""
    return {path: info[2] for path, info in snapshot(directory).items() if info[2] is not None}


def copy_run(source, destination) -> str:
    """A copy of the run directory `source` at `destination` (config.json names it: the
    run's --model_dir)."""
    shutil.copytree(source, destination, symlinks=True)
    path = os.path.join(destination, "config.json")
    config = json.load(open(path))
    config["model_dir"] = str(destination)
    files.write_json(path, config)
    return str(destination)


def one_line(lines: list[str], prefix: str) -> str:
    """The one line of `lines` (at most two: a warning and an error), starting `prefix`."""
    assert len(lines) <= 2, lines
    assert not any("Traceback" in line for line in lines), lines
    (line,) = [line for line in lines if line.startswith(prefix)]
    return line


def in_process(capsys, *args: str, callbacks=None) -> tuple[int, str, list[str]]:
    """`run_main(args)` in this process: (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    code = run_main(*args, callbacks=callbacks)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


class AtTrainBegin(tf.keras.callbacks.Callback):
    """Records `contents(directory)` when training starts: after the resume's repairs,
    before the run writes anything new."""

    def __init__(self, directory):
        super().__init__()
        self.directory, self.seen = directory, None

    def on_train_begin(self, logs=None):
        if self.seen is None:
            self.seen = contents(self.directory)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """(uninterrupted, stopped): the uninterrupted run's `final weights sha256` and
    history rows; and the directory of the same run stopped by a SIGTERM in step 2 of
    epoch 2, with its exit code and stderr lines. The two run at once."""
    tmp = tmp_path_factory.mktemp("reference")
    whole_dir, stopped_dir = str(tmp / "whole"), str(tmp / "stopped")
    fault = "sigterm stage-1 epoch 2 step 2"
    processes = []
    for name, command in (
        ("whole", [PROGRAM, *RUN, f"--model_dir={whole_dir}"]),
        ("stopped", [FAULTY_PROGRAM, fault, *RUN, f"--model_dir={stopped_dir}"]),
    ):
        out, err = open(tmp / f"{name}.out", "w"), open(tmp / f"{name}.err", "w")
        processes.append(
            subprocess.Popen(
                [sys.executable, *command], cwd=REPO, env=program_env(), stdout=out, stderr=err
            )
        )
    for process in processes:
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    whole_out = (tmp / "whole.out").read_text()
    assert processes[0].returncode == 0, whole_out + (tmp / "whole.err").read_text()
    uninterrupted = {
        "digest": digest_line(whole_out),
        "history": read_history(os.path.join(whole_dir, "stage1")),
    }
    stopped = {
        "dir": stopped_dir,
        "code": processes[1].returncode,
        "err": (tmp / "stopped.err").read_text().splitlines(),
    }
    return uninterrupted, stopped


# ----------------------------------------------------------------------------- preemption


@pytest.mark.slow(110)
def test_sigterm_mid_epoch_then_rerun_ends_as_the_uninterrupted_run(
    reference_runs, tmp_path, capsys
):
    """SIGTERM in step 2 of epoch 2: the run finishes the step, writes ckpt-1-2 and exits
    143 with one line saying how to resume; the rerun continues with the epoch's last two
    batches and ends with the uninterrupted run's weights and history rows, bit for bit."""
    uninterrupted, stopped = reference_runs
    assert stopped["code"] == 128 + signal.SIGTERM, stopped["err"]
    line = one_line(stopped["err"], "stopped by SIGTERM")
    checkpoint = os.path.join(stopped["dir"], "stage1", "checkpoints", "ckpt-1-2")
    assert line == (
        f"stopped by SIGTERM after step 2 of 4 of epoch 2 (checkpoint {checkpoint}); "
        "rerun the same command to resume"
    )
    model_dir = copy_run(stopped["dir"], tmp_path / "run")
    assert [int(row["epoch"]) for row in read_history(os.path.join(model_dir, "stage1"))] == [1]

    code, out, err = in_process(capsys, *RUN, f"--model_dir={model_dir}")

    assert code == 0 and err == [], err
    resumed = os.path.join(model_dir, "stage1", "checkpoints", "ckpt-1-2")
    assert f"Resuming stage 1 after epoch 1 and 2 of 4 steps of epoch 2 from {resumed}\n" in out
    assert digest_line(out) == uninterrupted["digest"]
    # Each epoch once, and epoch 2's train metrics those of the uninterrupted epoch: the
    # sums of its first two steps were in the checkpoint.
    assert read_history(os.path.join(model_dir, "stage1")) == uninterrupted["history"]
    assert json.load(open(os.path.join(model_dir, "metrics.json")))["stages"]["1"]["steps"] == (
        2 * STEPS
    )


@pytest.mark.slow(60)
def test_sigkill_between_two_step_checkpoints_then_rerun_ends_as_the_uninterrupted_run(
    reference_runs, tmp_path, capsys
):
    """--checkpoint_every_steps 2 checkpoints after steps 2 and 4 of each epoch (the
    second is the epoch's end); a SIGKILL in step 3 of epoch 2, the program's own (no
    race), loses step 3 only: the rerun restores ckpt-1-2 and ends with the uninterrupted
    run's weights and history."""
    uninterrupted, _ = reference_runs
    model_dir = str(tmp_path / "run")
    args = [*RUN, f"--model_dir={model_dir}"]
    code, _, _ = run_program(
        tmp_path, "killed", [*args, "--checkpoint_every_steps=2"], "sigkill stage-1 epoch 2 step 3"
    )
    assert code == -signal.SIGKILL
    saved = os.listdir(os.path.join(model_dir, "stage1", "checkpoints"))
    assert {name.split(".")[0] for name in saved} == {"checkpoint", "ckpt-1", "ckpt-1-2"}

    code, out, err = in_process(capsys, *args)  # without the flag: it may change on a rerun

    assert code == 0 and err == [], err
    assert "Resuming stage 1 after epoch 1 and 2 of 4 steps of epoch 2 from " in out
    assert digest_line(out) == uninterrupted["digest"]
    assert read_history(os.path.join(model_dir, "stage1")) == uninterrupted["history"]


def test_the_batches_after_a_resume_inside_an_epoch_are_the_uninterrupted_ones():
    """`data.load(first_step=s)`: the epoch's batches after its first s, then the next
    epochs', exactly as in a dataset that starts at the epoch's beginning."""

    def batches(**kwargs):
        train, _, _ = data.load(
            "digits", global_batch_size=16, train_subset=64, image_size=8, seed=3, **kwargs
        )
        return [np.concatenate([x.numpy().ravel(), y.numpy()]) for x, y in train]

    whole = batches(stream=1, first_epoch=1, epochs=2)
    resumed = batches(stream=1, first_epoch=1, epochs=2, first_step=3)
    assert len(whole) == 2 * STEPS and len(resumed) == 2 * STEPS - 3
    for a, b in zip(resumed, whole[3:], strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- bad files


@pytest.mark.slow(35)
def test_a_truncated_newest_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(
    reference_runs, tmp_path, capsys
):
    uninterrupted, stopped = reference_runs
    model_dir = copy_run(stopped["dir"], tmp_path / "run")
    stage = os.path.join(model_dir, "stage1")
    newest = os.path.join(stage, "checkpoints", "ckpt-1-2.data-00000-of-00001")
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    before = contents(model_dir)
    at_start = AtTrainBegin(model_dir)

    code, out, err = in_process(
        capsys, *RUN, f"--model_dir={model_dir}", callbacks=lambda stage: [at_start]
    )

    line = one_line(err, "warning: ")
    assert line == (
        f"warning: {os.path.join(stage, 'checkpoints', 'ckpt-1-2')} is unreadable (Read less "
        f"bytes than requested), moved to {os.path.join(stage, 'unreadable')}/; resuming "
        "from ckpt-1"
    )
    assert code == 0
    assert f"Resuming stage 1 after epoch 1 from {stage}/checkpoints/ckpt-1\n" in out
    # When training started, the bad checkpoint's two files had moved, unchanged, and every
    # other file was as it was (the state file names ckpt-1 alone now).
    moved = {
        path: os.path.join("stage1", "unreadable", os.path.basename(path))
        for path in before
        if "ckpt-1-2." in path
    }
    assert len(moved) == 2
    expected = {moved.get(path, path): digest for path, digest in before.items()}
    state_file = os.path.join("stage1", "checkpoints", "checkpoint")
    del expected[state_file]
    seen = dict(at_start.seen)
    assert seen.pop(state_file) != before[state_file]
    assert {path: seen.get(path) for path in expected} == expected
    assert all(path.startswith("stage1/logs/") for path in set(seen) - set(expected))
    # The run then trained epoch 2 again: the uninterrupted run's weights and history.
    assert digest_line(out) == uninterrupted["digest"]
    assert read_history(stage) == uninterrupted["history"]
    assert sorted(os.listdir(os.path.join(stage, "unreadable"))) == [
        "ckpt-1-2.data-00000-of-00001",
        "ckpt-1-2.index",
    ]


@pytest.mark.slow(30)
def test_a_garbled_history_is_moved_aside_and_rebuilt_from_the_checkpoint(
    reference_runs, tmp_path, capsys
):
    uninterrupted, stopped = reference_runs
    model_dir = copy_run(stopped["dir"], tmp_path / "run")
    stage = os.path.join(model_dir, "stage1")
    path = os.path.join(stage, "history.csv")
    good = open(path, "rb").read()
    garbage = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))
    open(path, "wb").write(garbage)
    at_start = AtTrainBegin(model_dir)

    code, out, err = in_process(
        capsys, *RUN, f"--model_dir={model_dir}", callbacks=lambda stage: [at_start]
    )

    line = one_line(err, "warning: ")
    assert line.startswith(f"warning: {path} is unreadable ('utf-8' codec can't decode")
    assert line.endswith(
        f"moved to {stage}/unreadable/history.csv; rebuilt epoch 1 from "
        f"{stage}/checkpoints/ckpt-1-2"
    )
    assert code == 0
    assert open(os.path.join(stage, "unreadable", "history.csv"), "rb").read() == garbage
    # Rebuilt byte for byte before training went on; then each epoch once.
    assert at_start.seen["stage1/history.csv"] == hashlib.sha256(good).hexdigest()
    assert digest_line(out) == uninterrupted["digest"]
    assert read_history(stage) == uninterrupted["history"]


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("config.json", '{"model": "reactnet18_nobn", "data', "Unterminated string"),
        ("config.json", "[1, 2]", "holds no JSON object"),
        ("metrics.json", '{"test_accuracy": 0.', "Expecting"),
    ],
)
def test_a_garbled_json_file_of_the_run_is_one_line_and_nothing_changes(
    reference_runs, tmp_path, capsys, name, text, problem
):
    """config.json (the flags the checkpoints were trained with) and metrics.json (the run
    finished) cannot be rebuilt: one line naming the file, exit 2, the directory as it was
    (before TensorFlow is needed)."""
    _, stopped = reference_runs
    model_dir = copy_run(stopped["dir"], tmp_path / "run")
    path = os.path.join(model_dir, name)
    with open(path, "w") as f:
        f.write(text)
    before = snapshot(model_dir)

    code, _, err = in_process(capsys, *RUN, f"--model_dir={model_dir}")

    assert code == 2
    line = one_line(err, "error: ")
    assert line.startswith(f"error: {path} ")
    assert problem in line and "restore it" in line
    assert snapshot(model_dir) == before


def test_a_finished_stage_with_a_garbled_metrics_json_is_one_line(tmp_path):
    from larq_nobn.train.rundir import RunDirectory

    stage = tmp_path / "stage1"
    stage.mkdir()
    (stage / "metrics.json").write_bytes(b"\x00\xff")
    directory = RunDirectory(str(tmp_path), tf.distribute.get_strategy())
    with pytest.raises(ConfigError) as error:
        directory.finished_stage(1)
    message = str(error.value)
    assert message.startswith(f"{stage / 'metrics.json'} is unreadable (")
    assert "stage 1 finished" in message and "\n" not in message
    assert (stage / "metrics.json").read_bytes() == b"\x00\xff"


@pytest.mark.torch
@pytest.mark.parametrize("what", ["random bytes", "a truncated checkpoint"])
def test_init_from_a_pth_file_torch_cannot_read_is_one_line(tmp_path, capsys, what):
    path = tmp_path / "weights.pth"
    if what == "random bytes":
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)))
    else:
        torch.save({"state_dict": {"conv1.weight": torch.zeros(32, 3, 3, 3)}}, path)
        path.write_bytes(path.read_bytes()[:400])
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "marker.txt").write_text("keep me")
    before = snapshot(model_dir)

    code, _, err = in_process(capsys, *RUN, f"--init_from={path}", f"--model_dir={model_dir}")

    assert code == 2
    line = one_line(err, "error: ")
    assert line.startswith(f"error: --init_from {path} is not a readable PyTorch checkpoint (")
    expected = "unpickling: " if what == "random bytes" else "PytorchStreamReader failed"
    assert expected in line
    assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------- --model_dir


@pytest.mark.parametrize("where", ["the file", "under the file"])
def test_a_model_dir_that_is_a_file_is_one_line(tmp_path, capsys, where):
    path = tmp_path / "taken"
    path.write_text("not a directory")
    model_dir = path if where == "the file" else path / "run"

    code, _, err = in_process(capsys, *RUN, f"--model_dir={model_dir}")

    assert code == 2
    line = one_line(err, "error: ")
    if where == "the file":
        assert line == f"error: --model_dir {path} is a file, not a directory"
    else:
        assert line == f"error: --model_dir {model_dir} cannot be a directory: {path} is a file"
    assert path.read_text() == "not a directory"


def _as_a_user_that_permissions_bind():
    """In the child, before it runs the program: a root process gives up the capabilities
    that let it ignore file permissions (an unprivileged one has none to give up)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
        for capability in (cap_dac_override, cap_dac_read_search):
            if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("where", ["the directory", "its parent"])
def test_an_unwritable_model_dir_is_one_line(tmp_path, where):
    parent = tmp_path / "read_only"
    parent.mkdir()
    model_dir = parent / "run"
    if where == "the directory":
        model_dir.mkdir()
        (model_dir / "marker.txt").write_text("keep me")
    locked = model_dir if where == "the directory" else parent
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    before = snapshot(parent)
    try:
        code, _, err = run_program(
            tmp_path,
            "unwritable",
            [*RUN, f"--model_dir={model_dir}"],
            preexec_fn=_as_a_user_that_permissions_bind,
        )
        assert snapshot(parent) == before
    finally:
        locked.chmod(stat.S_IRWXU)
    assert code == 2
    line = one_line(err, "error: ")
    if where == "the directory":
        assert line == (
            f"error: --model_dir {model_dir} is not writable: choose another --model_dir"
        )
    else:
        assert line == (
            f"error: --model_dir {model_dir} is not writable ({parent} is not): choose "
            "another --model_dir"
        )


@pytest.mark.slow(55)
def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_rerun_continues(
    reference_runs, tmp_path, capsys, monkeypatch
):
    """The second checkpoint's write fails as on a full disk (a fault in the saver's
    SaveV2, after it wrote its shard): exit 1, one line naming the directory, the space a
    checkpoint takes and the checkpoint still the newest; ckpt-1 intact, the failed
    write's files gone. A rerun (space freed) continues from ckpt-1 and ends with the
    uninterrupted run's weights."""
    from tensorflow.python.ops import io_ops

    uninterrupted, _ = reference_runs
    model_dir = str(tmp_path / "run")
    checkpoints_dir = os.path.join(model_dir, "stage1", "checkpoints")
    first = {}

    class KeepFirst(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # ckpt-1 is written
                first.update(contents(checkpoints_dir))

    monkeypatch.setattr(io_ops, "save_v2", faulty_program.DiskFullAtSave(2))
    code, _, err = in_process(
        capsys, *RUN, f"--model_dir={model_dir}", callbacks=lambda stage: [KeepFirst()]
    )
    monkeypatch.undo()

    assert code == 1
    line = one_line(err, "error: ")
    latest = os.path.join(checkpoints_dir, "ckpt-1")
    assert line.startswith(
        f"error: no space left on device for a checkpoint in {checkpoints_dir} ("
    )
    assert "a checkpoint takes " in line and " MB free" in line
    assert line.endswith(
        f"{latest} is still the newest checkpoint: free space and rerun the same command to "
        "continue from it"
    )
    assert contents(checkpoints_dir) == first  # ckpt-1 and the state file naming it
    assert tf.train.latest_checkpoint(checkpoints_dir) == latest
    assert checkpoints.unreadable(latest) is None
    assert [int(row["epoch"]) for row in read_history(os.path.dirname(checkpoints_dir))] == [1]

    code, out, err = in_process(capsys, *RUN, f"--model_dir={model_dir}")

    assert code == 0 and err == [], err
    assert f"Resuming stage 1 after epoch 1 from {latest}\n" in out
    assert digest_line(out) == uninterrupted["digest"]
    assert read_history(os.path.dirname(checkpoints_dir)) == uninterrupted["history"]


def test_a_full_disk_at_the_start_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """config.json, the first file a run writes, on a full disk: the write fails half-way
    (its temporary file goes), one line names the file, exit 1."""
    model_dir = tmp_path / "run"
    target = str(model_dir / "config.json.tmp")

    def open_on_a_full_disk(path, *args, **kwargs):
        f = open(path, *args, **kwargs)
        if path == target:
            f.write("{")
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return f

    monkeypatch.setattr(files, "open", open_on_a_full_disk, raising=False)
    code, _, err = in_process(capsys, *RUN, f"--model_dir={model_dir}")

    assert code == 1
    line = one_line(err, "error: ")
    assert line.startswith(f"error: no space left on device for {target} (")
    assert line.endswith(" MB free): free space and rerun the same command to continue")
    assert os.listdir(model_dir) == []


def test_traceback_shows_the_error_s_traceback_before_its_line(tmp_path, capsys):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{")
    for flag in ([], ["--traceback"]):
        code, _, err = in_process(capsys, *RUN, *flag, f"--model_dir={model_dir}")
        assert code == 2
        assert err[-1].startswith(f"error: {model_dir}/config.json is unreadable (")
        assert (err[0] == "Traceback (most recent call last):") == bool(flag), err
        assert len(err) > 2 if flag else len(err) == 1


# ----------------------------------------------------------------------------- checkpoints


def _tiny_state(directory, seed: int, **options):
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(2,))])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="mse")
    state = outputs.TrainingState(str(directory), **options)
    done = state.attach(model)
    state.set_model(model)
    return model, state, done


def test_an_unreadable_state_file_is_moved_aside_and_rebuilt_from_the_checkpoints(tmp_path, capsys):
    model, state, _ = _tiny_state(tmp_path, seed=1)
    state.on_epoch_end(0, {"loss": 1.0})
    state.on_epoch_end(1, {"loss": 0.5})
    saved = model.get_weights()
    state_file = tmp_path / "checkpoints" / "checkpoint"
    state_file.write_bytes(b"\xff\xfe garbage")
    capsys.readouterr()

    model, state, done = _tiny_state(tmp_path, seed=2)

    line = one_line(capsys.readouterr().err.splitlines(), "warning: ")
    assert line.startswith(f"warning: {state_file} is unreadable (")
    assert f"moved to {tmp_path / 'unreadable' / 'checkpoint'}" in line
    assert (tmp_path / "unreadable" / "checkpoint").read_bytes() == b"\xff\xfe garbage"
    assert done == 2 and state.restored == str(tmp_path / "checkpoints" / "ckpt-2")
    for a, b in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(a, b)
    assert state.history() == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]


def test_with_every_checkpoint_unreadable_the_stage_starts_over(tmp_path, capsys):
    _, state, _ = _tiny_state(tmp_path, seed=1)
    state.on_epoch_end(0, {"loss": 1.0})
    state.on_epoch_end(1, {"loss": 0.5})
    directory = tmp_path / "checkpoints"
    for path in directory.glob("ckpt-*.index"):
        path.write_bytes(b"not an sstable")
    capsys.readouterr()

    model, state, done = _tiny_state(tmp_path, seed=2)

    line = one_line(capsys.readouterr().err.splitlines(), "warning: ")
    assert line == (
        f"warning: {directory / 'ckpt-2'} (file is too short to be an sstable) and ckpt-1 "
        f"(file is too short to be an sstable) are unreadable, moved to "
        f"{tmp_path / 'unreadable'}/; the stage starts over"
    )
    assert done == 0 and state.restored is None and state.history() == []
    assert read_history(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path / "unreadable")) == [
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ]
    assert not os.path.exists(directory / "checkpoint")


def test_a_readable_checkpoint_of_another_model_stops_and_stays(tmp_path, capsys):
    _, state, _ = _tiny_state(tmp_path, seed=1)
    state.on_epoch_end(0, {"loss": 1.0})
    before = snapshot(tmp_path)
    tf.keras.utils.set_random_seed(2)
    other = tf.keras.Sequential([tf.keras.layers.Dense(4, input_shape=(2,))])
    other.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="mse")

    with pytest.raises(ConfigError) as error:
        outputs.TrainingState(str(tmp_path)).attach(other)

    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'checkpoints' / 'ckpt-1'} does not fit this run's")
    assert "config.json" in message and "\n" not in message
    assert snapshot(tmp_path) == before


def test_a_finished_stage_rebuilds_its_history_from_its_metrics(tmp_path, capsys):
    rows = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
    (tmp_path / "history.csv").write_text("epoch,loss\n1,1.0\n2,oops\n")
    capsys.readouterr()

    history = outputs.finished_history(str(tmp_path), {"history": rows}, write=True)

    assert history == rows
    line = one_line(capsys.readouterr().err.splitlines(), "warning: ")
    assert "could not convert string to float: 'oops'" in line
    assert line.endswith(f"rebuilt epochs 1-2 from {tmp_path / 'metrics.json'}")
    assert outputs.read_history(str(tmp_path / "history.csv")) == rows
    assert (tmp_path / "unreadable" / "history.csv").read_text().endswith("2,oops\n")


def test_a_checkpoint_of_the_earlier_layout_resumes_with_its_history(tmp_path):
    """Checkpoints of model, optimizer and epoch alone, written after history.csv by a
    `tf.train.CheckpointManager` (the layout before checkpoints held steps and history),
    resume: weights, epochs, and history.csv's rows cut to the checkpoint's epochs."""
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(2,))])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)
    model.fit(np.ones((4, 2)), np.zeros((4, 3)), verbose=0)
    epoch = tf.Variable(1, dtype=tf.int64, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch)
    tf.train.CheckpointManager(checkpoint, str(tmp_path / "checkpoints"), 1).save(1)
    # A kill between the two writes of epoch 2's end: its row, and no checkpoint.
    (tmp_path / "history.csv").write_text("epoch,loss\n1,1.0\n2,0.5\n")
    saved = model.get_weights()

    model, state, done = _tiny_state(tmp_path, seed=2)

    assert done == 1 and state.resumed_steps == 0
    for a, b in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(a, b)
    assert state.history() == [{"epoch": 1, "loss": 1.0}]
    assert read_history(str(tmp_path)) == [{"epoch": "1", "loss": "1.0"}]
    state.on_epoch_end(1, {"loss": 0.25})  # then checkpoints of this layout
    _, state, done = _tiny_state(tmp_path, seed=3)
    assert done == 2 and state.history()[-1] == {"epoch": 2, "loss": 0.25}
