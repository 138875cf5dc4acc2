"""Tests for the signal propagation command (train/spp.py, `larq-nobn-spp`)."""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import zoo
from larq_nobn.train import data, spp


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    # 8x8 (not the command's default 32): what is checked does not depend on the size.
    _, test, _ = data.load("digits", global_batch_size=16, image_size=8)
    return next(iter(test))[0].numpy()


@pytest.mark.slow(45)
def test_command_line_plots_the_variants_and_a_trained_model(tmp_path, capsys, digits):
    """`larq-nobn-spp --trained nobn=PATH`: the three variants at init and the
    saved model, measured on the same images (its printed numbers are its statistics)."""
    tf.keras.utils.set_random_seed(3)
    model = zoo.get_model(
        "reactnet18_nobn", stage=1, stem="cifar", input_shape=(8, 8, 3), num_classes=10
    )
    for variable in model.trainable_variables:  # "trained": away from the initial values
        variable.assign(variable * 1.5 + 0.01)
    path = str(tmp_path / "model.keras")
    model.save(path)
    png = tmp_path / "spp.png"
    argv = ["--backbone=reactnet18", "--image_size=8", "--images=16", f"--out={png}"]
    argv += [f"--trained=nobn={path}"]
    capsys.readouterr()
    assert spp.main(argv) == 0

    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    trained = [line for line in lines if line[0] == "nobn(trained)"]
    layers = zoo.signal_propagation_layers(model)
    expected = larq_nobn.signal_propagation(model, digits, training=True, **layers)
    assert [line[1] for line in trained] == [s.name for s in expected]
    for line, stats in zip(trained, expected, strict=True):
        values = [stats.squared_mean, stats.variance, stats.residual_variance]
        np.testing.assert_allclose([float(v) for v in line[2:]], values, rtol=1e-3)
    assert sum(line[0] in ("bn", "nobn", "none") for line in lines) == 3 * 16
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert spp.main(["--backbone=reactnet18", f"--trained=bnn={path}", f"--out={png}"]) == 2
    assert "VARIANT=PATH" in capsys.readouterr().err
    assert spp.main(["--backbone=reactnet18", f"--trained=none={path}", f"--out={png}"]) == 2
    assert "not reactnet18_none" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "error: --out is required"),
        (["--out=x.png", "--backbone=resnet"], "error: unknown --backbone 'resnet'; valid"),
        (["--out=x.png", "--images=0"], "error: --images must be positive, got 0"),
        (["--out=x.png", "--stage=3"], "error: unknown --stage 3; valid names: 1, 2"),
        (["--out=x.png", "--nope=1"], "error: Unknown command line flag 'nope'"),
        (["--out=x.png", "stray"], "error: unexpected arguments: stray"),
    ],
)
def test_bad_flags_are_one_error_line_and_exit_code_2(argv, message, capsys):
    assert spp.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
