"""Pieces shared by the ReActNet builders: convolutions per norm variant, sign, RPReLU.

`norm` selects the variant of "BNN - BN = ?" (Chen et al. 2021):
- "bn": ReActNet with batch normalization after every convolution;
- "nobn": the paper's BN-free network: scaled-WS convolutions, alpha/beta residual scaling;
- "none": batch normalization deleted, nothing in its place (the paper's ablation).
"""

import dataclasses

import tensorflow as tf
from larq_zoo.core import utils as zoo_utils

import larq_nobn

NORMS = ("bn", "nobn", "none")
STAGES = (1, 2)

# The reference's defaults (VITA-Group/BNN_NoBN, models/*.py and layers.py).
DEFAULT_ALPHA = 0.2
ACTIVATION_QUANTIZER = "approx_sign"  # sign with Bi-Real's ApproxSign gradient
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

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}.")
        if self.stage not in STAGES:
            raise ValueError(
                f"`stage` must be 1 (binary activations) or 2 (binary weights too), "
                f"got {self.stage!r}."
            )

    @property
    def binary_weights(self) -> bool:
        return self.stage == 2

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
        """
        binary_weight = binary_weight and self.binary_weights
        kwargs = dict(
            strides=strides,
            padding="same",
            use_bias=False,
            input_quantizer=ACTIVATION_QUANTIZER if binary_input else None,
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

    def beta(self, x: tf.Tensor, beta: float, name: str) -> tf.Tensor:
        """A block input scaled by beta (BN-free variant only)."""
        return scale(x, beta, name) if self.scaled else x


def scale(x: tf.Tensor, factor: float, name: str) -> tf.Tensor:
    """`x * factor`, skipped (exactly) when the factor is 1."""
    if factor == 1.0:
        return x
    return tf.keras.layers.Rescaling(factor, name=name)(x)


def shift(x: tf.Tensor, name: str) -> tf.Tensor:
    """A learnable per-channel bias (ReActNet's "move"), e.g. before a sign."""
    return larq_nobn.LearnableBias(name=name)(x)


def rprelu(x: tf.Tensor, name: str) -> tf.Tensor:
    """ReActNet's RPReLU: learnable bias, per-channel PReLU, learnable bias."""
    x = shift(x, f"{name}_bias_in")
    x = tf.keras.layers.PReLU(
        alpha_initializer=tf.keras.initializers.Constant(PRELU_INIT),
        shared_axes=[1, 2],
        name=f"{name}_prelu",
    )(x)
    return shift(x, f"{name}_bias_out")


def classifier(x: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Global average pool and the full-precision final dense layer (named "fc")."""
    x = zoo_utils.global_pool(x)
    fan_in = x.shape[-1]
    return tf.keras.layers.Dense(
        num_classes,
        kernel_initializer=torch_default_initializer(),
        bias_initializer=tf.keras.initializers.RandomUniform(-(fan_in**-0.5), fan_in**-0.5),
        name="fc",
        dtype="float32",  # float32 logits under a mixed precision policy, as Keras advises
    )(x)


def model_inputs(input_shape, input_tensor, weights, include_top, num_classes, size: int):
    """larq-zoo's input handling; `weights` is None or a path (no pretrained downloads)."""
    if weights == "imagenet":
        raise ValueError(
            "No pretrained weights are published for these models yet: "
            "pass `weights=None` or the path of a weights file."
        )
    if input_shape is None and input_tensor is None:
        input_shape = (size, size, 3)
    input_shape = zoo_utils.validate_input(input_shape, weights, include_top, num_classes)
    return zoo_utils.get_input_layer(input_shape, input_tensor)


def check_divisible(inputs: tf.Tensor, factor: int, model: str) -> None:
    """Average-pool shortcuts need even feature maps at every stride-2 block."""
    for size in inputs.shape[1:3]:
        if size is not None and size % factor:
            raise ValueError(
                f"{model} needs input height and width divisible by {factor}, got "
                f"{tuple(inputs.shape[1:3])}."
            )


def finish(inputs, outputs, input_tensor, weights, name: str) -> tf.keras.Model:
    """The `tf.keras.Model`, with `weights` (a path) loaded if given."""
    if input_tensor is not None:
        inputs = tf.keras.utils.get_source_inputs(input_tensor)
    model = tf.keras.Model(inputs=inputs, outputs=outputs, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
