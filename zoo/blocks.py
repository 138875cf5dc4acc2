"""Pieces shared by the ReActNet builders: convolutions per norm variant, sign, RPReLU.

`norm` selects the variant of "BNN - BN = ?" (Chen et al. 2021):
- "bn": ReActNet with batch normalization after every convolution;
- "nobn": the paper's BN-free network: scaled-WS convolutions, alpha/beta residual scaling;
- "none": batch normalization deleted, nothing in its place (the paper's ablation).
"""

import dataclasses
import os

import tensorflow as tf

# Keras 2's own: larq-zoo's input helpers import Keras 3 (`keras.applications`) for this one
# function, which costs every process that builds a model seconds of start-up.
from tf_keras.src.applications.imagenet_utils import obtain_input_shape

import larq_nobn
from larq_nobn.zoo import torch_weights
from larq_nobn.zoo.variants import DESIGNS, NORMS, PADDINGS, STAGES, Design

# The reference's defaults (VITA-Group/BNN_NoBN, models/*.py and layers.py).
DEFAULT_ALPHA = DESIGNS["reference"].alpha
ACTIVATION_QUANTIZER = DESIGNS["reference"].activation_quantizer  # Bi-Real's ApproxSign
WEIGHT_QUANTIZER = "magnitude_aware_ste_sign"  # the reference's HardBinaryConv sign
BN_MOMENTUM = 0.9  # torch momentum 0.1
BN_EPSILON = 1e-5
PRELU_INIT = 0.25  # torch nn.PReLU default slope


def torch_default_initializer() -> tf.keras.initializers.Initializer:
    """torch's default conv / linear kernel init, U(+-1/sqrt(fan_in))."""
    return tf.keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def binary_latent_initializer() -> tf.keras.initializers.Initializer:
    """The reference's latent binary weights: `rand(shape) * 0.001`."""
    return tf.keras.initializers.RandomUniform(0.0, 1e-3)


@dataclasses.dataclass(frozen=True)
class Variant:
    """What a builder needs to know about the variant it builds."""

    norm: str
    stage: int
    padding: str = "keras"
    design: str = "reference"

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}.")
        if self.design not in DESIGNS:
            raise ValueError(f"`design` must be one of {tuple(DESIGNS)}, got {self.design!r}.")
        if self.design != "reference" and self.norm != "nobn":
            raise ValueError(
                f"The {self.design!r} design is BN-free: norm='nobn', not {self.norm!r}."
            )
        if self.padding not in PADDINGS:
            raise ValueError(f"`padding` must be one of {PADDINGS}, got {self.padding!r}.")
        if self.stage not in STAGES:
            raise ValueError(
                f"`stage` must be 1 (binary activations) or 2 (binary weights too), "
                f"got {self.stage!r}."
            )

    @property
    def binary_weights(self) -> bool:
        return self.stage == 2

    @property
    def spec(self) -> Design:
        """The BN-free block's design (`variants.DESIGNS`)."""
        return DESIGNS[self.design]

    @property
    def scaled(self) -> bool:
        """Alpha/beta residual scaling and scaled-WS convolutions (the BN-free variant)."""
        return self.norm == "nobn"

    def conv(
        self,
        x: tf.Tensor,
        filters: int,
        kernel_size: int,
        *,
        strides: int = 1,
        binary_input: bool,
        binary_weight: bool,
        name: str,
        kernel_scale: float = 1.0,
    ) -> tf.Tensor:
        """A convolution of this variant, followed by batch norm in the `bn` variant.

        `binary_weight` says whether the reference binarizes this convolution's weights in
        stage 2; in stage 1 every weight is real. `kernel_scale` (BN-free variant only)
        scales the outputs through the kernel.

        With `padding="torch"` a strided convolution is padded as PyTorch pads it,
        `kernel_size // 2` zeros on every side (Keras' "same" pads 0 before and 1 after on
        even inputs). A real input is padded explicitly (`{name}_pad`, then "valid"). A
        binary input must be padded after its sign, which larq does inside the layer for
        "same" only, and an explicit pad between the sign and the convolution would keep
        larq-compute-engine from converting it to `LceBconv2d`: the convolution runs with
        stride 1 and "same" padding (symmetric for odd kernels), and `{name}_subsample`
        keeps every second row and column, which for even inputs are exactly the
        reference's strided outputs (at 4x the convolution's cost).
        """
        binary_weight = binary_weight and self.binary_weights
        conv_padding, subsample = "same", None
        if self.padding == "torch" and strides > 1 and kernel_size > 1:
            if binary_input:
                strides, subsample = 1, strides
            else:
                x = tf.keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
                conv_padding = "valid"
        kwargs = dict(
            strides=strides,
            padding=conv_padding,
            use_bias=False,
            input_quantizer=self.spec.activation_quantizer if binary_input else None,
            kernel_quantizer=WEIGHT_QUANTIZER if binary_weight else None,
            kernel_initializer=(
                binary_latent_initializer() if binary_weight else torch_default_initializer()
            ),
            name=name,
        )
        if self.norm == "nobn":
            x = larq_nobn.ScaledWSQuantConv2D(
                filters, kernel_size, kernel_scale=kernel_scale, **kwargs
            )(x)
        else:
            if kernel_scale != 1.0:
                raise ValueError(f"Only the nobn variant scales kernels, not {self.norm!r}.")
            # No kernel constraint, as in the reference: keep larq from warning about it.
            with larq_nobn.layers.silence_starved_weights_warning():
                x = larq_nobn.conv.QuantConv2D(filters, kernel_size, **kwargs)(x)
        if subsample:
            x = subsample2d(x, subsample, f"{name}_subsample")
        if self.norm == "bn":
            x = tf.keras.layers.BatchNormalization(
                momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn"
            )(x)
        return x

    def binary_conv(
        self,
        x: tf.Tensor,
        filters: int,
        kernel_size: int,
        *,
        alpha: float,
        name: str,
        strides: int = 1,
    ) -> tf.Tensor:
        """A residual branch's binary-input convolution, times alpha in the BN-free variant.

        The alpha is the convolution's `kernel_scale` (exactly `alpha * conv(x)`, as the
        convolution has no bias), not a separate multiplication over its outputs.
        """
        return self.conv(
            x,
            filters,
            kernel_size,
            strides=strides,
            binary_input=True,
            binary_weight=True,
            name=name,
            kernel_scale=alpha if self.scaled else 1.0,
        )

    def max_pool(self, x: tf.Tensor, name: str) -> tf.Tensor:
        """The 3x3/2 max-pool of an ImageNet stem; with `padding="torch"` padded by one
        (ignored) pixel on every side as in PyTorch, i.e. pooled with stride 1 and "same"
        padding, then subsampled."""
        if self.padding == "keras":
            return tf.keras.layers.MaxPool2D(3, 2, padding="same", name=name)(x)
        x = tf.keras.layers.MaxPool2D(3, 1, padding="same", name=name)(x)
        return subsample2d(x, 2, f"{name}_subsample")

    def beta(self, x: tf.Tensor, beta: float, name: str) -> tf.Tensor:
        """A block input scaled by beta (BN-free variant only)."""
        return scale(x, beta, name) if self.scaled else x

    def shortcut_input(self, x: tf.Tensor, x_scaled: tf.Tensor) -> tf.Tensor:
        """What a downsampling shortcut takes: the block input, or its beta-scaled copy."""
        return x_scaled if self.spec.scaled_shortcut else x

    def rprelu(self, x: tf.Tensor, name: str) -> tf.Tensor:
        """ReActNet's RPReLU: learnable bias, per-channel PReLU, learnable bias; the PReLU's
        slopes are powers of two in A&B BNN's design."""
        x = shift(x, f"{name}_bias_in")
        if self.spec.quantized_prelu:
            x = larq_nobn.QuantizedPReLU(name=f"{name}_prelu")(x)
        else:
            x = tf.keras.layers.PReLU(
                alpha_initializer=tf.keras.initializers.Constant(PRELU_INIT),
                shared_axes=[1, 2],
                name=f"{name}_prelu",
            )(x)
        return shift(x, f"{name}_bias_out")


def variant_suffix(variant: Variant) -> str:
    """A model name's last part: the norm, or the design for another than the reference's."""
    return variant.norm if variant.design == "reference" else variant.design


def scale(x: tf.Tensor, factor: float, name: str) -> tf.Tensor:
    """`x * factor`, skipped (exactly) when the factor is 1."""
    if factor == 1.0:
        return x
    return tf.keras.layers.Rescaling(factor, name=name)(x)


def subsample2d(x: tf.Tensor, strides: int, name: str) -> tf.Tensor:
    """Every `strides`-th row and column, starting with the first (`x[:, ::s, ::s]`), as a
    1x1 pooling: a built-in layer that saves, loads and converts like any other."""
    return tf.keras.layers.AveragePooling2D(1, strides, name=name)(x)


def shift(x: tf.Tensor, name: str) -> tf.Tensor:
    """A learnable per-channel bias (ReActNet's "move"), e.g. before a sign."""
    return larq_nobn.LearnableBias(name=name)(x)


def classifier(x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Global average pool and the full-precision final dense layer (named "fc")."""
    x = global_pool(x)
    fan_in = x.shape[-1]
    return tf.keras.layers.Dense(
        num_classes,
        kernel_initializer=torch_default_initializer(),
        bias_initializer=tf.keras.initializers.RandomUniform(-(fan_in**-0.5), fan_in**-0.5),
        name="fc",
        dtype="float32",  # float32 logits under a mixed precision policy, as Keras advises
    )(x)


def global_pool(x: tf.Tensor) -> tf.Tensor:
    """Global average pooling as larq-zoo does it: an `AveragePooling2D` over the whole map,
    then `Flatten` (faster than `GlobalAveragePooling2D` in larq-compute-engine), or
    `GlobalAveragePooling2D` where the map's size is not known."""
    size = x.shape[1:3]
    if None in size:
        return tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.AveragePooling2D(pool_size=tuple(size))(x)
    return tf.keras.layers.Flatten()(x)


def resolve_padding(padding: str | None, weights: str | None) -> str:
    """`padding`, or by default "torch" for PyTorch weights and "keras" otherwise."""
    if padding is not None:
        return padding
    return "torch" if torch_weights.is_torch_file(weights) else "keras"


def model_inputs(input_shape, input_tensor, weights, include_top, num_classes, size: int):
    """larq-zoo's input handling (its checks and messages); `weights` is None or a path (no
    pretrained downloads)."""
    if weights == "imagenet":
        raise ValueError(
            "No pretrained weights are published in Keras format: pass `weights=None`, "
            "the path of a weights file, or a PyTorch checkpoint of the reference "
            "(see `zoo.from_torch`)."
        )
    if input_shape is None and input_tensor is None:
        input_shape = (size, size, 3)
    if not (weights is None or os.path.exists(weights)):
        raise ValueError(
            "The `weights` argument should be either `None` (random initialization), "
            "`imagenet` (pre-training on ImageNet), or the path to the weights file "
            "to be loaded."
        )
    input_shape = obtain_input_shape(
        input_shape,
        default_size=224,
        min_size=0,
        data_format=tf.keras.backend.image_data_format(),
        require_flatten=include_top,
        weights=weights,
    )
    if input_tensor is None:
        return tf.keras.layers.Input(shape=input_shape)
    if not tf.keras.backend.is_keras_tensor(input_tensor):
        return tf.keras.layers.Input(tensor=input_tensor, shape=input_shape)
    return input_tensor


def check_divisible(inputs: tf.Tensor, factor: int, model: str) -> None:
    """Average-pool shortcuts need even feature maps at every stride-2 block."""
    for size in inputs.shape[1:3]:
        if size is not None and size % factor:
            raise ValueError(
                f"{model} needs input height and width divisible by {factor}, got "
                f"{tuple(inputs.shape[1:3])}."
            )


def finish(inputs, outputs, input_tensor, weights, name: str) -> tf.keras.Model:
    """The `tf.keras.Model`, with `weights` (a path) loaded if given: a PyTorch checkpoint
    (`.pth`, `.pth.tar`, `.pt`) through `torch_weights.load_torch_weights`, anything else
    with `model.load_weights`."""
    if input_tensor is not None:
        inputs = tf.keras.utils.get_source_inputs(input_tensor)
    model = tf.keras.Model(inputs=inputs, outputs=outputs, name=name)
    if torch_weights.is_torch_file(weights):
        torch_weights.load_torch_weights(model, weights)
    elif weights is not None:
        model.load_weights(weights)
    return model
