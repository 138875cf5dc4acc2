"""Tests for the signal propagation statistics (larq_nobn.spp) and their plot (spp_plot)."""

import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import spp_plot, zoo
from larq_nobn.spp import BlockStatistics
from larq_nobn.zoo import reactnet18, reactnet_a

ALPHA = 0.2
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


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from larq_nobn.train import data

    _, test, _ = data.load("digits", global_batch_size=16, image_size=32)
    return next(iter(test))[0].numpy()


@pytest.fixture(scope="module")
def reactnet18_statistics(digits) -> dict[str, list[BlockStatistics]]:
    statistics = {}
    for norm in ("nobn", "none"):
        tf.keras.utils.set_random_seed(0)
        model = zoo.get_model(
            f"reactnet18_{norm}", stage=1, stem="cifar", input_shape=(32, 32, 3), num_classes=10
        )
        statistics[norm] = larq_nobn.signal_propagation(model, digits)
    tf.keras.backend.clear_session()
    return statistics


def _stages() -> list[list[int]]:
    """0-based block indices of ReActNet-18's stages: a new stage at every downsample block."""
    stages: list[list[int]] = []
    for i, spec in enumerate(reactnet18.block_specs(ALPHA)):
        if not stages or spec.downsample:
            stages.append([])
        stages[-1].append(i)
    return stages


# Measured at initialization, stage 1, cifar stem, the first 16 digits test images at 32x32,
# seeds 0-5 (the tests use seed 0):
# - none: block output variance 0.113-0.585; it rises at every block of every stage, the
#   last block of a stage has 1.76-3.15x the first's; residual variance 0.180-0.365.
# - nobn: block output variance 0.0187-0.0846 (none's is 3.3-7.6x larger, block by block);
#   residual variance 0.0253-0.0392 (about alpha^2 = 0.04); at the downsample blocks 5, 9
#   and 13 the variance drops to 0.33-0.44x the block before's.


def test_reactnet18_none_grows_within_every_stage(reactnet18_statistics):
    variance = np.array([s.variance for s in reactnet18_statistics["none"]])
    assert [s.name for s in reactnet18_statistics["none"]] == [f"block{i}" for i in range(1, 17)]
    assert len(_stages()) == 4
    for stage in _stages():
        assert np.all(np.diff(variance[stage]) > 0), variance[stage]
        assert variance[stage[-1]] > 1.4 * variance[stage[0]], variance[stage]


def test_reactnet18_nobn_stays_in_its_band_below_none(reactnet18_statistics):
    nobn, none = reactnet18_statistics["nobn"], reactnet18_statistics["none"]
    variance = np.array([s.variance for s in nobn])
    residual = np.array([s.residual_variance for s in nobn])
    assert np.all((variance > 0.01) & (variance < 0.15)), variance
    assert np.all((residual > 0.5 * ALPHA**2) & (residual < 1.25 * ALPHA**2)), residual
    assert np.all(np.array([s.variance for s in none]) > 2 * variance)
    assert np.all(np.array([s.residual_variance for s in none]) > 3 * residual)


def test_reactnet18_nobn_variance_drops_where_beta_resets(reactnet18_statistics):
    variance = np.array([s.variance for s in reactnet18_statistics["nobn"]])
    resets = [stage[0] for stage in _stages()[1:]]
    assert resets == [4, 8, 12]
    for i in resets:
        assert variance[i] < 0.6 * variance[i - 1], (i + 1, variance[i - 1 : i + 1])


def test_reactnet_a_entries_are_both_additions_after_batch_norm():
    tf.keras.utils.set_random_seed(0)
    model = zoo.get_model("reactnet_a_bn", stage=1, input_shape=(64, 64, 3), num_classes=10)
    images = _images((8, 64, 64, 3))
    blocks, residuals = [], []
    for i, spec in enumerate(reactnet_a.block_specs(ALPHA), 1):
        halves = ["_1", "_2"] if spec.out_channels != spec.in_channels else [""]
        blocks += [f"block{i}_rprelu1_bias_out", f"block{i}_rprelu2_bias_out"]
        residuals += [[f"block{i}_conv3x3_bn"], [f"block{i}_conv1x1{h}_bn" for h in halves]]
    # Inference mode: batch norm is the identity at initialization, so the halves differ.
    explicit = larq_nobn.signal_propagation(
        model, images, block_outputs=blocks, residual_outputs=residuals
    )
    np.testing.assert_allclose(
        _values(larq_nobn.signal_propagation(model, images)), _values(explicit), rtol=1e-5
    )
    # Training mode: every branch is normalized (the raw convolutions have variance ~1/3).
    statistics = larq_nobn.signal_propagation(model, images, training=True)
    assert [s.name for s in statistics] == [f"block{i}{ab}" for i in range(1, 14) for ab in "ab"]
    np.testing.assert_allclose([s.residual_variance for s in statistics], 1.0, rtol=2e-2)


def _values(statistics: list[BlockStatistics]) -> np.ndarray:
    return np.array([dataclasses.astuple(s)[1:] for s in statistics])


def _fake_statistics(scale: float, blocks: int = 6) -> list[BlockStatistics]:
    return [
        BlockStatistics(f"block{i}", scale * 0.1 * i, scale * i, scale * 0.5)
        for i in range(1, blocks + 1)
    ]


def test_plot_writes_a_png_for_three_variants(tmp_path):
    path = tmp_path / "spp.png"
    spp_plot.plot_signal_propagation(
        {"bn": _fake_statistics(1.0), "nobn": _fake_statistics(0.05), "none": _fake_statistics(3)},
        path,
        trained={"none": _fake_statistics(30.0)},
        transitions=["block3"],
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    assert image.imread(path).shape[:2] == (460, 1500)
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
    spp_plot.write_signal_propagation_plot(
        models, _images(), path, trained={"nobn": _tiny_model(True)[0]}, **TINY
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transition_blocks_follow_the_beta_schedule():
    assert spp_plot.transition_blocks("reactnet18") == ["block5", "block9", "block13"]
    assert spp_plot.transition_blocks("reactnet_a") == ["block2a", "block4a", "block6a", "block12a"]
    with pytest.raises(ValueError, match="backbone"):
        spp_plot.transition_blocks("resnet")


def test_command_line_plots_the_variants_and_a_trained_model(tmp_path, capsys, digits):
    """`python -m larq_nobn.spp_plot --trained nobn=PATH`: the three variants at init and the
    saved model, measured on the same images (its printed numbers are its statistics)."""
    tf.keras.utils.set_random_seed(3)
    model = zoo.get_model(
        "reactnet18_nobn", stage=1, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )
    for variable in model.trainable_variables:  # "trained": away from the initial values
        variable.assign(variable * 1.5 + 0.01)
    path = str(tmp_path / "model.keras")
    model.save(path)
    png = tmp_path / "spp.png"
    argv = ["--backbone=reactnet18", "--images=16", f"--trained=nobn={path}", f"--out={png}"]
    capsys.readouterr()
    spp_plot.main(argv)

    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    trained = [line for line in lines if line[0] == "nobn(trained)"]
    expected = larq_nobn.signal_propagation(model, digits, training=True)
    assert [line[1] for line in trained] == [s.name for s in expected]
    for line, stats in zip(trained, expected, strict=True):
        values = [stats.squared_mean, stats.variance, stats.residual_variance]
        np.testing.assert_allclose([float(v) for v in line[2:]], values, rtol=1e-3)
    assert sum(line[0] in ("bn", "nobn", "none") for line in lines) == 3 * 16
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="VARIANT=PATH"):
        spp_plot.main(["--backbone=reactnet18", f"--trained=bnn={path}", f"--out={png}"])
    with pytest.raises(SystemExit, match="not reactnet18_none"):
        spp_plot.main(["--backbone=reactnet18", f"--trained=none={path}", f"--out={png}"])


def test_stage_two_models_have_the_same_blocks(digits):
    """Stage 2 (binary weights) keeps the layer names: the same 16 entries, measured."""
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )
    statistics = larq_nobn.signal_propagation(model, digits)
    assert [s.name for s in statistics] == [f"block{i}" for i in range(1, 17)]
    values = [v for s in statistics for v in (s.squared_mean, s.variance, s.residual_variance)]
    assert np.all(np.isfinite(values)) and min(values) > 0
