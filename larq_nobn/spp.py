r"""Signal propagation: per residual block, how large the signal is (NFNets' SPP statistics).

```python
from larq_nobn import signal_propagation
stats = signal_propagation(
    model, images, block_outputs=r"(b\d)_add", residual_outputs=r"(b\d)_conv", training=True
)
for block in stats:
    print(block.name, block.squared_mean, block.variance, block.residual_variance)
```
The caller names the layers; a `larq_nobn.zoo` model names its own
(`zoo.signal_propagation_layers(model)`). `larq_nobn.spp_plot` draws the statistics of
several variants side by side.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

#: A regex with at most one group, an ordered list of layer names, or an ordered mapping
#: {block name: layer name}.
BlockLayers = str | Sequence[str] | Mapping[str, str]
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

    The caller names the layers (the library knows no model; a `larq_nobn.zoo` model's
    are `**zoo.signal_propagation_layers(model)`). `block_outputs` is a regex, an ordered
    list of layer names or an ordered mapping {block name: layer name}. A regex is matched
    in full (`re.fullmatch`) against every layer name in the order of `model.layers` (from
    the input to the output); every match is one block, named after the regex's group if it
    has one, else after the layer. A list names one layer per block, and the blocks take
    those names; a mapping's keys name the blocks, its values their layers.
    `residual_outputs` is either a regex, whose matches are grouped by the regex's group (by
    layer name if it has none), or an ordered list whose entries are a layer name or a list
    of layer names; the outputs of one group or entry are concatenated along the channels.
    The i-th residual branch belongs to the i-th block.

    Args:
        model: a functional Keras model with channels-last block outputs.
        images: one batch the model accepts.
        training: run the model in training mode (matters for batch norm).
        block_outputs: which layers output the blocks.
        residual_outputs: which layers output the residual branches.

    Returns:
        One `BlockStatistics` per block, in order.

    Raises:
        ValueError: if a pattern is missing, a regex has more than one group or matches no
            layer, a named layer does not exist, or the numbers of blocks and residual
            branches differ.

    References:
        - [Characterizing signal propagation to close the performance gap in unnormalized
          ResNets](https://arxiv.org/abs/2101.08692) (Brock et al., ICLR 2021)
    """
    if block_outputs is None or residual_outputs is None:
        raise ValueError(
            f"Pass both `block_outputs` and `residual_outputs` for {model.name!r}: the layers "
            "of a model that is not a larq_nobn.zoo model by regex or name, those of a zoo "
            "model with `**larq_nobn.zoo.signal_propagation_layers(model)`."
        )
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
    layers = list(spec.values()) if isinstance(spec, Mapping) else list(spec)
    _check_layers(model, layers, "block output")
    return list(spec), layers


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
