"""Signal propagation: per residual block, how large the signal is (NFNets' SPP statistics).

```python
from larq_nobn import signal_propagation, zoo
model = zoo.get_model("reactnet18_none", stage=1, stem="cifar", input_shape=(32, 32, 3))
for block in signal_propagation(model, images, training=True):
    print(block.name, block.squared_mean, block.variance, block.residual_variance)
```
`larq_nobn.spp_plot` draws the statistics of several variants side by side.
"""

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

#: A regex with at most one group, or an ordered list of layer names.
BlockLayers = str | Sequence[str]
#: A regex with at most one group, or an ordered list of layer names (or lists of names).
ResidualLayers = str | Sequence[str | Sequence[str]]


@dataclasses.dataclass(frozen=True)
class BlockStatistics:
    """The signal after one residual block, averaged over channels (NHWC).

    Attributes:
        name: the block's name.
        squared_mean: average channel squared mean of the block output, the mean over
            channels of (the channel's mean over batch, height and width)^2.
        variance: average channel variance of the block output, the mean over channels
            of the channel's variance over batch, height and width.
        residual_variance: average channel variance of the residual branch's output.
    """

    name: str
    squared_mean: float
    variance: float
    residual_variance: float


def channel_statistics(x: np.ndarray | tf.Tensor) -> tuple[float, float]:
    """(average channel squared mean, average channel variance) of a channels-last tensor.

    Each channel's mean and variance are taken over all other axes (batch, height, width),
    in float64; both are then averaged over the channels.
    """
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    return float(np.mean(x.mean(axis=axes) ** 2)), float(np.mean(x.var(axis=axes)))


def signal_propagation(
    model: tf.keras.Model,
    images: np.ndarray | tf.Tensor,
    *,
    training: bool = False,
    block_outputs: BlockLayers | None = None,
    residual_outputs: ResidualLayers | None = None,
) -> list[BlockStatistics]:
    """Signal propagation statistics of a residual network, one entry per residual block.

    The model runs once on `images`, through one `tf.keras.Model` that outputs every block
    output and residual-branch output. With `training=True` batch norm normalizes with the
    batch's statistics; its moving averages, which that call updates, are restored after.

    Without patterns the model must be a `larq_nobn.zoo` model (any variant):
    - ReActNet-18: one entry per block, `block1` ... `block16`. The block output is the
      residual stream after the block (`blockN_rprelu_bias_out`); the residual branch is the
      3x3 convolution added to the shortcut (`blockN_conv3x3`, or `blockN_conv3x3_bn` in
      the bn variant), after alpha in the nobn variant.
    - ReActNet-A: two entries per block, one per residual addition: `blockNa` (output
      `blockN_rprelu1_bias_out`, branch `blockN_conv3x3[_bn]`) and `blockNb` (output
      `blockN_rprelu2_bias_out`, branch `blockN_conv1x1[_bn]`, or the two halves
      `blockN_conv1x1_1[_bn]` and `blockN_conv1x1_2[_bn]` taken as one branch of all their
      channels, as the block concatenates them).

    Other functional models name their layers. `block_outputs` is either a regex or an
    ordered list of layer names. A regex is matched in full (`re.fullmatch`) against every
    layer name in the order of `model.layers` (from the input to the output); every match is
    one block, named after the regex's group if it has one, else after the layer. A list
    names one layer per block, and the blocks take those names. `residual_outputs` is
    either a regex, whose matches are grouped by the regex's group (by layer name if it has
    none), or an ordered list whose entries are a layer name or a list of layer names; the
    outputs of one group or entry are concatenated along the channels. The i-th residual
    branch belongs to the i-th block.

    Args:
        model: a functional Keras model with channels-last block outputs.
        images: one batch the model accepts.
        training: run the model in training mode (matters for batch norm).
        block_outputs: which layers output the blocks; `None` for a zoo model.
        residual_outputs: which layers output the residual branches; `None` for a zoo model.

    Returns:
        One `BlockStatistics` per block, in order.

    Raises:
        ValueError: if only one of the patterns is given, a regex has more than one group or
            matches no layer, a named layer does not exist, the numbers of blocks and
            residual branches differ, or patterns are needed (not a zoo model).

    References:
        - [Characterizing signal propagation to close the performance gap in unnormalized
          ResNets](https://arxiv.org/abs/2101.08692) (Brock et al., ICLR 2021)
    """
    if (block_outputs is None) != (residual_outputs is None):
        raise ValueError("Pass both `block_outputs` and `residual_outputs`, or neither.")
    if block_outputs is None:
        names, blocks, residuals = _zoo_layers(model)
    else:
        names, blocks = _block_layers(model, block_outputs)
        residuals = _residual_layers(model, residual_outputs)
    if len(blocks) != len(residuals):
        raise ValueError(
            f"{len(blocks)} block outputs but {len(residuals)} residual branches: "
            f"blocks {blocks}, residual branches {residuals}."
        )
    layers = blocks + [name for group in residuals for name in group]
    probe = tf.keras.Model(model.inputs, [model.get_layer(name).output for name in layers])
    saved = [(v, v.numpy()) for v in model.non_trainable_variables] if training else []
    try:
        outputs = iter(probe(images, training=training))
    finally:
        for variable, value in saved:
            variable.assign(value)
    block_values = [next(outputs) for _ in blocks]
    statistics = []
    for name, x, group in zip(names, block_values, residuals, strict=True):
        residual = np.concatenate([next(outputs) for _ in group], axis=-1)
        squared_mean, variance = channel_statistics(x)
        residual_variance = channel_statistics(residual)[1]
        statistics.append(BlockStatistics(name, squared_mean, variance, residual_variance))
    return statistics


def _matches(model: tf.keras.Model, pattern: str, what: str) -> list[tuple[str, str]]:
    """(key, layer name) of every layer whose name matches; the key is the group or name."""
    regex = re.compile(pattern)
    if regex.groups > 1:
        raise ValueError(f"The {what} regex '{pattern}' has {regex.groups} groups, not 0 or 1.")
    matches = []
    for layer in model.layers:
        if match := regex.fullmatch(layer.name):
            matches.append((match.group(1) if regex.groups else layer.name, layer.name))
    if not matches:
        raise ValueError(f"The {what} regex '{pattern}' matches no layer of {model.name!r}.")
    return matches


def _check_layers(model: tf.keras.Model, names: Sequence[str], what: str) -> None:
    existing = {layer.name for layer in model.layers}
    missing = [name for name in names if name not in existing]
    if missing or not names:
        raise ValueError(f"No {what} layer(s) {missing} in {model.name!r}.")


def _block_layers(model: tf.keras.Model, spec: BlockLayers) -> tuple[list[str], list[str]]:
    """(block names, block output layers)."""
    if isinstance(spec, str):
        matches = _matches(model, spec, "block output")
        return [key for key, _ in matches], [layer for _, layer in matches]
    _check_layers(model, spec, "block output")
    return list(spec), list(spec)


def _residual_layers(model: tf.keras.Model, spec: ResidualLayers) -> list[list[str]]:
    """The layers of each residual branch, in order."""
    if isinstance(spec, str):
        groups: dict[str, list[str]] = {}
        for key, layer in _matches(model, spec, "residual output"):
            groups.setdefault(key, []).append(layer)
        return list(groups.values())
    groups = [[entry] if isinstance(entry, str) else list(entry) for entry in spec]
    _check_layers(model, [name for group in groups for name in group], "residual output")
    if not all(groups):
        raise ValueError("Every residual branch needs at least one layer.")
    return groups


def _zoo_layers(model: tf.keras.Model) -> tuple[list[str], list[str], list[list[str]]]:
    """(names, block output layers, residual branch layers) of a `larq_nobn.zoo` model."""
    existing = {layer.name for layer in model.layers}
    bn = "_bn" if "block1_conv3x3_bn" in existing else ""
    entries = []
    i = 1
    while f"block{i}_conv3x3" in existing:
        block = f"block{i}"
        if f"{block}_add" in existing:  # ReActNet-18
            entries.append((block, f"{block}_rprelu_bias_out", [f"{block}_conv3x3{bn}"]))
        else:  # ReActNet-A: two residual additions
            entries.append((f"{block}a", f"{block}_rprelu1_bias_out", [f"{block}_conv3x3{bn}"]))
            halves = [f"{block}_conv1x1{h}" for h in ("", "_1", "_2")]
            branch = [f"{name}{bn}" for name in halves if name in existing]
            entries.append((f"{block}b", f"{block}_rprelu2_bias_out", branch))
        i += 1
    if not entries:
        raise ValueError(
            f"{model.name!r} is not a larq_nobn.zoo model: pass `block_outputs` and "
            "`residual_outputs`."
        )
    names, blocks, residuals = zip(*entries, strict=True)
    return list(names), list(blocks), list(residuals)
