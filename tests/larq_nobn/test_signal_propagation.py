"""Tests for the signal propagation statistics (larq_nobn.spp) and their plot (spp_plot), on
small hand-built models (the zoo's layers: tests/zoo; the command: tests/train/test_spp.py)."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import spp_plot
from larq_nobn.spp import BlockStatistics

TINY = {"block_outputs": r"(b\d)_add", "residual_outputs": r"(b\d)_conv"}


def _tiny_model(batch_norm: bool = False) -> tuple[tf.keras.Model, list[np.ndarray]]:
    """Two blocks `x + conv(x)` (conv, or conv + batch norm) with fixed 3x3 kernels."""
    kernels = [np.random.RandomState(i).normal(0, 0.4, (3, 3, 2, 2)) for i in (1, 2)]
    inputs = tf.keras.Input((5, 5, 2))
    x = inputs
    for i, kernel in enumerate(kernels, 1):
        name = f"b{i}_raw" if batch_norm else f"b{i}_conv"
        conv = tf.keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name=name)
        y = conv(x)
        conv.set_weights([kernel])
        if batch_norm:
            y = tf.keras.layers.BatchNormalization(name=f"b{i}_conv")(y)
        x = tf.keras.layers.Add(name=f"b{i}_add")([x, y])
    return tf.keras.Model(inputs, x), kernels


def _images(shape=(4, 5, 5, 2), seed=0) -> np.ndarray:
    return np.random.RandomState(seed).normal(0.5, 1.0, shape).astype(np.float32)


def _numpy_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same' 3x3 convolution (cross-correlation, as Keras) by explicit sums."""
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(3):
        for j in range(3):
            window = padded[:, i : i + x.shape[1], j : j + x.shape[2], :]
            out += window @ kernel[i, j]
    return out


def _numpy_statistics(x: np.ndarray) -> tuple[float, float]:
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return float((flat.mean(0) ** 2).mean()), float(flat.var(0).mean())


def test_statistics_equal_numpy_on_a_tiny_residual_model():
    model, kernels = _tiny_model()
    images = _images()
    x, expected = images.astype(np.float64), []
    for kernel in kernels:
        residual = _numpy_conv(x, kernel)
        x = x + residual
        expected.append((*_numpy_statistics(x), _numpy_statistics(residual)[1]))

    statistics = larq_nobn.signal_propagation(model, images, **TINY)
    assert [s.name for s in statistics] == ["b1", "b2"]
    assert all(isinstance(s, BlockStatistics) for s in statistics)
    np.testing.assert_allclose(_values(statistics), expected, rtol=1e-5)
    assert min(np.ravel(expected)) > 0.1  # the inputs' mean of 0.5: squared means matter too


def test_layer_lists_name_blocks_and_concatenate_branch_layers():
    model, _ = _tiny_model()
    images = _images()
    by_regex = larq_nobn.signal_propagation(model, images, **TINY)
    by_list = larq_nobn.signal_propagation(
        model,
        images,
        block_outputs=["b1_add", "b2_add"],
        residual_outputs=[["b1_conv", "b2_conv"], "b2_conv"],
    )
    assert [s.name for s in by_list] == ["b1_add", "b2_add"]
    assert by_list[1] == dataclasses.replace(by_regex[1], name="b2_add")
    # One branch of two layers: the variance averages over both layers' channels.
    mean_of_both = (by_regex[0].residual_variance + by_regex[1].residual_variance) / 2
    np.testing.assert_allclose(by_list[0].residual_variance, mean_of_both, rtol=1e-6)
    # A mapping: its keys name the blocks.
    blocks = {"first": "b1_add", "second": "b2_add"}
    by_mapping = larq_nobn.signal_propagation(
        model, images, block_outputs=blocks, residual_outputs=["b1_conv", "b2_conv"]
    )
    assert [s.name for s in by_mapping] == ["first", "second"]
    assert _values(by_mapping).tolist() == _values(by_regex).tolist()


def test_training_mode_uses_batch_statistics_and_restores_moving_averages():
    model, _ = _tiny_model(batch_norm=True)
    images = _images()
    before = [v.numpy() for v in model.non_trainable_variables]
    trained = larq_nobn.signal_propagation(model, images, training=True, **TINY)
    inference = larq_nobn.signal_propagation(model, images, training=False, **TINY)
    # Batch statistics: the normalized branch has variance var / (var + eps), about 1.
    np.testing.assert_allclose([s.residual_variance for s in trained], 1.0, rtol=1e-2)
    # Moving averages at their initial 0 and 1: the branch is the raw convolution.
    assert all(abs(s.residual_variance - 1.0) > 0.1 for s in inference)
    for variable, value in zip(model.non_trainable_variables, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


@pytest.mark.parametrize(
    "layers, message",
    [
        (
            {"block_outputs": r"(c\d)_add", "residual_outputs": TINY["residual_outputs"]},
            "(c\\d)_add",
        ),
        ({"block_outputs": TINY["block_outputs"], "residual_outputs": "nothing_.*"}, "nothing_.*"),
        ({"block_outputs": ["b1_add", "b9_add"], "residual_outputs": ["b1_conv"] * 2}, "b9_add"),
        ({"block_outputs": {"x": "b9_add"}, "residual_outputs": ["b1_conv"]}, "b9_add"),
        ({"block_outputs": r"(b)(\d)_add", "residual_outputs": r"(b\d)_conv"}, "2 groups"),
        ({"block_outputs": r"(b\d)_add", "residual_outputs": r"(b)\d_conv"}, "2 block outputs"),
        ({"block_outputs": r"(b\d)_add"}, "both"),
        ({}, "not a larq_nobn.zoo model"),
    ],
)
def test_bad_layer_names_raise_value_error(layers, message):
    model, _ = _tiny_model()
    with pytest.raises(ValueError, match=re.escape(message)):
        larq_nobn.signal_propagation(model, _images(), **layers)


def _values(statistics: list[BlockStatistics]) -> np.ndarray:
    return np.array([dataclasses.astuple(s)[1:] for s in statistics])


def _fake_statistics(scale: float, blocks: int = 6) -> list[BlockStatistics]:
    return [
        BlockStatistics(f"block{i}", scale * 0.1 * i, scale * i, scale * 0.5)
        for i in range(1, blocks + 1)
    ]


def _data_lines(ax) -> dict[str, tuple[str, np.ndarray]]:
    """The lines of a panel that carry a label (the vertical markers carry one only once),
    by label: (line style, y values)."""
    return {
        line.get_label(): (line.get_linestyle(), line.get_ydata())
        for line in ax.get_lines()
        if not line.get_label().startswith(("_", "stride"))
    }


def test_plot_draws_each_statistic_of_each_variant(tmp_path):
    path = tmp_path / "spp.png"
    statistics = {
        "bn": _fake_statistics(1.0),
        "nobn": _fake_statistics(0.05),
        "none": _fake_statistics(3),
    }
    trained = {"none": _fake_statistics(30.0)}
    figure = spp_plot.plot_signal_propagation(
        statistics, path, trained=trained, title="six blocks", transitions=["block3"]
    )
    assert figure._suptitle.get_text() == "six blocks"
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == [label for _, label in spp_plot.STATISTICS]
    for ax, (field, _) in zip(axes, spp_plot.STATISTICS, strict=True):
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"block{i}" for i in range(1, 7)]
        lines = _data_lines(ax)
        assert set(lines) == {"bn (init)", "nobn (init)", "none (init)", "none (trained)"}
        for label, (style, y) in lines.items():
            variant, state = label.split()
            stats = (trained if state == "(trained)" else statistics)[variant]
            assert style == ("--" if state == "(trained)" else "-")
            np.testing.assert_array_equal(y, [getattr(block, field) for block in stats])
        # One marker at the transition block (index 2); log scale where values span > 10x.
        (marker,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert list(marker.get_xdata()) == [2, 2]
        values = np.concatenate([y for _, y in lines.values()])
        log = values.min() > 0 and values.max() > 10 * values.min()
        assert ax.get_yscale() == ("log" if log else "linear")
    one = spp_plot.plot_signal_propagation({"nobn": _fake_statistics(1.0)}, path)
    assert [ax.get_yscale() for ax in one.axes] == ["linear"] * 3  # all within 10x
    from matplotlib import image

    assert image.imread(path).shape[:2] == (450, 1500)  # the last figure, as written
    assert path.stat().st_size < 250_000


def test_plot_rejects_variants_with_other_blocks(tmp_path):
    with pytest.raises(ValueError, match="blocks of 'none'"):
        spp_plot.plot_signal_propagation(
            {"nobn": _fake_statistics(1.0), "none": _fake_statistics(1.0, blocks=5)},
            tmp_path / "spp.png",
        )


def test_write_plot_measures_initial_and_trained_models(tmp_path):
    path = tmp_path / "spp.png"
    models = {norm: _tiny_model()[0] for norm in ("bn", "nobn", "none")}
    trained = _tiny_model(True)[0]
    figure = spp_plot.write_signal_propagation_plot(
        models, _images(), path, trained={"nobn": trained}, **TINY
    )
    expected = larq_nobn.signal_propagation(models["bn"], _images(), **TINY)
    expected_trained = larq_nobn.signal_propagation(trained, _images(), training=True, **TINY)
    for ax, (field, _) in zip(figure.axes, spp_plot.STATISTICS, strict=True):
        lines = _data_lines(ax)
        assert set(lines) == {"bn (init)", "nobn (init)", "none (init)", "nobn (trained)"}
        for label in ("bn (init)", "nobn (init)", "none (init)"):  # three equal models
            np.testing.assert_allclose(lines[label][1], [getattr(s, field) for s in expected])
        np.testing.assert_allclose(
            lines["nobn (trained)"][1], [getattr(s, field) for s in expected_trained]
        )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_plot_takes_each_models_layers(tmp_path):
    path = tmp_path / "spp.png"
    seen = []

    def layers_of(model):
        seen.append(model.name)
        return TINY

    models = {"nobn": _tiny_model()[0], "none": _tiny_model()[0]}
    figure = spp_plot.write_signal_propagation_plot(models, _images(), path, layers_of=layers_of)
    assert seen == [model.name for model in models.values()]
    for ax in figure.axes:
        assert set(_data_lines(ax)) == {"nobn (init)", "none (init)"}
        assert [t.get_text() for t in ax.get_xticklabels()] == ["b1", "b2"]
