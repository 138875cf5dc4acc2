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
FIELDS = ("variance", "residual_variance")


def _images(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).normal(0.5, 1.0, shape).astype(np.float32)


def _spp(model: tf.keras.Model, images, **kwargs) -> list[BlockStatistics]:
    return larq_nobn.signal_propagation(
        model, images, **kwargs, **zoo.signal_propagation_layers(model)
    )


def _digits() -> np.ndarray:
    from larq_nobn.train import data

    _, test, _ = data.load("digits", global_batch_size=16, image_size=32)
    return next(iter(test))[0].numpy()


def _reactnet18_statistics(digits, seed: int) -> dict[str, list[BlockStatistics]]:
    statistics = {}
    for norm in ("nobn", "none"):
        tf.keras.utils.set_random_seed(seed)
        model = zoo.get_model(
            f"reactnet18_{norm}", stage=1, stem="cifar", input_shape=(32, 32, 3), num_classes=10
        )
        statistics[norm] = _spp(model, digits)
    tf.keras.backend.clear_session()
    return statistics


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return _digits()


@pytest.fixture(scope="module")
def reactnet18_statistics(digits) -> dict[str, list[BlockStatistics]]:
    return _reactnet18_statistics(digits, seed=0)


def _stages() -> list[list[int]]:
    """0-based block indices of ReActNet-18's stages: a new stage at every downsample block."""
    stages: list[list[int]] = []
    for i, spec in enumerate(reactnet18.block_specs(ALPHA)):
        if not stages or spec.downsample:
            stages.append([])
        stages[-1].append(i)
    return stages


# The bands below: at initialization, stage 1, cifar stem, the first 16 digits test images
# at 32x32, over seeds 0-19 (`python -m tests.zoo.test_signal_propagation` prints each
# seed's; the tests use seed 0), each extreme given room by a factor of 1.1 to 2:
# - none: block output variance 0.113-0.611; it rises at every block of every stage, and
#   the last block of a stage has 1.58-2.58x the first's (bound: 1.4).
# - nobn: block output variance 0.0186-0.0929 (band 0.01-0.15); none's is 3.27-5.96x
#   larger, block by block (bound: 2). Residual variance 0.629-1.04 alpha^2 (band
#   0.5-1.25 alpha^2): a scaled-WS kernel has unit norm per channel, so on uncorrelated
#   +-1 inputs the branch's variance would be alpha^2 exactly; neighbouring signs of an
#   image are correlated, which the kernel's zero mean partly cancels. none's residual
#   variance is 5.97-6.69x nobn's (bound: 3). At the downsample blocks 5, 9 and 13, where
#   beta resets, the variance drops to 0.39-0.44x the block before's (bound: 0.6).


def _bounded(statistics: dict[str, list[BlockStatistics]]) -> dict[str, tuple[float, float]]:
    """The (min, max) of each quantity the bands below bound."""

    def fields(norm):
        return {f: np.array([getattr(b, f) for b in statistics[norm]]) for f in FIELDS}

    nobn, none = fields("nobn"), fields("none")
    quantities = {
        "none variance": none["variance"],
        "none last / first of a stage": [
            none["variance"][s[-1]] / none["variance"][s[0]] for s in _stages()
        ],
        "none growth within a stage": [np.diff(none["variance"][s]).min() for s in _stages()],
        "nobn variance": nobn["variance"],
        "none / nobn variance": none["variance"] / nobn["variance"],
        "nobn residual / alpha^2": nobn["residual_variance"] / ALPHA**2,
        "none / nobn residual": none["residual_variance"] / nobn["residual_variance"],
        "nobn drop at a reset": [nobn["variance"][i] / nobn["variance"][i - 1] for i in (4, 8, 12)],
    }
    return {name: (float(np.min(v)), float(np.max(v))) for name, v in quantities.items()}


def test_reactnet18_none_grows_within_every_stage(reactnet18_statistics):
    assert [s.name for s in reactnet18_statistics["none"]] == [f"block{i}" for i in range(1, 17)]
    assert len(_stages()) == 4
    bounded = _bounded(reactnet18_statistics)
    assert bounded["none growth within a stage"][0] > 0, bounded
    assert bounded["none last / first of a stage"][0] > 1.4, bounded


def test_reactnet18_nobn_stays_in_its_band_below_none(reactnet18_statistics):
    bounded = _bounded(reactnet18_statistics)
    low, high = bounded["nobn variance"]
    assert 0.01 < low and high < 0.15, bounded
    low, high = bounded["nobn residual / alpha^2"]
    assert 0.5 < low and high < 1.25, bounded
    assert bounded["none / nobn variance"][0] > 2, bounded
    assert bounded["none / nobn residual"][0] > 3, bounded


def test_reactnet18_nobn_variance_drops_where_beta_resets(reactnet18_statistics):
    assert [stage[0] for stage in _stages()[1:]] == [4, 8, 12]  # where `_bounded` looks
    assert _bounded(reactnet18_statistics)["nobn drop at a reset"][1] < 0.6


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


if __name__ == "__main__":
    images = _digits()
    for seed in range(20):
        bounded = _bounded(_reactnet18_statistics(images, seed))
        print(seed, "; ".join(f"{k} {lo:.3g}-{hi:.3g}" for k, (lo, hi) in bounded.items()))
