"""Weight quantizers that match the paper's reference implementation."""

import larq as lq
import tensorflow as tf
from larq import utils as lq_utils

from larq_nobn.registry import keras_serializable
from larq_nobn.unitwise import unit_mean


def magnitude_aware_ste_sign(x: tf.Tensor, clip_value: float = 1.0) -> tf.Tensor:
    """`mean(|x|) * sign(x)` per output unit, with an unscaled straight-through gradient.

    See `MagnitudeAwareSteSign` for the difference with larq's `magnitude_aware_sign`.
    """

    @tf.custom_gradient
    def _call(x):
        scale = unit_mean(tf.abs(x))

        def grad(dy):
            return tf.where(tf.abs(x) <= clip_value, dy, tf.zeros_like(dy))

        return scale * lq.math.sign(x), grad

    return _call(x)


@lq_utils.register_alias("magnitude_aware_ste_sign")
@keras_serializable("MagnitudeAwareSteSign")  # the name older files give it
class MagnitudeAwareSteSign(lq.quantizers._BaseQuantizer):
    r"""Magnitude-aware sign with a plain straight-through gradient.

    Forward, per output unit (last axis of the kernel):
    \\[ q(w) = \mathrm{mean}(|w|) \cdot \mathrm{sign}(w) \\]
    Backward, the clipped identity, **not** multiplied by the scale:
    \\[ \frac{\partial q}{\partial w} = 1_{|w| \leq \texttt{clip_value}} \\]

    This is what the reference code of "BNN - BN = ?" (`HardBinaryConv`,
    `HardBinaryScaledStdConv2d`) computes. larq's `magnitude_aware_sign` has the same
    forward pass but multiplies the straight-through gradient by the per-unit scale
    `mean(|w|)`. With adaptive gradient clipping, which compares gradient norms with weight
    norms, that factor changes training, so the zoo uses this quantizer.

    ```python
    layer = larq_nobn.ScaledWSQuantConv2D(
        64, 3, input_quantizer="approx_sign", kernel_quantizer="magnitude_aware_ste_sign"
    )
    ```

    Args:
        clip_value: the gradient is zero where `|w| > clip_value`.
        metrics: larq quantizer metrics, e.g. `["flip_ratio"]`.

    Returns:
        The binarized, scaled kernel.

    References:
        - [BNN - BN = ?: Training Binary Neural Networks without Batch Normalization](
          https://arxiv.org/abs/2104.08215)
        - [ReActNet](https://arxiv.org/abs/2003.03488)
    """

    precision = 1

    def __init__(self, clip_value: float = 1.0, **kwargs):
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def call(self, inputs):
        return super().call(magnitude_aware_ste_sign(inputs, self.clip_value))

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


def sigmoid_sign(x: tf.Tensor, steepness: float = 3.0) -> tf.Tensor:
    """`sign(x)` with the derivative of `2 * sigmoid(steepness * x) - 1` as its gradient.

    See `SigmoidSign`.
    """

    @tf.custom_gradient
    def _call(x):
        def grad(dy):
            s = tf.sigmoid(steepness * x)
            return dy * (2.0 * steepness) * s * (1.0 - s)

        return lq.math.sign(x), grad

    return _call(x)


@lq_utils.register_alias("sigmoid_sign")
@keras_serializable()
class SigmoidSign(lq.quantizers._BaseQuantizer):
    r"""Sign with the gradient of a steep sigmoid, A&B BNN's activation binarizer.

    Forward \\( q(x) = \mathrm{sign}(x) \\) (larq's convention: \\( q(0) = 1 \\)); backward
    the derivative of \\( 2 \sigma(a x) - 1 \\), a smooth surrogate that peaks at
    \\( a / 2 \\) in 0 and never vanishes:
    \\[ \frac{\partial q}{\partial x} = 2 a \, \sigma(a x) \, (1 - \sigma(a x)) \\]

    ```python
    layer = larq_nobn.ScaledWSQuantConv2D(64, 3, input_quantizer="sigmoid_sign")
    ```

    Args:
        steepness: the sigmoid's slope `a` (3 in A&B BNN).
        metrics: larq quantizer metrics, e.g. `["flip_ratio"]`.

    Returns:
        The binarized inputs.

    References:
        - [A&B BNN: Add&Bit-Operation-Only Hardware-Friendly Binary Neural Network](
          https://arxiv.org/abs/2403.03739)
    """

    precision = 1

    def __init__(self, steepness: float = 3.0, **kwargs):
        if not steepness > 0:
            raise ValueError(f"`steepness` must be positive, got {steepness!r}.")
        self.steepness = steepness
        super().__init__(**kwargs)

    def call(self, inputs):
        return super().call(sigmoid_sign(inputs, self.steepness))

    def get_config(self):
        return {**super().get_config(), "steepness": self.steepness}
