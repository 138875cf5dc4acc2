"""The recipe's optimizer step against an independent NumPy model of the reference's step.

The reference (VITA-Group/BNN_NoBN `train.py`) does, after `loss.backward()`:
`adaptive_clip_grad(clip_factor=0.02, eps=1e-3)` on every parameter whose name has no "fc",
then `torch.optim.Adam` with coupled L2 on the parameters that are 4-D (or named "conv",
which adds none here). Both rules read the PyTorch layout of a parameter. The NumPy model
below converts each Keras variable to that layout (by what it is, not by our rules), applies
torch's formulas there, and converts back; the recipe's optimizer, given the same
parameters and data gradients, must move every parameter the same way.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import zoo
from larq_nobn.train import recipe

LR = 5e-4
CLIP, AGC_EPS = 0.02, 1e-3
BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-8

# ----------------------------------------------------------------------------------------
# The reference's step in NumPy (float64), in the reference's layouts
# ----------------------------------------------------------------------------------------


def _kind(name: str) -> str:
    """What a zoo variable is: from its layer and variable names."""
    layer, variable = name.split(":")[0].rsplit("/", 1)
    if layer == "fc":
        return f"fc_{variable}"
    return {
        "kernel": "kernel",
        "gain": "gain",
        "bias": "learnable_bias",
        "alpha": "prelu",
        "gamma": "bn",
        "beta": "bn",
    }[variable]


def _to_torch(kind: str, x: np.ndarray) -> np.ndarray:
    """A Keras value in the reference's PyTorch layout."""
    if kind == "kernel":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return x.transpose(3, 2, 0, 1)
    if kind == "fc_kernel":  # (in, out) -> (out, in)
        return x.T
    if kind == "gain":  # HardBinaryScaledStdConv2d / ScaledStdConv2d: (C, 1, 1, 1)
        return x.reshape(-1, 1, 1, 1)
    if kind == "learnable_bias":  # LearnableBias: (1, C, 1, 1)
        return x.reshape(1, -1, 1, 1)
    if kind == "prelu":  # nn.PReLU(C): (C,), Keras (1, 1, C)
        return x.reshape(-1)
    return x  # BatchNorm2d weight/bias (C,), Linear bias (C,)


def _from_torch(kind: str, x: np.ndarray, shape) -> np.ndarray:
    if kind == "kernel":
        return x.transpose(2, 3, 1, 0)
    if kind == "fc_kernel":
        return x.T
    return x.reshape(shape)


def _torch_unitwise_norm(x: np.ndarray) -> np.ndarray:
    """agc.py's rule: vectors whole, else one norm per index of dim 0."""
    if x.ndim <= 1:
        return np.sqrt(np.sum(x**2))
    return np.sqrt(np.sum(x**2, axis=tuple(range(1, x.ndim)), keepdims=True))


def _torch_agc(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    max_norm = np.maximum(_torch_unitwise_norm(p), AGC_EPS) * CLIP
    grad_norm = _torch_unitwise_norm(g)
    clipped = g * (max_norm / np.maximum(grad_norm, 1e-6))
    return np.where(grad_norm < max_norm, g, clipped)


def _reference_clip(name: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The AGC-clipped gradient of one Keras variable, as the reference computes it."""
    kind = _kind(name)
    if kind.startswith("fc_"):  # 'fc' in the name: never clipped
        return g
    tp, tg = _to_torch(kind, p), _to_torch(kind, g)
    return _from_torch(kind, _torch_agc(tp, tg), p.shape)


def _reference_decays(name: str, shape) -> bool:
    kind = _kind(name)
    return _to_torch(kind, np.zeros(shape)).ndim == 4


class ReferenceStep:
    """torch.optim.Adam after adaptive_clip_grad, in float64, on a dict of NumPy values."""

    def __init__(self, params: dict, weight_decay: float, decay_first: bool = False):
        self.params = {k: v.astype(np.float64) for k, v in params.items()}
        self.m = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.t = 0
        self.weight_decay = weight_decay
        self.decay_first = decay_first  # the old order (L2 in the loss, clipped by AGC)

    def step(self, grads: dict, lr: float = LR) -> None:
        self.t += 1
        for name, p in self.params.items():
            g = grads[name].astype(np.float64)
            decay = self.weight_decay * p if _reference_decays(name, p.shape) else 0.0
            if self.decay_first:
                g = _reference_clip(name, p, g + decay)
            else:
                g = _reference_clip(name, p, g) + decay
            self.m[name] = BETA_1 * self.m[name] + (1 - BETA_1) * g
            self.v[name] = BETA_2 * self.v[name] + (1 - BETA_2) * g * g
            step_size = lr / (1 - BETA_1**self.t)
            denom = np.sqrt(self.v[name]) / np.sqrt(1 - BETA_2**self.t) + EPSILON
            self.params[name] = p - step_size * self.m[name] / denom


# ----------------------------------------------------------------------------------------
# Models with parameters away from their initial values, and their gradients
# ----------------------------------------------------------------------------------------


def _perturbed(name: str, stage: int, seed: int = 0) -> tf.keras.Model:
    """A zoo model whose gains, slopes, shifts and BN vectors are no longer uniform, as a
    few steps of training leave them (at init, one gain clipped whole or per element can
    coincide)."""
    tf.keras.utils.set_random_seed(seed)
    model = zoo.get_model(name, stage=stage, input_shape=(32, 32, 3), num_classes=10, **_stem(name))
    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        shape, kind = variable.shape, _kind(variable.name)
        if kind == "gain" or variable.name.endswith("/gamma:0"):
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "prelu":
            value = rng.uniform(0.05, 0.45, shape)
        elif kind in ("learnable_bias", "bn"):
            value = rng.normal(0.0, 0.05, shape)
        else:
            continue
        variable.assign(value.astype(np.float32))
    return model


def _stem(name: str) -> dict:
    return {"stem": "cifar"} if zoo.backbone(name) == "reactnet18" else {}


def _gradients(model: tf.keras.Model, seed: int) -> list[tf.Tensor]:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    labels = np.array([0, 3, 7, 9])
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    return tape.gradient(loss, model.trainable_variables)


def _values(model) -> dict:
    return {v.name: v.numpy() for v in model.trainable_variables}


def _relative_error(ours: dict, reference: dict, before: dict) -> tuple[float, dict]:
    """Overall and per-variable ||delta_ours - delta_ref|| / ||delta_ref||.

    Per variable, each element's difference first loses one float32 spacing of its weight:
    the float32 weight after the step cannot hold the exact update (a deep PReLU slope of
    0.18 moved by 1e-6 is stored 0.4 spacing = 6e-9 away from it), so that much is rounding,
    not a different step. Any larger difference counts in full.
    """
    num = den = 0.0
    per_variable = {}
    for name, start in before.items():
        d_ours = ours[name].astype(np.float64) - start
        d_ref = reference[name] - start
        diff, norm = np.sum((d_ours - d_ref) ** 2), np.sum(d_ref**2)
        num, den = num + diff, den + norm
        spacing = np.spacing(np.abs(ours[name]).astype(np.float32)).astype(np.float64)
        beyond_rounding = np.maximum(np.abs(d_ours - d_ref) - spacing, 0.0)
        per_variable[name] = np.linalg.norm(beyond_rounding) / max(np.sqrt(norm), 1e-30)
    return float(np.sqrt(num / den)), per_variable


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------


# Every variant under the default (on CPUs "cpu_light"); every other setting on the
# variants where it changes most: ReActNet-A's large kernels (fused statistics) and 2x2
# maps of 512 channels ("cpu"'s gradients), ReActNet-18's 1x1 maps, a batch-norm model.
EVERY_SETTING = ("auto", "exact", "fused", "cpu")
STEP_CASES = {
    (f"{backbone}_{norm}", 2): ("auto",)
    for backbone in ("reactnet18", "reactnet_a")
    for norm in zoo.NORMS
}
STEP_CASES[("reactnet_a_nobn", 1)] = ("auto",)
STEP_CASES.update(
    dict.fromkeys(
        [("reactnet_a_nobn", 2), ("reactnet18_nobn", 1), ("reactnet_a_bn", 2)], EVERY_SETTING
    )
)


@pytest.mark.slow(25)
@pytest.mark.parametrize("name, stage", list(STEP_CASES))
def test_two_steps_move_every_parameter_as_the_reference(name, stage):
    """Every variant, both backbones: two steps of the recipe's optimizer (stage's weight
    decay, but 1e-4 in stage 2 too so that the decay shows) from the same parameters and
    data gradients give the reference's parameters, under each acceleration setting of
    `STEP_CASES` (the gradients, and the fused Adam kernel or torch's op order, are the
    setting's: it is read when they are computed). One model per test, its parameters
    set back to the same start for each setting."""
    weight_decay = recipe.WEIGHT_DECAY[1] if stage == 1 else 1e-4
    model = _perturbed(name, stage)
    variables = model.trainable_variables
    start = _values(model)
    total_steps = 1000
    for setting in STEP_CASES[name, stage]:
        for variable in variables:
            variable.assign(start[variable.name])
        with larq_nobn.acceleration_scope(setting):
            reference = ReferenceStep(start, weight_decay)
            optimizer = recipe.optimizer(LR, total_steps, CLIP, weight_decay=weight_decay)
            for step, seed in enumerate((1, 2)):
                grads = _gradients(model, seed)
                lr = LR * (1 - step / total_steps)  # the per-step schedule
                reference.step(
                    {v.name: g.numpy() for v, g in zip(variables, grads, strict=True)}, lr
                )
                optimizer.apply_gradients(zip(grads, variables, strict=True))
                overall, per_variable = _relative_error(_values(model), reference.params, start)
                # The bound is 1e-2 overall; the step is the same formula, so it
                # holds to float32 rounding, per variable too.
                assert overall < 1e-4, (setting, overall)
                worst = max(per_variable, key=per_variable.get)
                assert per_variable[worst] < 1e-3, (setting, worst, per_variable[worst])


def test_keras_adam_and_the_old_units_would_fail_the_step_test():
    """The tolerance discriminates: Keras' Adam with NFNets' units everywhere (the old
    recipe) is far from the reference's step."""
    model = _perturbed("reactnet18_nobn", 2)
    variables = model.trainable_variables
    start = _values(model)
    grads = _gradients(model, 1)
    reference = ReferenceStep(start, 0.0)
    reference.step({v.name: g.numpy() for v, g in zip(variables, grads, strict=True)})
    old = recipe.larq_nobn.AGC(
        tf.keras.optimizers.Adam(LR, epsilon=EPSILON), CLIP, AGC_EPS, exclude=recipe.AGC_EXCLUDE
    )
    old.apply_gradients(zip(grads, variables, strict=True))
    overall, _ = _relative_error(_values(model), reference.params, start)
    assert overall > 5e-2, overall


@contextlib.contextmanager
def _restored(model: tf.keras.Model):
    """`model`'s trainable values as they were before the block, however the block ends."""
    saved = [(variable, variable.numpy()) for variable in model.trainable_variables]
    try:
        yield model
    finally:
        for variable, value in saved:
            variable.assign(value)


@pytest.fixture(scope="module")
def _reactnet18_bn_stage2():
    return _perturbed("reactnet18_bn", 2, seed=5)


@pytest.fixture(scope="module")
def _reactnet18_nobn_stage2():
    return _perturbed("reactnet18_nobn", 2, seed=6)


# Built once per module, handed to each test as it was built.
@pytest.fixture
def reactnet18_bn_stage2(_reactnet18_bn_stage2):
    with _restored(_reactnet18_bn_stage2) as model:
        yield model


@pytest.fixture
def reactnet18_nobn_stage2(_reactnet18_nobn_stage2):
    with _restored(_reactnet18_nobn_stage2) as model:
        yield model


def _mixed_gradient(rng, p: np.ndarray) -> np.ndarray:
    """A gradient whose entries are 1e-3 to 10 times 0.02 * |p|: under any unit rule some
    units are clipped and some are not."""
    scale = CLIP * (np.abs(p) + AGC_EPS) * 10.0 ** rng.uniform(-3, 1, p.shape)
    return (rng.normal(size=p.shape) * scale).astype(np.float32)


@pytest.mark.parametrize("fixture", ["reactnet18_nobn_stage2", "reactnet18_bn_stage2"])
def test_agc_units_per_parameter_kind_are_the_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    rng = np.random.default_rng(3)
    optimizer = recipe.optimizer(LR, 100, CLIP)
    variables = model.trainable_variables
    grads = [_mixed_gradient(rng, v.numpy()) for v in variables]
    clipped = optimizer.clip_gradients(
        [(tf.constant(g), v) for g, v in zip(grads, variables, strict=True)]
    )
    default_rule = recipe.larq_nobn.AGC(tf.keras.optimizers.SGD(), CLIP, AGC_EPS)
    seen, clipped_kinds = set(), set()
    for (ours, variable), g in zip(clipped, grads, strict=True):
        kind = _kind(variable.name)
        expected = _reference_clip(variable.name, variable.numpy(), g)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=2e-5, atol=1e-12)
        if kind.startswith("fc_"):
            np.testing.assert_array_equal(ours.numpy(), g)  # never clipped
        elif not np.allclose(expected, g):
            clipped_kinds.add(kind)
        if kind in ("gain", "prelu"):  # NFNets' rule on the Keras layout differs here
            plain = default_rule.clip_gradients([(tf.constant(g), variable)])[0][0].numpy()
            assert not np.allclose(plain, expected, rtol=1e-3), variable.name
        seen.add(kind)
    expected_kinds = {"kernel", "learnable_bias", "prelu", "fc_kernel", "fc_bias"}
    expected_kinds |= {"gain"} if fixture == "reactnet18_nobn_stage2" else {"bn"}
    assert seen == expected_kinds
    assert clipped_kinds == {k for k in expected_kinds if not k.startswith("fc_")}


def test_large_weight_decay_shows_the_decayed_set(reactnet18_bn_stage2, reactnet18_nobn_stage2):
    """No data gradient, weight decay 1e-2: exactly the reference's 4-D parameters move
    (kernels, gains, learnable biases), by Adam's step on `wd * W`; PReLU, BN and fc stay."""
    moved_kinds, still_kinds = set(), set()
    for model in (reactnet18_bn_stage2, reactnet18_nobn_stage2):
        variables = model.trainable_variables
        start = _values(model)
        optimizer = recipe.optimizer(LR, 100, CLIP, weight_decay=1e-2)
        optimizer.apply_gradients((tf.zeros_like(v), v) for v in variables)
        after = _values(model)
        for variable in variables:
            name, kind = variable.name, _kind(variable.name)
            moved = not np.array_equal(after[name], start[name])
            if _reference_decays(name, variable.shape):
                moved_kinds.add(kind)
                # First Adam step on g = wd * W: lr * g / (|g| + eps) per element.
                g = 1e-2 * start[name].astype(np.float64)
                expected = start[name] - LR * g / (np.abs(g) + EPSILON)
                np.testing.assert_allclose(after[name], expected, rtol=1e-6, atol=1e-9)
            else:
                still_kinds.add(kind)
                assert not moved, name
            variable.assign(start[name])
    assert moved_kinds == {"kernel", "gain", "learnable_bias"}
    assert still_kinds == {"prelu", "bn", "fc_kernel", "fc_bias"}


def test_large_weight_decay_is_added_after_the_clip(reactnet18_nobn_stage2):
    """With wd 1e-2 the order is visible: the reference adds the decay to the clipped
    gradient; decaying inside the loss (AGC clipping both) moves the weights elsewhere."""
    model = reactnet18_nobn_stage2
    variables = model.trainable_variables
    start = _values(model)
    grads = _gradients(model, 4)
    as_dict = {v.name: g.numpy() for v, g in zip(variables, grads, strict=True)}
    after_clip = ReferenceStep(start, 1e-2)
    after_clip.step(as_dict)
    before_clip = ReferenceStep(start, 1e-2, decay_first=True)
    before_clip.step(as_dict)
    optimizer = recipe.optimizer(LR, 100, CLIP, weight_decay=1e-2)
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    ours = _values(model)
    for variable in variables:
        variable.assign(start[variable.name])
    overall, _ = _relative_error(ours, after_clip.params, start)
    assert overall < 1e-4
    wrong_order, _ = _relative_error(ours, before_clip.params, start)
    assert wrong_order > 1e-2
