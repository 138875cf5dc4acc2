"""ReActNet-18 and -34 (Bi-Real-Net / ResNet-shaped), with batch norm, BN-free, or BN removed."""

import dataclasses

import tensorflow as tf

from larq_nobn.zoo import blocks
from larq_nobn.zoo.variants import STEMS

STAGE_CHANNELS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = (4, 4, 4, 4)
# A&B BNN's ReActNet-34 (Ruichen0424/AB-BNN, `Network/ReActNet_18_Qaw.py`, `ResNet34`): one
# binary convolution per block, as in ReActNet-18, so 32 blocks for 34 layers.
REACTNET34_BLOCKS_PER_STAGE = (6, 8, 12, 6)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    in_channels: int
    out_channels: int
    strides: int
    downsample: bool  # shortcut = avg-pool + 1x1 convolution of the beta-scaled input
    beta: float  # scales the block input before its 3x3 convolution


def block_specs(
    alpha: float = blocks.DEFAULT_ALPHA, blocks_per_stage: tuple[int, ...] = BLOCKS_PER_STAGE
) -> list[BlockSpec]:
    """The blocks of ReActNet-18 (or -34) with the reference's beta schedule.

    Per stage, as `_make_layer` in VITA-Group/BNN_NoBN `models/Qa*_reactnet_18_bf.py`: the
    first block takes beta from the incoming expected variance, which is then reset to 1
    if the stage downsamples; each later block takes beta from the current variance, which
    grows by alpha^2 only after that block (the first block never increments it).
    """
    specs = []
    variance = 1.0
    in_channels = STAGE_CHANNELS[0]
    for i, (channels, count) in enumerate(zip(STAGE_CHANNELS, blocks_per_stage, strict=True)):
        strides = 1 if i == 0 else 2
        downsample = strides != 1 or in_channels != channels
        specs.append(BlockSpec(in_channels, channels, strides, downsample, variance**-0.5))
        if downsample:
            variance = 1.0
        for _ in range(1, count):
            specs.append(BlockSpec(channels, channels, 1, False, variance**-0.5))
            variance += alpha**2
        in_channels = channels
    return specs


def _block(
    x, spec: BlockSpec, variant: blocks.Variant, alpha: float, binary_downsample: bool, name: str
):
    x_in = variant.beta(x, spec.beta, f"{name}_beta")
    branch = variant.binary_conv(
        blocks.shift(x_in, f"{name}_bias"),
        spec.out_channels,
        3,
        strides=spec.strides,
        alpha=alpha,
        name=f"{name}_conv3x3",
    )
    shortcut = x
    if spec.downsample:
        shortcut = tf.keras.layers.AveragePooling2D(2, spec.strides, name=f"{name}_pool")(
            variant.shortcut_input(x, x_in)
        )
        shortcut = variant.conv(
            shortcut,
            spec.out_channels,
            1,
            binary_input=False,
            binary_weight=binary_downsample,
            name=f"{name}_downsample",
        )
    x = tf.keras.layers.Add(name=f"{name}_add")([shortcut, branch])
    return variant.rprelu(x, f"{name}_rprelu")


def _stem(x, variant: blocks.Variant, stem: str):
    if stem == "imagenet":
        x = variant.conv(
            x, 64, 7, strides=2, binary_input=False, binary_weight=False, name="conv_first"
        )
        return variant.max_pool(x, name="pool_first")
    return variant.conv(x, 64, 3, binary_input=False, binary_weight=False, name="conv_first")


def ReActNet18(
    *,
    norm: str = "nobn",
    stage: int = 2,
    stem: str = "imagenet",
    alpha: float | None = None,
    design: str = "reference",
    blocks_per_stage: tuple[int, int, int, int] = BLOCKS_PER_STAGE,
    input_shape: tuple[int, int, int] | None = None,
    input_tensor: tf.Tensor | None = None,
    include_top: bool = True,
    num_classes: int = 1000,
    weights: str | None = None,
    padding: str | None = None,
    binary_downsample: bool = True,
    name: str | None = None,
) -> tf.keras.Model:
    """ReActNet-18 (Bi-Real-Net-18 with RPReLU), as trained in "BNN - BN = ?" and A&B BNN.

    Args:
        norm: "bn", "nobn" (the paper's BN-free network) or "none" (BN deleted).
        stage: 1 binarizes the activations only, 2 the weights too (the 3x3 convolutions
            and the 1x1 downsample convolutions, whose inputs stay real). Both stages have
            the same variables.
        stem: "imagenet" (7x7/2 convolution and 3x3/2 max-pool; the reference used it for
            CIFAR too) or "cifar" (3x3/1 convolution, no pool).
        alpha: the residual branch scale of the BN-free variant; by default the design's
            (0.2 in the paper's reference, 0.25 in A&B BNN).
        design: whose BN-free block (`norm="nobn"` only): "reference" (the paper's) or "ab"
            (A&B BNN's: quantized RPReLU, the sigmoid-gradient sign, shortcuts from the
            unscaled input; see `zoo.DESIGNS`).
        blocks_per_stage: blocks of each of the four stages; (6, 8, 12, 6) is A&B BNN's
            ReActNet-34 (`ReActNet34`).
        input_shape: shape of the input images, (224, 224, 3) by default.
        input_tensor: optional Keras tensor to use as the model input.
        include_top: whether to include the pooling and the final dense layer.
        num_classes: number of classes of the final dense layer.
        weights: None (random initialization), the path of a Keras weights file, or of a
            PyTorch checkpoint (`.pth`, `.pth.tar`, `.pt`) of the reference's or ReActNet's
            model of this variant (see `zoo.from_torch`; needs the `torch` extra).
        padding: how the strided convolutions and the stem's max-pool pad: "keras"
            (`padding="same"`, 0 before and 1 after on even inputs) or "torch"
            (symmetric, as PyTorch and the reference: exact outputs for ported weights).
            By default "torch" if `weights` is a PyTorch file, "keras" otherwise. Both have
            the same variables.
        binary_downsample: whether stage 2 binarizes the weights of the 1x1 downsample
            convolutions, as the reference does; ReActNet's own ReAct-ResNet-18
            (liuzechun/ReActNet, `resnet/`) keeps them real: `False`.
        name: the model's name, `reactnet{depth}_{norm}` (`_ab` for A&B BNN's design) by
            default, with depth 18 or 34 (blocks plus two).

    Returns:
        A `tf.keras.Model`.

    References:
        - [Bi-Real Net](https://arxiv.org/abs/1808.00278)
        - [ReActNet](https://arxiv.org/abs/2003.03488)
        - [BNN - BN = ?](https://arxiv.org/abs/2104.08215)
        - [A&B BNN](https://arxiv.org/abs/2403.03739)
    """
    variant = blocks.Variant(norm, stage, blocks.resolve_padding(padding, weights), design)
    alpha = variant.spec.alpha if alpha is None else alpha
    if stem not in STEMS:
        raise ValueError(f"`stem` must be one of {STEMS}, got {stem!r}.")
    inputs = blocks.model_inputs(input_shape, input_tensor, weights, include_top, num_classes, 224)
    blocks.check_divisible(inputs, 32 if stem == "imagenet" else 8, "ReActNet-18")
    x = _stem(inputs, variant, stem)
    for i, spec in enumerate(block_specs(alpha, tuple(blocks_per_stage))):
        x = _block(x, spec, variant, alpha, binary_downsample, name=f"block{i + 1}")
    if include_top:
        x = blocks.classifier(x, num_classes)
    depth = sum(blocks_per_stage) + 2
    name = name or f"reactnet{depth}_{blocks.variant_suffix(variant)}"
    return blocks.finish(inputs, x, input_tensor, weights, name)


def ReActNet34(**kwargs) -> tf.keras.Model:
    """A&B BNN's ReActNet-34: `ReActNet18` with (6, 8, 12, 6) blocks per stage.

    Args:
        **kwargs: `ReActNet18`'s arguments but `blocks_per_stage`.

    Returns:
        A `tf.keras.Model`.

    References:
        - [A&B BNN](https://arxiv.org/abs/2403.03739)
    """
    return ReActNet18(blocks_per_stage=REACTNET34_BLOCKS_PER_STAGE, **kwargs)
