"""ReActNet-A (MobileNetV1-shaped), with batch norm, BN-free, or BN simply removed."""

import dataclasses

import tensorflow as tf

from larq_nobn.zoo import blocks
from larq_nobn.zoo.variants import STEMS

# Output channels of the first convolution and of the 13 blocks.
CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    in_channels: int
    out_channels: int
    strides: int
    beta1: float  # scales the block input before its 3x3 convolution
    beta2: float  # scales the 3x3 branch output before the 1x1 convolution(s)


def block_specs(alpha: float = blocks.DEFAULT_ALPHA) -> list[BlockSpec]:
    """The 13 blocks of ReActNet-A with the reference's beta schedule.

    The expected variance starts at 1 after the first convolution. A block that changes the
    number of channels to anything but 64 is a stride-2 transition: it uses the current
    betas, then the variance is reset. Every other block uses the current betas, then the
    variance grows by alpha^2 twice (once per residual branch). As in VITA-Group/BNN_NoBN,
    `models/Qa*_reactnet_A_bf.py`.
    """

    def betas_after_reset() -> tuple[float, float, float]:
        variance = 1.0
        beta1 = variance**-0.5
        variance += alpha**2
        return variance, beta1, variance**-0.5

    variance, beta1, beta2 = betas_after_reset()
    specs = []
    for in_ch, out_ch in zip(CHANNELS[:-1], CHANNELS[1:], strict=True):
        transition = in_ch != out_ch and out_ch != 64
        specs.append(BlockSpec(in_ch, out_ch, 2 if transition else 1, beta1, beta2))
        if transition:
            variance, beta1, beta2 = betas_after_reset()
        else:
            variance += alpha**2
            beta1 = variance**-0.5
            variance += alpha**2
            beta2 = variance**-0.5
    return specs


def _block(x, spec: BlockSpec, variant: blocks.Variant, alpha: float, name: str):
    x_in = variant.beta(x, spec.beta1, f"{name}_beta1")
    branch = variant.binary_conv(
        blocks.shift(x_in, f"{name}_bias1"),
        spec.in_channels,
        3,
        strides=spec.strides,
        alpha=alpha,
        name=f"{name}_conv3x3",
    )
    # The reference pools the beta-scaled input at a transition and keeps x otherwise.
    shortcut = x
    if spec.strides == 2:
        shortcut = tf.keras.layers.AveragePooling2D(2, name=f"{name}_pool")(
            variant.shortcut_input(x, x_in)
        )
    out1 = tf.keras.layers.Add(name=f"{name}_add1")([shortcut, branch])
    out1 = variant.rprelu(out1, f"{name}_rprelu1")

    branch = blocks.shift(variant.beta(out1, spec.beta2, f"{name}_beta2"), f"{name}_bias2")
    halves = 1 if spec.in_channels == spec.out_channels else 2
    if spec.out_channels != spec.in_channels * halves:
        raise ValueError(
            f"A ReActNet-A block cannot go from {spec.in_channels} to {spec.out_channels}."
        )
    outputs = []
    for i in range(halves):
        suffix = "" if halves == 1 else f"_{i + 1}"
        y = variant.binary_conv(
            branch,
            spec.in_channels,
            1,
            alpha=alpha,
            name=f"{name}_conv1x1{suffix}",
        )
        outputs.append(tf.keras.layers.Add(name=f"{name}_add2{suffix}")([out1, y]))
    out2 = (
        outputs[0] if halves == 1 else tf.keras.layers.Concatenate(name=f"{name}_concat")(outputs)
    )
    return variant.rprelu(out2, f"{name}_rprelu2")


def ReActNetA(
    *,
    norm: str = "nobn",
    stage: int = 2,
    stem: str = "imagenet",
    alpha: float | None = None,
    design: str = "reference",
    input_shape: tuple[int, int, int] | None = None,
    input_tensor: tf.Tensor | None = None,
    include_top: bool = True,
    num_classes: int = 1000,
    weights: str | None = None,
    padding: str | None = None,
    name: str | None = None,
) -> tf.keras.Model:
    """ReActNet-A, as trained in "BNN - BN = ?" and A&B BNN.

    Args:
        norm: "bn" (batch norm after every convolution), "nobn" (the paper's BN-free
            network: scaled-WS convolutions and alpha/beta residual scaling) or "none"
            (batch norm deleted, nothing in its place).
        stage: 1 binarizes the activations only (real weights), 2 the weights too. Both
            stages have the same variables: a stage-2 model loads stage-1 weights.
        stem: "imagenet" (the first convolution has stride 2) or "cifar" (stride 1, as A&B
            BNN's CIFAR models).
        alpha: the residual branch scale of the BN-free variant; by default the design's
            (0.2 in the paper's reference, 0.25 in A&B BNN).
        design: whose BN-free block (`norm="nobn"` only): "reference" (the paper's) or "ab"
            (A&B BNN's: quantized RPReLU, the sigmoid-gradient sign, shortcuts from the
            unscaled input; see `zoo.DESIGNS`).
        input_shape: shape of the input images, (224, 224, 3) by default.
        input_tensor: optional Keras tensor to use as the model input.
        include_top: whether to include the pooling and the final dense layer.
        num_classes: number of classes of the final dense layer.
        weights: None (random initialization), the path of a Keras weights file, or of a
            PyTorch checkpoint (`.pth`, `.pth.tar`, `.pt`) of the reference's or ReActNet's
            model of this variant (see `zoo.from_torch`; needs the `torch` extra).
        padding: how the strided convolutions pad: "keras" (`padding="same"`, 0 before and
            1 after on even inputs) or "torch" (symmetric, as PyTorch and the reference:
            exact outputs for ported weights). By default "torch" if `weights` is a
            PyTorch file, "keras" otherwise. Both have the same variables.
        name: the model's name, `reactnet_a_{norm}` (`reactnet_a_ab` for A&B BNN's design)
            by default.

    Returns:
        A `tf.keras.Model`.

    References:
        - [ReActNet](https://arxiv.org/abs/2003.03488)
        - [BNN - BN = ?](https://arxiv.org/abs/2104.08215)
        - [A&B BNN](https://arxiv.org/abs/2403.03739)
    """
    variant = blocks.Variant(norm, stage, blocks.resolve_padding(padding, weights), design)
    alpha = variant.spec.alpha if alpha is None else alpha
    if stem not in STEMS:
        raise ValueError(f"`stem` must be one of {STEMS}, got {stem!r}.")
    inputs = blocks.model_inputs(input_shape, input_tensor, weights, include_top, num_classes, 224)
    blocks.check_divisible(inputs, 32 if stem == "imagenet" else 16, "ReActNet-A")
    x = variant.conv(
        inputs,
        CHANNELS[0],
        3,
        strides=2 if stem == "imagenet" else 1,
        binary_input=False,
        binary_weight=False,
        name="conv_first",
    )
    for i, spec in enumerate(block_specs(alpha)):
        x = _block(x, spec, variant, alpha, name=f"block{i + 1}")
    if include_top:
        x = blocks.classifier(x, num_classes)
    name = name or f"reactnet_a_{blocks.variant_suffix(variant)}"
    return blocks.finish(inputs, x, input_tensor, weights, name)
