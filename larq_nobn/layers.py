"""Keras layers for batch-norm-free binary networks."""

import contextlib
import logging
import math
from collections.abc import Iterator

import larq as lq
import tensorflow as tf

from larq_nobn import acceleration
from larq_nobn.conv import FastGradientConv
from larq_nobn.quantizers import MagnitudeAwareSteSign
from larq_nobn.registry import keras_serializable
from larq_nobn.unitwise import scaled_standardize, scaled_ws_kernel


@contextlib.contextmanager
def silence_starved_weights_warning() -> Iterator[None]:
    """Drops larq's "starved weights" warning for binary kernels without a constraint,
    in the block that builds the layers (larq's logger keeps every other record).

    The warning does not apply to scaled-WS layers (the quantizer sees a standardized
    kernel) nor to models that, like the paper's reference, train without weight clipping.
    """

    def keep(record: logging.LogRecord) -> bool:
        return "starved weights" not in record.getMessage()

    logger = logging.getLogger("larq.layers_base")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


class _StandardizedKernel:
    """What a `ScaledWSQuantConv2D` reads from its kernel: `gain * Q(scaled_ws(W))`.

    larq wraps the kernel in a `QuantizedVariable` that applies this on every read inside
    the layer's call, so the layer keeps larq's machinery (`larq.context`, summaries,
    latent weights for optimizers such as Bop). `precision` is the kernel quantizer's, so
    `larq.models.summary` counts the weights as binary when they are.
    """

    def __init__(self, layer: "ScaledWSQuantConv2D"):
        self.layer = layer
        self.precision = getattr(layer.kernel_quantizer, "precision", None) or 32

    def scaled_gain(self) -> tf.Tensor:
        """The per-channel factor of the kernel: `kernel_scale * gain`, shape (filters,)."""
        gain = tf.convert_to_tensor(self.layer.gain)
        if self.layer.kernel_scale != 1.0:
            gain = gain * self.layer.kernel_scale  # a (filters,) product: free next to the kernel
        return gain

    def __call__(self, latent_kernel):
        layer = self.layer
        latent_kernel = tf.convert_to_tensor(latent_kernel)
        gain = self.scaled_gain()
        quantizer = layer.kernel_quantizer
        # The real-valued and the reference's binary kernel have a fused implementation,
        # where the acceleration setting takes it; otherwise, and for any other quantizer,
        # the quantizer is applied to the standardized kernel.
        if acceleration.plan().fused_ws_kernel:
            if quantizer is None:
                return scaled_ws_kernel(latent_kernel, gain, layer.gamma, layer.eps)
            if type(quantizer) is MagnitudeAwareSteSign and not quantizer._custom_metrics:
                return scaled_ws_kernel(
                    latent_kernel, gain, layer.gamma, layer.eps, binary_clip=quantizer.clip_value
                )
        kernel = scaled_standardize(latent_kernel, layer.gamma, layer.eps)
        if quantizer is not None:
            kernel = quantizer(kernel)
        return kernel * tf.cast(gain, kernel.dtype)


@keras_serializable("ScaledWSQuantConv2D")  # the name older files give it
class ScaledWSQuantConv2D(FastGradientConv, lq.layers.QuantConv2D):
    """A larq `QuantConv2D` whose latent kernel is scaled-weight-standardized.

    For a latent kernel W of shape (kh, kw, in / groups, out) the convolution uses

        W_hat = gamma * (W - mean(W)) / (std(W) + eps) / sqrt(kh * kw * in / groups)
        kernel = gain * kernel_quantizer(W_hat)

    with the mean and population standard deviation taken per output channel and `gain` a
    trainable per-output-channel weight, initialized to ones; a constant `kernel_scale`,
    if given, multiplies that kernel too. The standardization is a
    reparameterization: gradients flow through it to the latent kernel. Without a kernel
    quantizer, or with "magnitude_aware_ste_sign", the effective kernel is computed by the
    fused `larq_nobn.scaled_ws_kernel` (same values and gradients, less time and memory)
    unless the acceleration setting is "exact" (`larq_nobn.acceleration`); any other
    quantizer is applied to `scaled_standardize(W)`. Every argument of
    `larq.layers.QuantConv2D` (so every one of `tf.keras.layers.Conv2D`) is taken, in its
    order and with its default. With no kernel quantizer this is the reference's
    `ScaledStdConv2d`; with `kernel_quantizer="magnitude_aware_ste_sign"` its
    `HardBinaryScaledStdConv2d`.

    Grouped convolutions: each output channel's kernel is the (kh, kw, in / groups) slice
    of its group, so the per-channel standardization and its fan-in are unchanged
    (computed from the kernel's shape). `data_format` does not change the kernel either
    (Keras stores it as (kh, kw, in / groups, out) in both), only the layout of the
    inputs and outputs; like `tf.keras.layers.Conv2D`, on CPUs `"channels_first"` runs
    only where XLA compiles the convolution (`model.compile(jit_compile=True)`, or
    `tf.function(jit_compile=True)`): TensorFlow's CPU kernels are NHWC only, and say so
    in one line ("The Conv2D op currently only supports the NHWC tensor format on the
    CPU"). On GPUs it runs everywhere, and is the layout cuDNN prefers.

    ```python
    x = ScaledWSQuantConv2D(
        64, 3, padding="same", use_bias=False,
        input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_ste_sign",
    )(x)
    ```

    Args:
        filters: number of output channels.
        kernel_size: an integer or a pair of integers, the kernel's height and width.
        strides: an integer or a pair of integers, the strides of the convolution.
        padding: `"valid"` or `"same"`.
        pad_values: the value `"same"` padding pads the inputs with (larq's; e.g. 1.0
            for binary inputs, so that the padding is a valid binary value).
        data_format: `"channels_last"` (NHWC) or `"channels_first"` (NCHW); None for
            Keras' `image_data_format()`.
        dilation_rate: an integer or a pair of integers, the dilation rate.
        groups: the number of groups the input channels are split into, each convolved
            with `filters / groups` filters; both must be divisible by it.
        activation: the activation after the convolution (and the bias).
        use_bias: whether the layer adds a bias.
        input_quantizer: the quantizer of the inputs (larq), e.g. `"approx_sign"`.
        kernel_quantizer: the quantizer of the standardized kernel (larq), e.g.
            `"magnitude_aware_ste_sign"`.
        kernel_initializer: initializer of the latent kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the latent kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the outputs.
        kernel_constraint: constraint of the latent kernel.
        bias_constraint: constraint of the bias.
        gamma: the gain of the nonlinearity that follows (1.0 in the paper), > 0.
        eps: added to the per-channel standard deviation, >= 0.
        gain_initializer: initializer of the per-channel gain.
        kernel_scale: a constant factor on the effective kernel. Without a bias the
            outputs are then exactly `kernel_scale * conv(x)`: a scale after the
            convolution (such as the alpha of a BN-free residual branch) is applied to the
            (filters,) gain instead of to every output.
        **kwargs: the arguments of every Keras layer (`name`, `dtype`, ...).

    Returns:
        A Keras layer.

    References:
        - [BNN - BN = ?](https://arxiv.org/abs/2104.08215)
        - [Characterizing signal propagation to close the performance gap in
          unnormalized ResNets](https://arxiv.org/abs/2101.08692)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "valid",
        pad_values: float = 0.0,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation=None,
        use_bias: bool = True,
        input_quantizer=None,
        kernel_quantizer=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        *,
        gamma: float = 1.0,
        eps: float = 1e-5,
        gain_initializer="ones",
        kernel_scale: float = 1.0,
        **kwargs,
    ):
        if not math.isfinite(kernel_scale):
            raise ValueError(f"`kernel_scale` must be a finite number, got {kernel_scale}.")
        if eps < 0:
            raise ValueError(f"`eps` must be >= 0, got {eps}.")
        if not gamma > 0:
            raise ValueError(f"`gamma` must be > 0, got {gamma}.")
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.kernel_scale = float(kernel_scale)
        self.gain_initializer = tf.keras.initializers.get(gain_initializer)
        # larq warns that binary kernels without a `kernel_constraint` may starve. Not so
        # here: the quantizer sees the standardized kernel, |W_hat| ~ 1/sqrt(fan_in) << 1.
        with silence_starved_weights_warning():
            super().__init__(
                filters,
                kernel_size,
                strides=strides,
                padding=padding,
                pad_values=pad_values,
                data_format=data_format,
                dilation_rate=dilation_rate,
                groups=groups,
                activation=activation,
                use_bias=use_bias,
                input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer,
                kernel_initializer=kernel_initializer,
                bias_initializer=bias_initializer,
                kernel_regularizer=kernel_regularizer,
                bias_regularizer=bias_regularizer,
                activity_regularizer=activity_regularizer,
                kernel_constraint=kernel_constraint,
                bias_constraint=bias_constraint,
                **kwargs,
            )

    def _get_quantizer(self, name):
        if name == "kernel":
            return _StandardizedKernel(self)
        return super()._get_quantizer(name)

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain",
            shape=(self.filters,),
            initializer=self.gain_initializer,
            trainable=True,
            dtype=self.dtype,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "eps": self.eps,
            "gain_initializer": tf.keras.initializers.serialize(self.gain_initializer),
            "kernel_scale": self.kernel_scale,
        }


@keras_serializable("ScaledWSConv2D")  # the name older files give it
class ScaledWSConv2D(ScaledWSQuantConv2D):
    """Full-precision `Conv2D` with scaled weight standardization and a per-channel gain.

    The reference's `ScaledStdConv2d`: a `ScaledWSQuantConv2D` without quantizers. It
    takes every argument of `tf.keras.layers.Conv2D`, in its order and with its default
    (`use_bias=True`, as Conv2D and torch's `Conv2d`), plus larq's `pad_values` and the
    standardization's own; grouped convolutions and `data_format` work as in
    `ScaledWSQuantConv2D`.

    Args:
        filters: number of output channels.
        kernel_size: an integer or a pair of integers, the kernel's height and width.
        strides: an integer or a pair of integers, the strides of the convolution.
        padding: `"valid"` or `"same"`.
        pad_values: the value `"same"` padding pads the inputs with.
        data_format: `"channels_last"` or `"channels_first"` (see `ScaledWSQuantConv2D`
            for CPUs); None for Keras' `image_data_format()`.
        dilation_rate: an integer or a pair of integers, the dilation rate.
        groups: the number of groups of input channels.
        activation: the activation after the convolution (and the bias).
        use_bias: whether the layer adds a bias.
        kernel_initializer: initializer of the latent kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer of the latent kernel.
        bias_regularizer: regularizer of the bias.
        activity_regularizer: regularizer of the outputs.
        kernel_constraint: constraint of the latent kernel.
        bias_constraint: constraint of the bias.
        gamma: the gain of the nonlinearity that follows, > 0.
        eps: added to the per-channel standard deviation, >= 0.
        gain_initializer: initializer of the per-channel gain.
        kernel_scale: a constant factor on the effective kernel.
        **kwargs: the arguments of every Keras layer (`name`, `dtype`, ...).

    Returns:
        A Keras layer.

    References:
        - [Characterizing signal propagation to close the performance gap in
          unnormalized ResNets](https://arxiv.org/abs/2101.08692)
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "valid",
        pad_values: float = 0.0,
        data_format: str | None = None,
        dilation_rate: int | tuple[int, int] = (1, 1),
        groups: int = 1,
        activation=None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        *,
        gamma: float = 1.0,
        eps: float = 1e-5,
        gain_initializer="ones",
        kernel_scale: float = 1.0,
        **kwargs,
    ):
        for name in ("input_quantizer", "kernel_quantizer"):
            if kwargs.get(name) is not None:
                raise ValueError(
                    f"ScaledWSConv2D is full precision; use ScaledWSQuantConv2D for `{name}`."
                )
            kwargs.pop(name, None)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            pad_values=pad_values,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            gamma=gamma,
            eps=eps,
            gain_initializer=gain_initializer,
            kernel_scale=kernel_scale,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        del config["input_quantizer"], config["kernel_quantizer"]
        return config


@keras_serializable("LearnableBias")  # the name older files give it
class LearnableBias(tf.keras.layers.Layer):
    """A learnable per-channel shift, ReActNet's "move" layer: `outputs = inputs + bias`.

    Args:
        bias_initializer: initializer of the bias (zeros, as in ReActNet).
        bias_regularizer: optional regularizer of the bias.

    Returns:
        A Keras layer with one weight of shape (channels,).

    References:
        - [ReActNet](https://arxiv.org/abs/2003.03488)
    """

    def __init__(self, bias_initializer="zeros", bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)
        self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("LearnableBias needs a known number of channels (last axis).")
        self.bias = self.add_weight(
            name="bias",
            shape=(channels,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + tf.cast(self.bias, inputs.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
            "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
        }


# A&B BNN's initial exponent (Ruichen0424/AB-BNN, `Network/BNN.py`, `Q_PReLU`).
INITIAL_LOG2_SLOPE = -3.0


def power_of_two(log2_slope: tf.Tensor) -> tf.Tensor:
    """`2 ** round(log2_slope)`, straight through the rounding (the gradient of `2 ** L`).

    Rounds half to even, as `torch.round` does.
    """

    @tf.custom_gradient
    def rounded(x):
        return tf.round(x), lambda dy: dy

    return tf.pow(tf.constant(2.0, log2_slope.dtype), rounded(log2_slope))


@keras_serializable()
class QuantizedPReLU(tf.keras.layers.Layer):
    r"""A per-channel PReLU whose slopes are powers of two, A&B BNN's quantized PReLU.

    \\[ y = \max(x, 0) + 2^{\mathrm{round}(L)} \min(x, 0) \\]
    with a learnable exponent `L` per channel (last axis), trained straight through the
    rounding. The negative part is a shift, so an RPReLU built from it (learnable bias,
    this layer, learnable bias) has no multiplication at inference.

    ```python
    x = larq_nobn.LearnableBias()(x)
    x = larq_nobn.QuantizedPReLU()(x)  # slopes 2 ** -3 at initialization
    x = larq_nobn.LearnableBias()(x)
    ```

    Args:
        log2_slope_initializer: initializer of `L`; by default the constant
            `INITIAL_LOG2_SLOPE` (-3, slopes 1/8, as in A&B BNN).
        log2_slope_regularizer: optional regularizer of `L`.

    Returns:
        A Keras layer with one weight `log2_slope` of shape (channels,).

    References:
        - [A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary Neural Network](
          https://arxiv.org/abs/2403.03739)
    """

    def __init__(
        self,
        log2_slope_initializer=None,
        log2_slope_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if log2_slope_initializer is None:
            log2_slope_initializer = tf.keras.initializers.Constant(INITIAL_LOG2_SLOPE)
        self.log2_slope_initializer = tf.keras.initializers.get(log2_slope_initializer)
        self.log2_slope_regularizer = tf.keras.regularizers.get(log2_slope_regularizer)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("QuantizedPReLU needs a known number of channels (last axis).")
        self.log2_slope = self.add_weight(
            name="log2_slope",
            shape=(channels,),
            initializer=self.log2_slope_initializer,
            regularizer=self.log2_slope_regularizer,
            trainable=True,
        )
        super().build(input_shape)

    def slopes(self) -> tf.Tensor:
        """The slopes `2 ** round(L)` (float32, one per channel)."""
        return power_of_two(tf.cast(self.log2_slope, tf.float32))

    def call(self, inputs):
        slope = tf.cast(self.slopes(), inputs.dtype)
        # The product of a negative input and a power of two is exact (no rounding).
        return tf.maximum(inputs, 0) + slope * tf.minimum(inputs, 0)

    def get_config(self):
        return {
            **super().get_config(),
            "log2_slope_initializer": tf.keras.initializers.serialize(self.log2_slope_initializer),
            "log2_slope_regularizer": tf.keras.regularizers.serialize(self.log2_slope_regularizer),
        }
