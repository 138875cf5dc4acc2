"""The two training recipes (train/hyperparameters.py): their numbers, which one a run
gets, what each sets, and the decayed and clipped sets of A&B BNN's models."""

import dataclasses

import numpy as np
import pytest

from larq_nobn import zoo
from larq_nobn.train import hyperparameters as hp
from larq_nobn.train import options, recipe
from larq_nobn.train.config import Config, ConfigError
from larq_nobn.unitwise import unitwise_norm


def test_the_recipes_hold_their_sources_numbers():
    # "BNN - BN = ?": train.py and script/*.sh of VITA-Group/BNN_NoBN.
    paper = hp.RECIPES["paper"]
    assert (paper.learning_rate, dict(paper.weight_decay)) == (5e-4, {1: 1e-5, 2: 0.0})
    assert (paper.agc_clip, paper.imagenet_agc_clip) == (0.02, 0.02)
    assert (paper.cifar_normalization, paper.cifar_padding) == ("dataset", "constant")
    # A&B BNN: Train_{Cifar,ImageNet}_step{1,2}.ipynb of Ruichen0424/AB-BNN.
    ab = hp.RECIPES["ab"]
    assert (ab.learning_rate, dict(ab.weight_decay)) == (1e-3, {1: 5e-6, 2: 0.0})
    assert (ab.agc_clip, ab.imagenet_agc_clip) == (0.001, 0.02)
    assert (ab.cifar_normalization, ab.cifar_padding) == ("imagenet", "reflect")
    for each in (paper, ab):
        assert (each.epochs, each.batch_size) == (256, 256)
    assert (hp.ADAM_EPSILON, hp.AGC_EPS) == (1e-8, 1e-3)
    # The former module-level names are the paper's.
    assert (hp.LEARNING_RATE, hp.AGC_CLIP, hp.BATCH_SIZE) == (5e-4, 0.02, 256)
    assert dict(hp.WEIGHT_DECAY) == {1: 1e-5, 2: 0.0}
    with pytest.raises(TypeError):
        paper.weight_decay[1] = 0.0  # frozen, to the per-stage numbers
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.learning_rate = 1.0


@pytest.mark.parametrize(
    "model, dataset, expected",
    [
        ("reactnet18_ab", "digits", ("ab", 1e-3, 0.001, 5e-6)),
        ("reactnet34_ab", "cifar10", ("ab", 1e-3, 0.001, 5e-6)),
        ("reactnet_a_ab", "imagenet2012", ("ab", 1e-3, 0.02, 5e-6)),
        ("reactnet18_nobn", "cifar10", ("paper", 5e-4, 0.02, 1e-5)),
        ("reactnet_a_bn", "imagenet2012", ("paper", 5e-4, 0.02, 1e-5)),
    ],
)
def test_the_default_recipe_follows_the_model(model, dataset, expected):
    config = Config(model=model, dataset=dataset).resolved()
    got = (config.recipe, config.learning_rate, config.agc_clip, config.weight_decay_for(1))
    assert got == expected
    assert config.weight_decay_for(2) == 0.0
    assert options.to_json(config)["recipe"] == expected[0]  # config.json says which


def test_an_explicit_recipe_or_flag_wins():
    config = Config(model="reactnet18_ab", recipe="paper").resolved()
    assert (config.recipe, config.learning_rate, config.agc_clip) == ("paper", 5e-4, 0.02)
    assert config.weight_decay_for(1) == 1e-5
    config = Config(model="reactnet18_nobn", recipe="ab", dataset="cifar10").resolved()
    assert (config.recipe, config.learning_rate, config.agc_clip) == ("ab", 1e-3, 0.001)
    config = Config(
        model="reactnet18_ab", learning_rate=2e-3, agc_clip=0.0, weight_decay=1e-4
    ).resolved()
    assert (config.learning_rate, config.agc_clip, config.weight_decay_for(1)) == (2e-3, 0, 1e-4)


def test_bad_recipes_are_config_errors():
    with pytest.raises(ConfigError, match="unknown --recipe 'nope'; valid names: paper, ab"):
        Config(recipe="nope").resolved()
    with pytest.raises(ConfigError, match="--recipe ab trains binary zoo models"):
        Config(model="resnet50", recipe="ab").resolved()
    assert Config(model="resnet50").resolved().recipe == "paper"  # unused by SGD


def test_a_run_recorded_before_the_recipe_option_had_the_papers():
    paper = Config(model="reactnet18_nobn").resolved()
    saved = {k: v for k, v in options.to_json(paper).items() if k != "recipe"}
    assert options.changed(saved, paper) == []
    ab = Config(model="reactnet18_nobn", recipe="ab", learning_rate=5e-4, agc_clip=0.02)
    assert options.changed(saved, ab.resolved()) == ["recipe"]


def test_ab_models_decay_and_clip_as_its_notebooks():
    """Decayed: what is 4-D in PyTorch's layout (kernels, gains, learnable biases), not the
    quantized PReLU's exponents (`L_alpha`, excluded by name there) nor `fc`. Clipped:
    everything but `fc`; an exponent vector as one unit, as torch's norm of `L_alpha`."""
    model = zoo.get_model(
        "reactnet18_ab", stage=1, stem="cifar", input_shape=(8, 8, 3), num_classes=10
    )
    opt = recipe.optimizer(1e-3, 10, hp.AB.agc_clip, weight_decay=hp.AB.weight_decay[1])
    inner = opt.inner_optimizer
    kinds = {}
    for w in model.trainable_weights:
        kinds.setdefault(w.name.split("/")[-1].split(":")[0], []).append(w)
    assert {kind: len(ws) for kind, ws in kinds.items()} == {
        "kernel": 21,  # 20 convolutions and fc
        "gain": 20,
        "bias": 49,  # 48 learnable biases and fc's
        "log2_slope": 16,
    }
    for w in model.trainable_weights:
        fc = w.name.startswith("fc/")
        assert opt._is_excluded(w) == fc, w.name
        assert inner.decays(w) == (not fc and "log2_slope" not in w.name), w.name
    for w in kinds["log2_slope"]:
        norm = unitwise_norm(w, opt._unit_of(w)).numpy()
        assert norm.shape == () and norm == pytest.approx(np.linalg.norm(w.numpy()))
