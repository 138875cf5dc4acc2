"""Scale out and survive: tf.distribute strategies, multi-worker, resume, NaN, mixed precision.

Each property goes through the training program's own code path: `train.main.main` in this
process (where tests/conftest.py gives two logical CPU devices), or `python train/main.py`
as subprocesses (one CPU device each) where the test needs real processes: two workers of a
multi-worker cluster, or a run killed with SIGKILL and resumed.

The runs use ReActNet-18 (no BN) with the CIFAR stem on 8x8 digits, the cheapest zoo model.
"""

import concurrent.futures
import json
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

import larq_nobn
from larq_nobn.train import main as main_mod
from larq_nobn.train import outputs, runner
from larq_nobn.train.config import Config
from tests.train import faulty_program
from tests.train.program import (
    FAULTY_PROGRAM,
    PROGRAM,
    SUBPROCESS_TIMEOUT,
    digest_line,
    error_line,
    finish,
    finish_cluster,
    history_epochs,
    optimizer_iterations,
    read_history,
    run_main,
    snapshot,
    start_cluster,
    start_program,
)

MODEL = ["--model=reactnet18_nobn", "--stem=cifar", "--image_size=8"]
# A few optimizer steps on a fixed subset of the digits, fully reproducible.
TINY = [*MODEL, "--dataset=digits", "--stages=1", "--train_subset=64", "--batch_size=16"]
TINY += ["--deterministic", "--seed=3", "--verbose=0"]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _reset_global_state():
    """A run sets the global dtype policy and op determinism; later tests must not see them."""
    yield
    tf.keras.mixed_precision.set_global_policy("float32")
    tf_config.disable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": True})
    main_mod.FLAGS.unparse_flags()


def files_under(directory) -> set[str]:
    return {
        os.path.relpath(os.path.join(root, name), directory)
        for root, _, files in os.walk(directory)
        for name in files
    }


def saved_weights(model_dir) -> list[np.ndarray]:
    path = os.path.join(model_dir, "model.keras")
    return tf.keras.models.load_model(path, compile=False).get_weights()


def checkpoint_tensors(path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


# ----------------------------------------------------------------------------- 1. mirrored


class FirstStepWeights(tf.keras.callbacks.Callback):
    """Saves the weights after the run's first optimizer step to `{model_dir}.step1.npz`."""

    def __init__(self, model_dir: str):
        super().__init__()
        self.path, self.saved = f"{model_dir}.step1.npz", False

    def on_train_batch_end(self, batch, logs=None):
        if not self.saved:
            np.savez(self.path, *[v.numpy() for v in self.model.trainable_variables])
            self.saved = True


def first_step_weights(model_dir: str) -> list[np.ndarray]:
    with np.load(f"{model_dir}.step1.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """A finished single-device run: its model_dir (the weights after its first step in
    `first_step_weights(model_dir)`)."""
    model_dir = str(tmp_path_factory.mktemp("one_device"))
    tf.keras.backend.clear_session()
    first = FirstStepWeights(model_dir)
    args = [*TINY, "--epochs=1", "--strategy=one_device", f"--model_dir={model_dir}"]
    code = run_main(*args, callbacks=lambda stage: [first])
    tf_config.disable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": True})
    assert code == 0
    return model_dir


def tiny_config(**overrides) -> Config:
    """A one-stage ReActNet-18 on 64 digits of 8x8 pixels, on one device."""
    settings = dict(
        model="reactnet18_nobn",
        stem="cifar",
        image_size=8,
        dataset="digits",
        stages=(1,),
        train_subset=64,
        batch_size=16,
        strategy="one_device",
    )
    return Config(**{**settings, **overrides}).resolved()


def adam_step_bound(step: int, beta_1: float = 0.9, beta_2: float = 0.999) -> float:
    """The largest |m_hat| / sqrt(v_hat) of Adam's `step` (1-based) over every sequence of
    gradients (Cauchy-Schwarz on m's and v's sums): a step moves a weight by at most its
    learning rate times this. About 1.0 for the first steps."""
    powers = (beta_1**2 / beta_2) ** np.arange(step)
    return float(
        (1 - beta_1) / np.sqrt(1 - beta_2) * np.sqrt(powers.sum())
        * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    )  # fmt: skip


def test_mirrored_on_two_devices_matches_one_device(one_device_run, tmp_path, capsys):
    """Two replicas with half a batch each, AGC on, take the one-device run's steps."""
    assert len(tf.config.list_logical_devices("CPU")) == 2
    mirrored = str(tmp_path / "mirrored")
    first = FirstStepWeights(mirrored)
    args = [*TINY, "--epochs=1", "--strategy=mirrored", f"--model_dir={mirrored}"]
    assert run_main(*args, callbacks=lambda stage: [first]) == 0
    assert re.search(r"replicas +2\n", capsys.readouterr().out)
    config = json.load(open(os.path.join(mirrored, "config.json")))
    assert config["agc_clip"] > 0
    # Both took the same 4 steps (64 examples / 16), so neither run is vacuous.
    steps = optimizer_iterations(one_device_run)
    assert steps == optimizer_iterations(mirrored) == 4
    # The replicas' gradients are summed in another order than one device's, and a batch
    # of 8 takes other convolution kernels than one of 16: a sign input within rounding
    # of zero can binarize the other way, which changes the gradients of many weights by
    # far more than rounding. Adam's first step, lr * g / (|g| + eps), hardly sees that: a
    # weight moves by lr in the direction of its gradient's sign whatever its size, and
    # only weights whose gradient is near zero can move differently (by up to 2 lr).
    # Over --seed 0-5 of this run: 1 to 4 weights of 11.2M more than 1e-5 apart after the
    # first step (at most 1.6e-5), about 115 more than 1e-6.
    # (The exact equality of the two strategies, on a model without signs and over several
    # steps: tests/larq_nobn/test_conventions.py.)
    lr = config["learning_rate"]
    single, double = first_step_weights(one_device_run), first_step_weights(mirrored)
    for a, b in zip(single, double, strict=True):
        assert np.abs(a - b).max() <= 2 * lr * adam_step_bound(1)
    off = sum(int(np.sum(np.abs(a - b) > 1e-5)) for a, b in zip(single, double, strict=True))
    assert off <= 1e-6 * sum(w.size for w in single)
    # Later steps amplify such a difference (seed 0: 86 % of the weights end more than 1e-5
    # apart): the final weights are only within what two runs of the same steps can be.
    bound = 2 * sum(lr * adam_step_bound(t) for t in range(1, steps + 1))  # about 8 lr
    single, double = saved_weights(one_device_run), saved_weights(mirrored)
    assert [w.shape for w in single] == [w.shape for w in double]
    for a, b in zip(single, double, strict=True):
        assert np.abs(a - b).max() <= bound


def test_a_run_records_its_resolved_acceleration(one_device_run):
    """config.json holds the setting that ran, never "auto": the default resolves to one
    named setting (on these CPUs "cpu_light"), which a resumed run keeps."""
    for name in ("config.json", "metrics.json"):
        saved = json.load(open(os.path.join(one_device_run, name)))
        recorded = (
            saved["acceleration"] if name == "config.json" else saved["config"]["acceleration"]
        )
        assert recorded == "cpu_light", name


# ----------------------------------------------------------------------------- 4. finished


def test_finished_run_is_not_retrained(one_device_run, capsys):
    before = snapshot(one_device_run)
    code = run_main(*TINY, "--epochs=1", "--strategy=one_device", f"--model_dir={one_device_run}")
    assert code == 2
    assert "finished" in error_line(capsys)
    assert snapshot(one_device_run) == before


# ----------------------------------------------------------------------------- 8. bad input


@pytest.fixture
def marked_dir(tmp_path):
    """An existing --model_dir with a marker file: a refused run must not touch it."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "marker.txt").write_text("keep me")
    return str(model_dir)


BAD_INPUTS = [
    (["--strategy=parameter_server"], "unknown --strategy 'parameter_server'"),
    (["--mixed_precision=float16"], "unknown --mixed_precision 'float16'"),
    # conftest gives this process 2 logical CPU devices: 3 examples cannot be split.
    (["--strategy=mirrored", "--batch_size=3"], "does not divide across 2 replicas"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(flags, message, marked_dir, capsys):
    before = snapshot(marked_dir)
    assert run_main(*TINY, "--epochs=1", f"--model_dir={marked_dir}", *flags) == 2
    assert message in error_line(capsys)
    assert snapshot(marked_dir) == before


@pytest.mark.parametrize(
    "tf_config_value",
    [
        None,
        "",
        "not json",
        json.dumps({"cluster": {}}),
        json.dumps({"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}),
        json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}}),  # no task
        json.dumps(
            {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}
        ),
        json.dumps(["127.0.0.1:1"]),
    ],
)
def test_multi_worker_without_usable_tf_config(tf_config_value, marked_dir, capsys, monkeypatch):
    if tf_config_value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config_value)
    before = snapshot(marked_dir)
    args = [*TINY, "--epochs=1", "--strategy=multi_worker", f"--model_dir={marked_dir}"]
    assert run_main(*args) == 2
    assert "--strategy multi_worker needs TF_CONFIG" in error_line(capsys)
    assert snapshot(marked_dir) == before


# ----------------------------------------------------------------------------- 5. NaN


@pytest.mark.slow(110)
def test_nan_stops_with_exit_1_and_a_loadable_last_good_checkpoint(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    nan = faulty_program.NanAtEpoch(2)
    args = [*TINY, "--epochs=2", "--strategy=one_device", f"--model_dir={model_dir}"]
    assert run_main(*args, callbacks=lambda stage: [nan]) == 1
    line = error_line(capsys)
    assert "NaN" in line and "epoch 2" in line
    checkpoint = line.split("last good checkpoint is ")[-1]
    assert checkpoint == os.path.join(model_dir, "stage1", "checkpoints", "ckpt-1")
    assert tf.train.latest_checkpoint(os.path.dirname(checkpoint)) == checkpoint
    tensors = checkpoint_tensors(checkpoint)
    assert int(tensors["epoch/.ATTRIBUTES/VARIABLE_VALUE"]) == 1
    floats = {k: v for k, v in tensors.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    assert any(k.startswith("model/") for k in floats)
    for name, value in floats.items():
        assert np.all(np.isfinite(value)), name
    # The NaN epoch left no history row, and the checkpoint restores into the program's
    # model: rerun without the fault, the run resumes after epoch 1 and finishes.
    assert history_epochs(os.path.join(model_dir, "stage1")) == [1]
    assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
    assert run_main(*args) == 0
    assert "Resuming stage 1 after epoch 1" in capsys.readouterr().out
    assert history_epochs(os.path.join(model_dir, "stage1")) == [1, 2]


# ----------------------------------------------------------------------------- 7. precision


@pytest.mark.slow(100)
def test_mixed_bfloat16_trains_on_cpu_with_a_float32_classifier(tmp_path):
    model_dir = str(tmp_path / "run")
    args = [*MODEL, "--dataset=digits", "--stages=1", "--train_subset=128", "--batch_size=32"]
    args += ["--epochs=2", "--learning_rate=2e-3", "--seed=1", "--verbose=0"]
    code = run_main(*args, "--mixed_precision=mixed_bfloat16", f"--model_dir={model_dir}")
    assert code == 0
    losses = [float(row["loss"]) for row in read_history(os.path.join(model_dir, "stage1"))]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    model = tf.keras.models.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    assert model.layers[-1].name == "fc"
    assert model.layers[-2].compute_dtype == "bfloat16"  # the network runs in bfloat16 ...
    assert model.layers[-1].compute_dtype == "float32"  # ... but the logits are float32
    assert model.outputs[0].dtype == tf.float32
    assert model(np.zeros((2, 8, 8, 3), np.float32)).dtype == tf.float32
    for weight in model.weights:
        assert weight.dtype == tf.float32, weight.name  # variables stay float32


def test_mixed_float16_wraps_agc_in_a_loss_scale_optimizer():
    """The loss scale optimizer unscales the gradients before AGC sees them."""
    config = tiny_config(epochs=1, mixed_precision="mixed_float16")
    model, student = runner.Run(config).models.build(1)
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    agc = model.optimizer.inner_optimizer
    assert isinstance(agc, larq_nobn.AGC)
    assert agc.clip_factor == config.agc_clip
    assert student.layers[-1].compute_dtype == "float32"


# ----------------------------------------------------------------------------- 6. checkpoints


def _tiny_state(directory, seed: int):
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.layers.Dense(3, input_shape=(2,))])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.1), loss="mse")
    state = outputs.TrainingState(str(directory))
    done = state.attach(model)
    state.set_model(model)
    return model, state, done


def test_leftovers_of_an_interrupted_checkpoint_write_do_not_break_resume(tmp_path):
    model, state, done = _tiny_state(tmp_path, seed=1)
    assert done == 0
    state.on_epoch_end(0, {"loss": 1.0})
    saved = model.get_weights()
    # What a kill in the middle of saving ckpt-2 leaves: shards in the temporary directory,
    # a data file without an index, a half-written state-file temp.
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "ckpt-2_temp").mkdir()
    (checkpoints / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(
        b"\x00garbage"
    )
    (checkpoints / "ckpt-2.data-00000-of-00001").write_bytes(b"\x00garbage")
    (checkpoints / "checkpoint.tmp1234abcd").write_text('model_checkpoint_path: "ck')
    model, state, done = _tiny_state(tmp_path, seed=2)
    assert done == 1
    assert state.latest_checkpoint == str(checkpoints / "ckpt-1")
    for a, b in zip(model.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(a, b)
    state.on_epoch_end(1, {"loss": 0.5})  # saving ckpt-2 over the leftovers works
    _, state, done = _tiny_state(tmp_path, seed=3)
    assert done == 2 and state.history() == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("dies_in", ["_write_history", "save"])
def test_a_kill_between_history_and_checkpoint_neither_repeats_nor_skips(tmp_path, dies_in):
    """Whichever of the two writes of an epoch end a kill interrupts, a resumed run's history
    is exactly the epochs of its latest checkpoint."""
    model, state, _ = _tiny_state(tmp_path, seed=1)
    state.on_epoch_end(0, {"loss": 1.0})
    target = state if dies_in == "_write_history" else state._manager

    def die(*args, **kwargs):
        raise _Killed

    setattr(target, dies_in, die)
    with pytest.raises(_Killed):
        state.on_epoch_end(1, {"loss": 0.5})
    _, state, done = _tiny_state(tmp_path, seed=2)
    assert [row["epoch"] for row in state.history()] == list(range(1, done + 1))


# ----------------------------------------------------------------------------- 3. resume


def _checkpoint_being_written(model_dir) -> bool:
    """A checkpoint write is under way: its shards' temporary directory exists."""
    for stage in ("stage1", "stage2"):
        directory = os.path.join(model_dir, stage, "checkpoints")
        if os.path.isdir(directory) and any(n.endswith("_temp") for n in os.listdir(directory)):
            return True
    return False


def _run_state(model_dir) -> dict[str, bool]:
    def exists(*parts):
        return os.path.exists(os.path.join(model_dir, *parts))

    return {
        "config": exists("config.json"),
        "writing": _checkpoint_being_written(model_dir),
        "stage1 checkpoints": exists("stage1", "checkpoints", "checkpoint"),
        "stage1 finished": exists("stage1", "metrics.json"),
        "stage2 checkpoints": exists("stage2", "checkpoints", "checkpoint"),
        "stage2 finished": exists("stage2", "metrics.json"),
    }


# Under "exact": a run of stage 2 alone (binary weights, where the settings' gradients
# differ most), killed once inside an epoch; its resume must keep the recorded setting's
# arithmetic. What a run writes and reads at the other moments does not depend on it.
EXACT_KILLS = ["stage-2 epoch 2"]


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param(None, marks=pytest.mark.slow(410)),
        pytest.param("exact", marks=pytest.mark.slow(150)),
    ],
    ids=["default", "exact"],
)
def test_sigkill_at_every_moment_then_rerun_ends_with_the_uninterrupted_weights(tmp_path, setting):
    """One two-stage run killed with SIGKILL during start-up, during a checkpoint write,
    inside a stage-1 epoch, at the stage handoff and inside a stage-2 epoch, rerun after
    each kill, ends with the weights of an uninterrupted run, bit for bit, and each
    stage's history holds every epoch once. Under "exact", a run of stage 2 alone killed
    once inside an epoch (see `EXACT_KILLS`). The last rerun leaves --acceleration out: it
    keeps the recorded setting.

    Each kill is the program's own, at that exact moment (see faulty_program.KILLS): no
    polling, no race with the run.
    """
    stages = ["1", "2"] if setting is None else ["2"]
    args = [*MODEL, "--dataset=digits", f"--stages={','.join(stages)}", "--train_subset=64"]
    args += ["--batch_size=16", "--epochs=2", "--deterministic", "--seed=3", "--verbose=0"]
    chosen = [f"--acceleration={setting}"] if setting else []
    whole_args = [*args, *chosen, f"--model_dir={tmp_path / 'whole'}"]
    whole = start_program(whole_args, tmp_path / "whole.log")
    killed = str(tmp_path / "killed")
    states = {}  # where each kill landed: the state of --model_dir it left
    moments = list(faulty_program.KILLS) if setting is None else EXACT_KILLS
    for attempt, moment in enumerate(moments):
        log_path = tmp_path / f"attempt{attempt}.log"
        victim = start_program(
            [moment, *args, *chosen, f"--model_dir={killed}"], log_path, FAULTY_PROGRAM
        )
        log = finish(victim, log_path)
        assert victim.returncode == -signal.SIGKILL, f"{moment}: not killed\n{log}"
        states[moment] = _run_state(killed)
    assert list(states) == moments
    expected = {
        "start-up": lambda state: not state["config"],  # before the run wrote anything
        "checkpoint write": lambda state: state["writing"],
        "stage-1 epoch 2": lambda state: (
            state["stage1 checkpoints"] and not state["stage1 finished"]
        ),
        "stage handoff": lambda state: state["stage1 finished"] and not state["stage2 checkpoints"],
        "stage-2 epoch 2": lambda state: (
            state["stage2 checkpoints"] and not state["stage2 finished"]
        ),
    }
    for moment, state in states.items():
        assert expected[moment](state), (moment, state)

    final = start_program([*args, f"--model_dir={killed}"], tmp_path / "final.log")
    log = finish(final, tmp_path / "final.log")
    assert final.returncode == 0, log
    assert "Resuming stage 2 after epoch 1 " in log, log
    recorded = setting or "cpu_light"  # the default on CPUs, resolved and kept
    assert re.search(rf"\n  acceleration +{recorded}\n", log), log
    assert json.load(open(os.path.join(killed, "config.json")))["acceleration"] == recorded
    whole_log = finish(whole, tmp_path / "whole.log")
    assert whole.returncode == 0, whole_log
    assert digest_line(log) == digest_line(whole_log)
    print(f"final weights sha256: resumed {digest_line(log)}, whole {digest_line(whole_log)}")
    for stage in stages:
        assert history_epochs(os.path.join(killed, f"stage{stage}")) == [1, 2]
        assert optimizer_iterations(killed, int(stage)) == 2 * 64 // 16
        assert not os.path.exists(os.path.join(killed, f"stage{stage}", "checkpoints"))
    metrics = json.load(open(os.path.join(killed, "metrics.json")))
    assert {s: metrics["stages"][s]["epochs"] for s in metrics["stages"]} == dict.fromkeys(
        stages, 2
    )


class _LabelRecorder(tf.keras.Model):
    """A one-weight model whose (eager) train step records every batch (images, labels)."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1)
        self.batches: list[np.ndarray] = []

    def call(self, x):
        return self.dense(tf.reshape(x, [tf.shape(x)[0], -1])[:, :1])

    def train_step(self, data):
        images, labels = data
        self.batches.append(np.concatenate([images.numpy().ravel(), labels.numpy()]))
        return {}


def _epoch_data(run: runner.Run, stage: int, epochs: int, initial_epoch: int = 0):
    """The batches `fit` trains on in epochs `initial_epoch + 1 ... epochs` of `stage`,
    fed as the program feeds them, one array per epoch."""
    model = _LabelRecorder()
    model.compile(optimizer="sgd", run_eagerly=True)
    model.fit(
        run.feed.train_data(stage, initial_epoch),
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=run.feed.steps_per_epoch,
        verbose=0,
    )
    steps = run.feed.steps_per_epoch
    return [
        np.concatenate(model.batches[i : i + steps]) for i in range(0, len(model.batches), steps)
    ]


def test_a_resumed_run_sees_the_data_of_an_uninterrupted_one():
    """The batches of (stage, epoch) do not depend on what the process did before: stage 2
    after stage 1 in one process, stage 2 in a fresh process (a rerun that finds stage 1
    finished), and stage 2 resumed after its first epoch all get the same data.

    (The SIGKILL tests check the consequence: final weights equal an uninterrupted run's.)
    """
    config = tiny_config(epochs=3, seed=5, stages=(1, 2))
    one_process = runner.Run(config)
    stage1 = _epoch_data(one_process, 1, epochs=3)
    stage2 = _epoch_data(one_process, 2, epochs=3)
    assert len(stage1) == len(stage2) == 3
    assert not np.array_equal(stage1[0], stage1[2])  # reshuffled every epoch
    assert not np.array_equal(stage1[0], stage2[0])  # and per stage
    rerun = _epoch_data(runner.Run(config), 2, epochs=3)
    resumed = _epoch_data(runner.Run(config), 2, epochs=3, initial_epoch=1)
    assert len(resumed) == 2
    for a, b in zip(rerun, stage2, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(resumed, stage2[1:], strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- 2. workers


TWO_WORKERS = [*TINY, "--epochs=2", "--strategy=multi_worker"]


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory) -> dict:
    """An uninterrupted run of two workers: its directory ("tmp", each worker's TMPDIR in
    `worker_tmp{index}`), its --model_dir, the workers' exit codes and logs."""
    tmp = tmp_path_factory.mktemp("two_workers")
    model_dir = str(tmp / "run")
    args = [*TWO_WORKERS, f"--model_dir={model_dir}"]
    workers = start_cluster(tmp, [args, args], "worker")
    logs = finish_cluster(tmp, workers, "worker")
    return {
        "tmp": tmp,
        "model_dir": model_dir,
        "codes": [worker.returncode for worker in workers],
        "logs": logs,
    }


def test_two_workers_agree_and_only_the_chief_writes(two_worker_run):
    model_dir, logs = two_worker_run["model_dir"], two_worker_run["logs"]
    assert two_worker_run["codes"] == [0, 0], logs
    for log in logs:
        assert re.search(r"replicas +2\n", log)

    # Both end with the same weights: the chief's model.keras is the non-chief's model too.
    chief_digest, other_digest = digest_line(logs[0]), digest_line(logs[1])
    assert chief_digest == other_digest
    model = tf.keras.models.load_model(os.path.join(model_dir, "model.keras"), compile=False)
    assert outputs.weights_sha256(model) == chief_digest
    assert optimizer_iterations(model_dir) == 2 * 64 // 16

    # One set of outputs, the chief's: one history with epochs 1..2, one event file per
    # TensorBoard run, no checkpoints (the stage finished), no temporary files; the
    # non-chief's scratch is gone.
    files = files_under(model_dir)
    stage = "stage1/"
    assert {f for f in files if not f.startswith(stage)} == {
        "config.json",
        "metrics.json",
        "model.keras",
        "curves.png",
    }
    stage_files = {f[len(stage) :] for f in files if f.startswith(stage)}
    log_files = sorted(f for f in stage_files if f.startswith("logs/"))
    assert [os.path.dirname(f) for f in log_files] == ["logs/train", "logs/validation"], log_files
    assert stage_files - set(log_files) == {"history.csv", "metrics.json", "model.keras"}
    assert history_epochs(os.path.join(model_dir, "stage1")) == [1, 2]
    assert "Everything is in" in logs[0] and "Everything is in" not in logs[1]
    # Autograph imports the modules it generates from the temporary directory, and Python
    # may write their bytecode beside them: that directory is TensorFlow's, not the run's.
    scratch = two_worker_run["tmp"] / "worker_tmp1"
    assert [name for name in os.listdir(scratch) if name != "__pycache__"] == []


@pytest.mark.slow(240)
def test_a_sigterm_to_one_worker_stops_every_worker_after_the_same_step(tmp_path, two_worker_run):
    """Two workers; the second gets a SIGTERM in step 2 of epoch 2. Both stop after that
    step, with ckpt-1-2 written (the chief's), each with one line (exit 143); rerun, both
    resume inside epoch 2 and end with the weights of an uninterrupted two-worker run, bit
    for bit, and its history (the uninterrupted run is `two_worker_run`)."""
    model_dir = str(tmp_path / "run")
    flags = [*TWO_WORKERS, f"--model_dir={model_dir}"]
    results = {}
    for tag, fault in (("stopped", "sigterm stage-1 epoch 2 step 2"), ("rerun", None)):
        second = [fault, *flags] if fault else flags
        scripts = [PROGRAM, FAULTY_PROGRAM] if fault else PROGRAM
        workers = start_cluster(tmp_path, [flags, second], tag, scripts)
        logs = finish_cluster(tmp_path, workers, tag)
        results[tag] = ([worker.returncode for worker in workers], logs)

    codes, logs = results["stopped"]
    assert codes == [128 + signal.SIGTERM] * 2, logs
    checkpoint = os.path.join(model_dir, "stage1", "checkpoints", "ckpt-1-2")
    where = f"after step 2 of 4 of epoch 2 (checkpoint {checkpoint}); rerun the same command"
    stops = [[line for line in log.splitlines() if line.startswith("stopped")] for log in logs]
    assert stops == [
        [f"stopped by a signal to another worker {where} to resume"],
        [f"stopped by SIGTERM {where} to resume"],
    ]
    assert all("Traceback" not in log for log in logs)

    codes, logs = results["rerun"]
    assert codes == [0, 0], logs
    for log in logs:
        assert f"after epoch 1 and 2 of 4 steps of epoch 2 from {checkpoint}\n" in log, log
    whole_logs, whole_dir = two_worker_run["logs"], two_worker_run["model_dir"]
    assert two_worker_run["codes"] == [0, 0], whole_logs
    digests = {digest_line(log) for log in [*logs, *whole_logs]}
    assert len(digests) == 1
    # Each epoch once; epoch 2's train metrics those of the uninterrupted epoch up to the
    # rounding of the two replicas' partial sums (the resumed sums go to one replica).
    resumed = read_history(os.path.join(model_dir, "stage1"))
    uninterrupted = read_history(os.path.join(whole_dir, "stage1"))
    assert (
        [row["epoch"] for row in resumed] == [row["epoch"] for row in uninterrupted] == ["1", "2"]
    )
    for a, b in zip(resumed, uninterrupted, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6), key


def _stopped(process) -> bool:
    """Waits until `process` stops (SIGSTOP) or ends; whether it stopped."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    process.returncode = os.waitstatus_to_exitcode(status)
    return False


@pytest.mark.slow(230)
def test_killed_workers_resume_from_the_chiefs_checkpoint(tmp_path):
    """Both workers killed at the start of epoch 2 (after the chief's first checkpoint and
    history row); rerun, the non-chief restores the chief's checkpoint too, and the run ends
    with epochs 1..3 and both workers on the same weights. A worker that cannot see the
    chief's --model_dir stops both.

    The workers freeze themselves there (faulty_program.STOPS) and the test kills them:
    what the kill leaves does not depend on when it lands.
    """
    model_dir = str(tmp_path / "run")
    args = [*TINY, "--epochs=3", "--strategy=multi_worker", f"--model_dir={model_dir}"]
    fault = "stop at stage-1 epoch 2"
    workers = start_cluster(tmp_path, [[fault, *args]] * 2, "first", FAULTY_PROGRAM)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        # The chief's state is the run's: the non-chief writes only to its scratch.
        chief_stopped = pool.submit(_stopped, workers[0]).result(SUBPROCESS_TIMEOUT)
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGKILL)
        pool.shutdown()
    logs = finish_cluster(tmp_path, workers, "first")
    assert chief_stopped, logs
    assert [w.returncode for w in workers] == [-signal.SIGKILL] * 2, logs
    done = history_epochs(os.path.join(model_dir, "stage1"))
    assert done == [1], done

    # The non-chief's --model_dir is another (empty) directory: it restores nothing while
    # the chief restores epoch 1. Both workers stop with the same message, exit 1.
    elsewhere = [*args[:-1], f"--model_dir={tmp_path / 'elsewhere'}"]
    workers = start_cluster(tmp_path, [args, elsewhere], "apart")
    logs = finish_cluster(tmp_path, workers, "apart")
    assert [w.returncode for w in workers] == [1, 1], logs
    for log in logs:
        assert "error: the workers restored different epochs" in log, log

    workers = start_cluster(tmp_path, [args, args], "rerun")
    logs = finish_cluster(tmp_path, workers, "rerun")
    assert [w.returncode for w in workers] == [0, 0], logs
    checkpoint = os.path.join(model_dir, "stage1", "checkpoints", "ckpt-1")
    for log in logs:
        assert f"Resuming stage 1 after epoch 1 from {checkpoint}\n" in log, log
    assert digest_line(logs[0]) == digest_line(logs[1])
    assert history_epochs(os.path.join(model_dir, "stage1")) == [1, 2, 3]
    assert optimizer_iterations(model_dir) == 3 * 64 // 16
