"""Which layers of a zoo model `larq_nobn.signal_propagation` measures, and where it resets.

```python
import larq_nobn
from larq_nobn import zoo
model = zoo.get_model("reactnet18_none", stage=1, stem="cifar", input_shape=(32, 32, 3))
stats = larq_nobn.signal_propagation(model, images, **zoo.signal_propagation_layers(model))
```
"""

import tensorflow as tf

from larq_nobn.zoo import blocks, reactnet18, reactnet_a
from larq_nobn.zoo.variants import SPP_BACKBONES as BACKBONES


def signal_propagation_layers(model: tf.keras.Model) -> dict:
    """`block_outputs` and `residual_outputs` of a zoo model, for `signal_propagation`.

    - ReActNet-18: one entry per block, `block1` ... `block16`. The block output is the
      residual stream after the block (`blockN_rprelu_bias_out`); the residual branch is the
      3x3 convolution added to the shortcut (`blockN_conv3x3`, or `blockN_conv3x3_bn` in
      the bn variant), after alpha in the nobn variant.
    - ReActNet-A: two entries per block, one per residual addition: `blockNa` (output
      `blockN_rprelu1_bias_out`, branch `blockN_conv3x3[_bn]`) and `blockNb` (output
      `blockN_rprelu2_bias_out`, branch `blockN_conv1x1[_bn]`, or the two halves
      `blockN_conv1x1_1[_bn]` and `blockN_conv1x1_2[_bn]` taken as one branch of all their
      channels, as the block concatenates them).

    Args:
        model: a `larq_nobn.zoo` model, any backbone, variant and stage.

    Returns:
        `{"block_outputs": {block name: layer name}, "residual_outputs": [[layer name]]}`,
        in the order of the blocks.

    Raises:
        ValueError: if `model` is not a zoo model.
    """
    existing = {layer.name for layer in model.layers}
    bn = "_bn" if "block1_conv3x3_bn" in existing else ""
    block_outputs, residual_outputs = {}, []
    i = 1
    while f"block{i}_conv3x3" in existing:
        block = f"block{i}"
        if f"{block}_add" in existing:  # ReActNet-18
            block_outputs[block] = f"{block}_rprelu_bias_out"
            residual_outputs.append([f"{block}_conv3x3{bn}"])
        else:  # ReActNet-A: two residual additions
            block_outputs[f"{block}a"] = f"{block}_rprelu1_bias_out"
            residual_outputs.append([f"{block}_conv3x3{bn}"])
            halves = [f"{block}_conv1x1{h}" for h in ("", "_1", "_2")]
            block_outputs[f"{block}b"] = f"{block}_rprelu2_bias_out"
            residual_outputs.append([f"{name}{bn}" for name in halves if name in existing])
        i += 1
    if not block_outputs:
        raise ValueError(f"{model.name!r} is not a larq_nobn.zoo model (no block1_conv3x3).")
    return {"block_outputs": block_outputs, "residual_outputs": residual_outputs}


def transition_blocks(backbone: str, alpha: float = blocks.DEFAULT_ALPHA) -> list[str]:
    """Names (as `signal_propagation_layers` gives them) of a backbone's stride-2 blocks.

    There the BN-free variant's expected variance is reset to 1.

    Args:
        backbone: "reactnet18" or "reactnet_a".
        alpha: the models' alpha.

    Returns:
        The block names, in order.

    Raises:
        ValueError: for another backbone.
    """
    if backbone == "reactnet18":
        specs = reactnet18.block_specs(alpha)
        return [f"block{i}" for i, spec in enumerate(specs, 1) if spec.downsample]
    if backbone == "reactnet_a":
        specs = reactnet_a.block_specs(alpha)
        return [f"block{i}a" for i, spec in enumerate(specs, 1) if spec.strides == 2]
    raise ValueError(f"`backbone` must be one of {BACKBONES}, got {backbone!r}.")
