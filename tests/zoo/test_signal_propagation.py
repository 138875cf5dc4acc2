"""Tests for the zoo's signal propagation layers (larq_nobn.zoo.spp), measured on digits."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import zoo
from larq_nobn.spp import BlockStatistics
from larq_nobn.zoo import reactnet18, reactnet_a

ALPHA = 0.2


def _images(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).normal(0.5, 1.0, shape).astype(np.float32)


def _spp(model: tf.keras.Model, images, **kwargs) -> list[BlockStatistics]:
    return larq_nobn.signal_propagation(
        model, images, **kwargs, **zoo.signal_propagation_layers(model)
    )


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
        statistics[norm] = _spp(model, digits)
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
    np.testing.assert_allclose(_values(_spp(model, images)), _values(explicit), rtol=1e-5)
    # Training mode: every branch is normalized (the raw convolutions have variance ~1/3).
    statistics = _spp(model, images, training=True)
    assert [s.name for s in statistics] == [f"block{i}{ab}" for i in range(1, 14) for ab in "ab"]
    np.testing.assert_allclose([s.residual_variance for s in statistics], 1.0, rtol=2e-2)


def _values(statistics: list[BlockStatistics]) -> np.ndarray:
    return np.array([dataclasses.astuple(s)[1:] for s in statistics])


def test_transition_blocks_follow_the_beta_schedule():
    assert zoo.transition_blocks("reactnet18") == ["block5", "block9", "block13"]
    assert zoo.transition_blocks("reactnet_a") == ["block2a", "block4a", "block6a", "block12a"]
    with pytest.raises(ValueError, match="backbone"):
        zoo.transition_blocks("resnet")


def test_stage_two_models_have_the_same_blocks(digits):
    """Stage 2 (binary weights) keeps the layer names: the same 16 entries, measured."""
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )
    statistics = _spp(model, digits)
    assert [s.name for s in statistics] == [f"block{i}" for i in range(1, 17)]
    values = [v for s in statistics for v in (s.squared_mean, s.variance, s.residual_variance)]
    assert np.all(np.isfinite(values)) and min(values) > 0


def test_other_models_are_not_zoo_models():
    inputs = tf.keras.Input((4, 4, 2))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(2, 3, name="block1_conv")(inputs))
    with pytest.raises(ValueError, match="not a larq_nobn.zoo model"):
        zoo.signal_propagation_layers(model)
