"""Tests for the training program train/main.py: input errors, outputs, stages, distillation.

The runs use ReActNet-18 (no BN) with the CIFAR stem on small images (8x8 or 16x16: the
weights do not depend on the input size) so that each takes well under a minute on 2 CPU
cores.
"""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from matplotlib import image

from larq_nobn import export, zoo
from larq_nobn.train import data, options
from larq_nobn.train import main as main_mod
from tests.train.program import (
    REPO,
    error_line,
    mock_data,
    offline,
    read_history,
    run_main,
    snapshot,
)

MODEL = ["--model=reactnet18_nobn", "--stem=cifar"]
# Validation must refuse these before anything runs; were it not to, they would train fast.
FAST = [*MODEL, "--dataset=digits", "--stages=1", "--epochs=1", "--batch_size=32"]
FAST += ["--train_subset=64", "--image_size=8", "--verbose=0"]
# The end-to-end run: learns the digits to ~0.8 test accuracy in 2 epochs (~50 s).
TRAINED = [*MODEL, "--dataset=digits", "--stages=1", "--epochs=2", "--batch_size=32"]
TRAINED += ["--train_subset=512", "--image_size=16", "--verbose=0"]


def model_weights(path: str) -> list[np.ndarray]:
    """The weights saved in a stage's `model.keras` (read without rebuilding the model)."""
    model = zoo.get_model(
        "reactnet18_nobn", stage=1, stem="cifar", input_shape=(8, 8, 3), num_classes=10
    )
    model.load_weights(path)
    return model.get_weights()


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """The model_dir of one tiny real training run (stage 1 on the digits)."""
    model_dir = str(tmp_path_factory.mktemp("trained") / "run")
    assert run_main(*TRAINED, f"--model_dir={model_dir}") == 0
    return model_dir


# ----------------------------------------------------------------------------- bad input


def _bad_inputs():
    # (id, flags, substrings of the error, files to put in --model_dir first)
    finished = {"metrics.json": json.dumps({"test_accuracy": 0.5})}
    other_run = {"config.json": json.dumps({"model": "reactnet_nobn"})}
    return [
        ("model", ["--model=nope"], ["'nope'", "reactnet18_nobn", "reactnet_nobn", "resnet50"], {}),
        ("dataset", ["--dataset=nope"], ["'nope'", "digits", "synthetic"], {}),
        ("epochs", ["--epochs=0"], ["--epochs", "positive"], {}),
        ("batch_size", ["--batch_size=-1"], ["--batch_size", "-1"], {}),
        ("learning_rate", ["--learning_rate=0"], ["--learning_rate", "positive"], {}),
        ("stages", ["--stages=3"], ["--stages"], {}),
        ("stages_order", ["--stages=2,1"], ["--stages", "increasing"], {}),
        ("stages_text", ["--stages=one"], ["--stages", "one"], {}),
        ("loss", ["--loss=mse"], ["--loss", "'mse'", "kd"], {}),
        ("stem", ["--stem=tiny"], ["--stem", "'tiny'"], {}),
        ("kd_no_teacher", ["--loss=kd"], ["--loss kd", "--teacher"], {}),
        (
            "missing_teacher",
            ["--loss=kd", "--teacher={tmp}/no_teacher"],
            ["--teacher", "no_teacher", "no such file", "resnet50", "convnext_base"],
            {},
        ),
        (
            "unknown_teacher_name",
            ["--loss=kd", "--teacher=resnet34"],
            ["--teacher resnet34", "resnet50", "efficientnetv2_s", "convnext_tiny"],
            {},
        ),
        ("teacher_without_kd", ["--teacher=resnet50"], ["--teacher", "--loss kd"], {}),
        (
            "imagenet_teacher_for_10_classes",
            ["--loss=kd", "--teacher=resnet50"],
            ["--teacher resnet50", "1000", "digits has 10", "--model resnet50"],
            {},
        ),
        (
            "imagenet_weights_for_a_zoo_model",
            ["--init_from=imagenet"],
            ["--init_from imagenet", "applications"],
            {},
        ),
        ("application_in_two_stages", ["--model=resnet50", "--stages=1,2"], ["--stages 1"], {}),
        (
            "application_below_32_pixels",
            ["--model=resnet50"],  # FAST's images are 8x8
            ["--model resnet50", "at least 32"],
            {},
        ),
        (
            "missing_init_from",
            ["--init_from={tmp}/no.weights.h5"],
            ["--init_from", "no.weights.h5", "does not exist"],
            {},
        ),
        ("finished", [], ["finished"], finished),
        ("other_flags", [], ["unfinished", "model"], other_run),
    ]


@pytest.mark.parametrize(
    "flags, expected, files",
    [case[1:] for case in _bad_inputs()],
    ids=[case[0] for case in _bad_inputs()],
)
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, flags, expected, files):
    model_dir = tmp_path / "out"
    model_dir.mkdir()
    (model_dir / "marker.txt").write_text("keep me")
    for name, text in files.items():
        (model_dir / name).write_text(text)
    before = snapshot(model_dir)
    capsys.readouterr()

    flags = [f.format(tmp=tmp_path) for f in flags]
    code = run_main(*FAST, *flags, f"--model_dir={model_dir}")

    assert code == 2
    line = error_line(capsys)
    for part in expected:
        assert part in line, (part, line)
    assert snapshot(model_dir) == before


def test_unexpected_positional_argument(capsys):
    main_mod.FLAGS.unparse_flags()
    try:
        main_mod.FLAGS(["main.py", *FAST])
        assert main_mod.main(["main.py", "stray"]) == 2
    finally:
        main_mod.FLAGS.unparse_flags()
    assert "stray" in error_line(capsys)


def test_init_from_another_architecture(tmp_path, capsys):
    other = zoo.get_model("reactnet_nobn", stage=1, input_shape=(32, 32, 3), num_classes=10)
    weights = str(tmp_path / "reactnet_a.weights.h5")
    other.save_weights(weights)
    model_dir = tmp_path / "out"
    model_dir.mkdir()
    (model_dir / "marker.txt").write_text("keep me")
    before = snapshot(model_dir)
    capsys.readouterr()

    code = run_main(*FAST, f"--init_from={weights}", f"--model_dir={model_dir}")

    assert code == 2
    line = error_line(capsys)
    assert "--init_from" in line and "reactnet_a.weights.h5" in line
    assert "does not fit" in line
    assert snapshot(model_dir) == before


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "train/main.py"],  # from a checkout
        [sys.executable, "-m", "larq_nobn.train"],
        [os.path.join(os.path.dirname(sys.executable), "larq-nobn-train")],  # the command
    ],
)
def test_command_line_exit_code_and_error_line(tmp_path, command):
    """Every way to start the program runs it, and a user error is the one line on stderr:
    no TensorFlow start-up noise before it (CUDA plugins, cuInit, CPU features)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    model_dir = tmp_path / "out"
    result = subprocess.run(
        [*command, "--model", "nope", f"--model_dir={model_dir}"],
        cwd=REPO if command[1:2] == ["train/main.py"] else tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: unknown --model 'nope'")
    assert "reactnet18_nobn" in lines[0]
    assert not model_dir.exists()


# The bad inputs that need no TensorFlow to be refused (the others need the data's shape,
# a strategy's replicas or a model): refused before it is imported.
TENSORFLOW_MODULES = {"tensorflow", "tf_keras", "keras", "larq"}
BEFORE_TENSORFLOW = {
    "model",
    "dataset",
    "epochs",
    "batch_size",
    "learning_rate",
    "stages",
    "stages_order",
    "stages_text",
    "loss",
    "stem",
    "kd_no_teacher",
    "missing_teacher",
    "unknown_teacher_name",
    "teacher_without_kd",
    "imagenet_weights_for_a_zoo_model",
    "application_in_two_stages",
    "missing_init_from",
    "finished",
    "other_flags",
}


def test_bad_flags_answer_before_tensorflow_is_imported(tmp_path):
    """Every bad input that needs no TensorFlow is one line with exit code 2 from a process
    that never imports TensorFlow (whose import takes seconds): `-X importtime` lists every
    module the program imported, on stderr before the error line."""
    from tests.train.test_distribute import BAD_INPUTS

    cases = [(id_, flags, files) for id_, flags, _, files in _bad_inputs()]
    cases = [case for case in cases if case[0] in BEFORE_TENSORFLOW]
    cases += [(flags[0], flags, {}) for flags, message in BAD_INPUTS if "unknown" in message]
    assert len(cases) == len(BEFORE_TENSORFLOW) + 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    for id_, flags, files in cases:
        model_dir = tmp_path / id_.strip("-=") / "out"
        model_dir.mkdir(parents=True)
        for name, text in files.items():
            (model_dir / name).write_text(text)
        flags = [f.format(tmp=tmp_path) for f in flags]
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "train/main.py", *FAST, *flags]
            + [f"--model_dir={model_dir}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, (id_, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        imported = [
            line.split("|")[-1].strip() for line in lines if line.startswith("import time:")
        ]
        others = [line for line in lines if not line.startswith("import time:")]
        assert len(others) == 1 and others[0].startswith("error: "), (id_, others)
        assert "absl.flags" in imported and "larq_nobn.train.options" in imported, id_
        assert not [m for m in imported if m.split(".")[0] in TENSORFLOW_MODULES], id_


def test_flags_are_checked_without_tensorflow():
    code = (
        "import sys\n"
        "from larq_nobn.train import main\n"
        "main.FLAGS(['main.py', '--model=nope'])\n"
        "code = main.main(['main.py'])\n"
        "assert 'tensorflow' not in sys.modules, 'imported TensorFlow'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: unknown --model 'nope'")


# ----------------------------------------------------------------------------- end to end


def test_trained_run_outputs(trained):
    names = set(os.listdir(trained))
    assert {"config.json", "metrics.json", "curves.png", "model.keras", "stage1"} <= names
    assert "stage2" not in names

    with open(os.path.join(trained, "metrics.json")) as f:
        metrics = json.load(f)
    # 10 classes: chance is 0.1; this run reaches ~0.8.
    assert 0.5 <= metrics["test_accuracy"] <= 1.0
    assert np.isfinite(metrics["test_loss"])
    assert set(metrics["stages"]) == {"1"}
    assert metrics["stages"]["1"]["test_accuracy"] == metrics["test_accuracy"]
    assert metrics["stages"]["1"]["epochs"] == 2
    config = metrics["config"]
    assert config["model"] == "reactnet18_nobn" and config["dataset"] == "digits"
    assert config["epochs"] == 2 and config["batch_size"] == 32 and config["stages"] == [1]
    assert config["train_subset"] == 512 and config["model_dir"] == trained
    with open(os.path.join(trained, "config.json")) as f:
        assert json.load(f) == config

    # The curves (what they show: tests/train/test_outputs.py), as plotted.
    assert image.imread(os.path.join(trained, "curves.png")).shape[:2] == (400, 1100)

    stage = os.path.join(trained, "stage1")
    history = read_history(stage)
    assert [int(row["epoch"]) for row in history] == [1, 2]
    for row in history:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert np.isfinite(float(row[key]))
    assert float(history[-1]["val_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    assert float(history[-1]["loss"]) < float(history[0]["loss"])

    # A finished stage keeps its model, history, metrics and logs, not its checkpoints.
    assert not os.path.exists(os.path.join(stage, "checkpoints"))
    assert metrics["stages"]["1"]["steps"] == 2 * 512 // 32
    assert set(os.listdir(stage)) == {"model.keras", "history.csv", "metrics.json", "logs"}
    # The run's model.keras is the last stage's (one file on disk where links work).
    assert os.path.samefile(
        os.path.join(trained, "model.keras"), os.path.join(stage, "model.keras")
    )

    logs = os.path.join(stage, "logs")
    events = [f for _, _, files in os.walk(logs) for f in files if "tfevents" in f]
    assert len(events) >= 2  # train and validation
    assert os.path.isfile(os.path.join(stage, "model.keras"))
    assert os.path.isfile(os.path.join(stage, "metrics.json"))


def test_config_json_holds_every_flag(trained):
    with open(os.path.join(trained, "config.json")) as f:
        saved = json.load(f)
    flag_names = {flag.name for flag in main_mod.FLAGS.get_flags_for_module(options)}
    assert set(saved) == flag_names == {option.name for option in options.OPTIONS}
    # TRAINED's flags, and the defaults of the others.
    assert saved["verbose"] == 0 and saved["stem"] == "cifar" and saved["stages"] == [1]
    assert saved["deterministic"] is False and saved["seed"] == 0


def test_saved_model_reproduces_test_accuracy(trained):
    model = tf.keras.models.load_model(os.path.join(trained, "model.keras"))
    # The test images are normalized with the statistics of the train subset.
    _, test, _ = data.load("digits", global_batch_size=120, image_size=16, train_subset=512)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in test], strict=True)
    logits = model.predict(np.concatenate(images), verbose=0)
    assert logits.shape == (360, 10) and np.all(np.isfinite(logits))
    accuracy = np.mean(np.argmax(logits, axis=-1) == np.concatenate(labels))
    with open(os.path.join(trained, "metrics.json")) as f:
        assert accuracy == pytest.approx(json.load(f)["test_accuracy"], abs=1e-6)


def test_rerun_into_finished_run_is_refused(trained, capsys):
    before = snapshot(trained)
    capsys.readouterr()
    assert run_main(*TRAINED, f"--model_dir={trained}") == 2
    line = error_line(capsys)
    assert "finished" in line and trained in line
    assert snapshot(trained) == before


@pytest.fixture(scope="module")
def two_stages(trained, tmp_path_factory) -> tuple[str, str]:
    """(model_dir, init): `--stages=1,2 --init_from=init`, init being the trained run's
    stage-1 model; with --export_tflite (one run for both tests below: the export is the
    last stage's student, as in a `--stages=2` run)."""
    init = os.path.join(trained, "stage1", "model.keras")
    model_dir = str(tmp_path_factory.mktemp("two_stages") / "run")
    flags = [*MODEL, "--dataset=digits", "--stages=1,2", "--epochs=1", "--batch_size=32"]
    flags += ["--train_subset=64", "--image_size=8", "--learning_rate=1e-6", "--verbose=0"]
    flags.append("--export_tflite")
    assert run_main(*flags, f"--init_from={init}", f"--model_dir={model_dir}") == 0
    return model_dir, init


def test_init_from_and_stage_two_start_from_stage_one(two_stages):
    """`--stages=1,2 --init_from=A`: stage 1 starts from A, stage 2 from stage 1, and trains.

    With a learning rate of 1e-6 each Adam step moves a weight by about 1e-6, so after the
    two steps of a stage the weights are within 1e-5 of where the stage started, yet not
    equal to them.
    """
    model_dir, init = two_stages
    fresh = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(8, 8, 3), num_classes=10
    ).get_weights()
    start = model_weights(init)
    stage1 = model_weights(os.path.join(model_dir, "stage1", "model.keras"))
    stage2 = model_weights(os.path.join(model_dir, "stage2", "model.keras"))
    assert max_abs_diff(fresh, start) > 0.01
    assert max_abs_diff(fresh, stage2) > 0.01
    assert 0 < max_abs_diff(stage1, start) < 1e-5
    assert 0 < max_abs_diff(stage2, stage1) < 1e-5  # stage 2 trained, from stage 1

    for stage in (1, 2):
        stage_dir = os.path.join(model_dir, f"stage{stage}")
        assert os.path.isfile(os.path.join(stage_dir, "metrics.json"))
        assert not os.path.exists(os.path.join(stage_dir, "checkpoints"))  # finished
        history = read_history(stage_dir)
        assert [int(row["epoch"]) for row in history] == [1]
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics["stages"]) == {"1", "2"}
    assert metrics["test_accuracy"] == metrics["stages"]["2"]["test_accuracy"]
    assert metrics["config"]["stages"] == [1, 2]
    assert metrics["config"]["init_from"] == init
    assert os.path.isfile(os.path.join(model_dir, "curves.png"))


@pytest.mark.slow(180)
def test_a_teacher_trained_by_the_program_distills_a_student(tmp_path):
    """`--model resnet50` trains a full-precision application (new 10-class head, the
    adapter in front) with its SGD recipe in one stage; its `model.keras` is then accepted
    by `--teacher`, and the kd student trains and saves alone. One step each."""
    data_flags = ["--dataset=digits", "--train_subset=32", "--image_size=32", "--verbose=0"]
    data_flags += ["--epochs=1", "--batch_size=32"]
    teacher_dir = str(tmp_path / "teacher")
    assert run_main("--model=resnet50", *data_flags, f"--model_dir={teacher_dir}") == 0
    with open(os.path.join(teacher_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(metrics["stages"]) == {"1"} and metrics["stages"]["1"]["steps"] == 1
    assert metrics["config"]["learning_rate"] == 0.1 * 32 / 256  # scaled to the batch
    assert metrics["config"]["stages"] == [1]
    teacher_file = os.path.join(teacher_dir, "model.keras")
    with zipfile.ZipFile(teacher_file) as archive:  # read without loading 90 MB of weights
        saved = json.loads(archive.read("config.json"))
    layers = saved["config"]["layers"]
    assert [layer["class_name"] for layer in layers[1:3]] == ["ApplicationInput", "Functional"]
    assert layers[-1]["config"]["name"] == "fc" and layers[-1]["config"]["units"] == 10

    student_dir = str(tmp_path / "student")
    flags = [*MODEL, *data_flags, "--stages=1", "--loss=kd", f"--teacher={teacher_file}"]
    assert run_main(*flags, f"--model_dir={student_dir}") == 0
    history = read_history(os.path.join(student_dir, "stage1"))
    assert len(history) == 1 and np.isfinite(float(history[0]["loss"]))
    with open(os.path.join(student_dir, "metrics.json")) as f:
        assert json.load(f)["config"]["teacher"] == teacher_file
    with zipfile.ZipFile(os.path.join(student_dir, "model.keras")) as archive:
        student = json.loads(archive.read("config.json"))
    assert student["config"]["name"] == "reactnet18_nobn"  # the student alone


def test_imagenet_weights_offline_are_one_line_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    looked_up = offline(monkeypatch, tmp_path)
    capsys.readouterr()
    flags = ["--model=resnet50", "--init_from=imagenet", "--image_size=32"]
    code = run_main(*FAST, *flags, f"--model_dir={tmp_path / 'out'}")
    assert code == 2
    assert looked_up == ["storage.googleapis.com"]  # one attempt to download
    line = error_line(capsys)
    for part in (
        "--init_from resnet50",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        str(tmp_path / ".keras" / "models"),
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    ):
        assert part in line, (part, line)
    assert not os.path.exists(tmp_path / "out")


def test_imagenet_weights_for_imagenet_itself_point_to_the_teacher(tmp_path, capsys):
    """Fine-tuning an application from its ImageNet weights on ImageNet would rebuild the
    published model: refused with a pointer to `--teacher`, before anything is written."""
    capsys.readouterr()
    flags = ["--model=resnet50", "--init_from=imagenet", "--dataset=imagenet2012"]
    with mock_data(num_examples=4):
        code = run_main(*flags, "--image_size=32", "--batch_size=2", f"--model_dir={tmp_path}/o")
    assert code == 2
    line = error_line(capsys)
    assert "--init_from imagenet on imagenet2012" in line and "--teacher resnet50" in line
    assert not os.path.exists(tmp_path / "o")


def test_a_teacher_for_other_images_is_refused_before_training(tmp_path, capsys):
    teacher = tf.keras.Sequential(
        [tf.keras.Input((16, 16, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)]
    )
    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    capsys.readouterr()
    code = run_main(*FAST, "--loss=kd", f"--teacher={path}", f"--model_dir={tmp_path / 'out'}")
    assert code == 2
    line = error_line(capsys)
    assert "(16, 16, 3)" in line and "(8, 8, 3)" in line and "--image_size" in line
    assert not os.path.exists(tmp_path / "out")


def test_export_tflite_writes_a_binary_flatbuffer(two_stages):
    model_dir, _ = two_stages
    assert json.load(open(os.path.join(model_dir, "config.json")))["export_tflite"] is True
    with open(os.path.join(model_dir, "model.tflite"), "rb") as f:
        flatbuffer = f.read()
    assert export.op_counts(flatbuffer)["LceBconv2d"] == 16
