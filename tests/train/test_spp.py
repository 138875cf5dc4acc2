"""Tests for the signal propagation command (train/spp.py, `larq-nobn-spp`)."""

import numpy as np
import pytest
import tensorflow as tf

from larq_nobn import spp_plot, zoo
from larq_nobn.train import data, spp

SIZE = 8  # not the command's default 32: what is checked does not depend on the size


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    _, test, _ = data.load("digits", global_batch_size=16, image_size=SIZE)
    return next(iter(test))[0].numpy()


def reactnet18(norm: str) -> tf.keras.Model:
    return zoo.get_model(
        f"reactnet18_{norm}", stage=1, stem="cifar", input_shape=(SIZE, SIZE, 3), num_classes=10
    )


def block_statistics(model: tf.keras.Model, images: np.ndarray) -> np.ndarray:
    """Per block of a BN-free ReActNet-18, by its layer names and NumPy (not by the library):
    the average channel squared mean and variance of the residual stream after the block
    and the average channel variance of the (alpha-scaled) 3x3 convolution, in training
    mode. Shape (16, 3)."""
    names = [(f"block{i}_rprelu_bias_out", f"block{i}_conv3x3") for i in range(1, 17)]
    layers = [model.get_layer(name).output for pair in names for name in pair]
    outputs = tf.keras.Model(model.inputs, layers)(images, training=True)
    rows = []
    for block, residual in zip(outputs[::2], outputs[1::2], strict=True):
        block, residual = np.asarray(block, np.float64), np.asarray(residual, np.float64)
        rows.append(
            [
                np.mean(block.mean(axis=(0, 1, 2)) ** 2),
                np.mean(block.var(axis=(0, 1, 2))),
                np.mean(residual.var(axis=(0, 1, 2))),
            ]
        )
    return np.array(rows)


@pytest.mark.slow(45)
def test_command_line_plots_the_variants_and_a_trained_model(tmp_path, capsys, digits, monkeypatch):
    """`larq-nobn-spp --trained nobn=PATH`: the three variants at initialization (from
    --seed) and the saved model, measured on the same images in training mode; printed
    and plotted."""
    model = reactnet18("nobn")
    for variable in model.trainable_variables:  # "trained": away from the initial values
        variable.assign(variable * 1.5 + 0.01)
    path = str(tmp_path / "model.keras")
    model.save(path)
    figures = []
    plot = spp_plot.plot_signal_propagation  # the command imports it when it plots
    monkeypatch.setattr(
        spp_plot, "plot_signal_propagation", lambda *a, **k: figures.append(plot(*a, **k))
    )
    png = tmp_path / "spp.png"
    argv = ["--backbone=reactnet18", f"--image_size={SIZE}", "--images=16", f"--out={png}"]
    argv += ["--seed=0", f"--trained=nobn={path}"]
    capsys.readouterr()
    assert spp.main(argv) == 0

    tf.keras.utils.set_random_seed(0)
    expected = {"nobn(trained)": block_statistics(model, digits)}
    expected["nobn"] = block_statistics(reactnet18("nobn"), digits)
    assert not np.allclose(expected["nobn"], expected["nobn(trained)"], rtol=0.1)
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert sum(line[0] in ("bn", "nobn", "none") for line in lines) == 3 * 16
    for label, values in expected.items():
        printed = [line for line in lines if line[0] == label]
        assert [line[1] for line in printed] == [f"block{i}" for i in range(1, 17)]
        # Printed to 4 significant digits.
        np.testing.assert_allclose(
            [[float(v) for v in line[2:]] for line in printed], values, rtol=1e-3
        )

    (figure,) = figures
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for ax, column in zip(figure.axes, expected["nobn"].T, strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert {"bn (init)", "nobn (init)", "none (init)", "nobn (trained)"} <= set(lines)
        np.testing.assert_allclose(lines["nobn (init)"].get_ydata(), column, rtol=1e-5)
    for ax, column in zip(figure.axes, expected["nobn(trained)"].T, strict=True):
        trained = [line for line in ax.get_lines() if line.get_label() == "nobn (trained)"]
        np.testing.assert_allclose(trained[0].get_ydata(), column, rtol=1e-5)
        # The stride-2 blocks, where the BN-free variant's variance is reset.
        markers = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert markers == [4, 8, 12]
    assert "seed 0" in figure._suptitle.get_text()

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
