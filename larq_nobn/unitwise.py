"""Per-output-unit math shared by every layer, constraint and optimizer of larq_nobn.

Keras stores the output units of a kernel on its last axis: (kh, kw, in, out) for a 2-D
convolution, (in, out) for a dense layer. Everything here reduces over all other axes.
"""

import numpy as np
import tensorflow as tf

from larq_nobn import acceleration


def fan_in_axes(rank: int) -> list[int]:
    """The axes of a kernel of the given rank that belong to one output unit."""
    return list(range(rank - 1))


UNITS = ("output", "element", "tensor")
"""What one unit of a weight is, for `unitwise_norm` and AGC:
- "output": NFNets' rule: per output unit (the last axis) for rank >= 2, else the tensor;
- "element": every element on its own;
- "tensor": the whole tensor as one unit.
"""


def unitwise_norm(x: tf.Tensor, unit: str = "output") -> tf.Tensor:
    """L2 norm of `x` per unit, broadcastable against `x`.

    With the default `unit="output"`, for a kernel of rank >= 2 the norm is taken over
    every axis but the last (one norm per output unit, shape (1, ..., 1, out)); for vectors
    and scalars it is the norm of the whole tensor, as in NFNets and the reference
    `agc.py`. `"element"` gives `|x|`, `"tensor"` the norm of the whole tensor (a scalar):
    what the reference's rule gives a parameter whose PyTorch layout differs from its
    Keras one (a (C, 1, 1, 1) gain, a (C,) PReLU slope).

    Args:
        x: a weight or gradient tensor.
        unit: one of `UNITS`.

    Returns:
        The norms, with the rank of `x` (a scalar for rank <= 1 or `unit="tensor"`).

    References:
        - [High-Performance Large-Scale Image Recognition Without Normalization](
          https://arxiv.org/abs/2102.06171)
    """
    x = tf.convert_to_tensor(x)
    if unit == "element":
        return tf.abs(x)
    if unit not in UNITS:
        raise ValueError(f"`unit` must be one of {UNITS}, got {unit!r}.")
    if unit == "tensor" or x.shape.rank is None or x.shape.rank <= 1:
        return tf.norm(x)
    # This runs on every weight and every gradient in each AGC step: see `_per_unit`.
    return tf.sqrt(_per_unit(tf.square(x), mean=False))


def _column_reduce(matrix: tf.Tensor, mean: bool) -> tf.Tensor:
    """Column sums (or means) of a (fan_in, units) matrix, shape (1, units).

    As a product with a row of ones: on CPUs several times faster than
    `reduce_sum` over axis 0, which reduces across the rows of a row-major matrix.
    """
    fan_in = matrix.shape[0]
    total = tf.matmul(tf.ones([1, fan_in], matrix.dtype), matrix)
    return total / fan_in if mean else total


def _per_unit(x: tf.Tensor, mean: bool) -> tf.Tensor:
    """Sum (or mean) of a kernel per output unit, shape (1, ..., 1, out)."""
    rank = x.shape.rank
    fan_in = x.shape[:-1].num_elements()
    if fan_in is None:
        reduce = tf.reduce_mean if mean else tf.reduce_sum
        return reduce(x, axis=fan_in_axes(rank), keepdims=True)
    column = _column_reduce(tf.reshape(x, [fan_in, x.shape[-1]]), mean)
    return tf.reshape(column, [1] * (rank - 1) + [x.shape[-1]])


def unit_mean(x: tf.Tensor) -> tf.Tensor:
    """Mean of a kernel (rank >= 1) per output unit, shape (1, ..., 1, out)."""
    return _per_unit(tf.convert_to_tensor(x), mean=True)


def _matrix_shape(kernel: tf.Tensor, what: str) -> list[int]:
    shape = kernel.shape
    if shape.rank is None or shape.rank < 2 or not shape.is_fully_defined():
        raise ValueError(f"{what} needs a kernel of known shape and rank >= 2, got {shape}.")
    return [shape[:-1].num_elements(), shape[-1]]


FUSED_MIN_SIZE = 2**20
"""The smallest kernel (in elements) whose standardization runs on fused batch-norm ops."""


def fused_batch_norm_statistics(size: int) -> bool:
    """Whether the standardization of a kernel runs on TensorFlow's fused batch-norm ops.

    A kernel's per-unit statistics and the gradient of its standardization are batch-norm
    math over the fan-in axis: `FusedBatchNormV3` gives the statistics and
    `FusedBatchNormGradV3` the whole gradient with both column sums it needs, each in one
    op instead of several passes over the kernel. Each op has a fixed cost, which only
    large kernels pay back (`benchmarks/ws_kernel.py` times both per kernel of the zoo).
    Same values either way, to float32 rounding (tests compare both). Decided when a
    function is traced, by the acceleration setting (`larq_nobn.acceleration`), which
    never fuses where a GPU is visible.

    Args:
        size: the number of elements of the kernel.

    Returns:
        True for kernels of at least `FUSED_MIN_SIZE` elements where the setting fuses.
    """
    return size >= FUSED_MIN_SIZE and acceleration.plan().fused_statistics


# The statistics pass normalizes by sqrt(var + _STATISTICS_EPS) (finite for a constant
# unit); `_Moments` multiplies it back, so the value never shows.
_STATISTICS_EPS = 1e-12
_TINY = float(np.finfo(np.float32).tiny)


def _as_batch(matrix: tf.Tensor) -> tf.Tensor:
    """A (fan_in, units) matrix as an NHWC batch whose channels are the units."""
    fan_in, units = matrix.shape
    return tf.reshape(matrix, [1, fan_in, 1, units])


def _compute_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype a kernel's standardization is computed in: float64 for float64 kernels,
    float32 for every other (half precision loses too much in the sums)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


class _Moments:
    """Per-unit statistics of a (fan_in, units) float32 or float64 matrix W.

    The centered matrix `W - mean` is held as `spread_centered * spread`, with `spread` a
    (1, units) row (1.0 without fused statistics, where `spread_centered = W - mean`). A
    backward pass keeps only the (1, units) rows: `grad` works from W itself (which lives
    on anyway: it is the variable), not from a stored centered matrix.
    """

    def __init__(self, matrix: tf.Tensor, scale: float, eps: float):
        self.fan_in = matrix.shape[0]
        self.eps = eps
        # TensorFlow's fused batch-norm ops compute in float32 (half-precision inputs too).
        self.fused = matrix.dtype == tf.float32 and fused_batch_norm_statistics(
            matrix.shape.num_elements()
        )
        if self.fused:
            units = matrix.shape[1]
            normalized, _, _, mean, variance, _ = tf.raw_ops.FusedBatchNormV3(
                x=_as_batch(matrix),
                scale=tf.ones([units]),
                offset=tf.zeros([units]),
                mean=tf.zeros([0]),
                variance=tf.zeros([0]),
                epsilon=_STATISTICS_EPS,
                is_training=True,
            )
            self.mean = tf.reshape(mean, [1, units])
            variance = tf.reshape(variance, [1, units])  # the population variance
            self.spread_centered = tf.reshape(normalized, matrix.shape)
            self.spread = tf.sqrt(variance + _STATISTICS_EPS)
            self.std = tf.sqrt(variance)
        else:
            self.mean = _column_reduce(matrix, mean=True)
            self.spread_centered = matrix - self.mean
            self.spread = 1.0
            self.std = tf.sqrt(_column_reduce(tf.square(self.spread_centered), mean=True))
        self.factor = scale / (self.std + eps)  # W_hat = (W - mean) * factor

    def standardized(self, row_scale) -> tf.Tensor:
        """`(W - mean) * factor * row_scale`, for a (1, units) row or a number."""
        return self.spread_centered * (self.spread * self.factor * row_scale)

    def at_or_above_mean(self, matrix: tf.Tensor) -> tf.Tensor:
        """`W >= mean`, the sign of the standardized kernel (`W - mean >= 0` in IEEE).

        From the centered copy where there is one (a comparison with a scalar, the cheaper
        op); from W where the centered values come out of a fused op, whose rounding
        (`W * a + b`) may flip the sign of an entry within an ulp of the mean.
        """
        if self.fused:
            return matrix >= self.mean
        return self.spread_centered >= 0

    def mean_abs_centered(self) -> tf.Tensor:
        """`mean(|W - mean|)` per unit, shape (1, units)."""
        return _column_reduce(tf.abs(self.spread_centered), mean=True) * self.spread

    def grad(self, g, matrix, row_scale, after=()) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The gradient through `W_hat = (W - mean) * factor` for `d W_hat = g * row_scale`.

        `dW = factor * (g' - mean(g') - (W - mean) * mean(g' * (W - mean)) / (std (std + eps)))`
        with `g' = g * row_scale`: batch norm's gradient for a variance of
        `std (std + eps)` and no epsilon. Without fused statistics, every per-unit factor
        is applied to (1, units) rows and the formula is expanded in W instead of
        W - mean (no centered copy): five elementwise passes and two matrix-vector
        products. `after` lists other tensors computed from g.

        Returns:
            dW, and the column sums of g and of `g * (W - mean)`, shapes (1, units).
        """
        if self.fused:
            return self._fused_grad(g, matrix, row_scale)
        g_sum = _column_reduce(g, mean=False)
        g_dot_centered = _column_reduce(g * matrix, mean=False) - self.mean * g_sum
        coef = tf.math.divide_no_nan(g_dot_centered / self.fan_in, self.std * (self.std + self.eps))
        row = self.factor * row_scale
        centered_row = coef * row
        # The full-size products wait for every reduction of g, so that `g * row` is g's
        # last reader and TensorFlow can reuse g's buffer for it (it forwards an input
        # buffer that nothing else will read): two kernel-sized arrays live at a time in
        # this pass instead of up to four. The values are the same.
        with tf.control_dependencies([g_sum, g_dot_centered, *after]):
            d_kernel = (
                g * row
                - matrix * centered_row
                + (self.mean * centered_row - g_sum / self.fan_in * row)
            )
        return d_kernel, g_sum, g_dot_centered

    def _fused_grad(self, g, matrix, row_scale):
        units = matrix.shape[1]
        # Batch norm's x_hat is (W - mean) / root; a unit of zero spread gets the
        # smallest normal variance instead of 0, for a finite 1 / root (x_hat is 0 there).
        variance = tf.maximum(self.std * (self.std + self.eps), _TINY)
        root = tf.sqrt(variance)
        d_kernel, d_scale, d_offset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=_as_batch(g),
            x=_as_batch(matrix),
            scale=tf.reshape(self.factor * row_scale * root, [units]),
            reserve_space_1=tf.reshape(self.mean, [units]),
            reserve_space_2=tf.reshape(variance, [units]),
            reserve_space_3=tf.zeros([0]),
            epsilon=0.0,
            is_training=True,
        )
        g_dot_centered = tf.reshape(d_scale, [1, units]) * root
        return tf.reshape(d_kernel, matrix.shape), tf.reshape(d_offset, [1, units]), g_dot_centered


def standardize(kernel: tf.Tensor, eps: float = 1e-5, scale: float = 1.0) -> tf.Tensor:
    """`scale * (W - mean) / (std + eps)` per output unit, with the population std.

    The eps is added to the standard deviation (not under the square root), as in the
    reference implementation of the paper. The gradient is written out rather than left to
    automatic differentiation (about half the work and memory on the large kernels of a
    binary network, where this runs on every weight in every step):

        dW = scale / (std + eps) * (g - mean(g) - (W - mean) * mean(g * (W - mean))
                                    / (std * (std + eps)))

    for an incoming gradient g, with per-unit means (0 where std is 0). It is computed in
    float32 for kernels of lower precision (float64 for float64 ones); only per-unit
    statistics are kept for the backward pass, which works from the kernel itself.

    Args:
        kernel: a kernel whose last axis holds the output units (rank >= 2).
        eps: added to the standard deviation.
        scale: a constant factor.

    Returns:
        The standardized kernel, same shape and dtype.
    """
    kernel = tf.convert_to_tensor(kernel)
    shape, dtype = kernel.shape, kernel.dtype
    compute_dtype = _compute_dtype(dtype)
    matrix_shape = _matrix_shape(kernel, "standardize")

    def as_matrix(x):
        return tf.reshape(tf.cast(x, compute_dtype), matrix_shape)

    @tf.custom_gradient
    def _standardize(kernel):
        moments = _Moments(as_matrix(kernel), scale, eps)

        def grad(upstream):
            dw, _, _ = moments.grad(as_matrix(upstream), as_matrix(kernel), 1.0)
            return tf.cast(tf.reshape(dw, shape), dtype)

        return tf.cast(tf.reshape(moments.standardized(1.0), shape), dtype), grad

    return _standardize(kernel)


def scaled_ws_kernel(
    kernel: tf.Tensor,
    gain: tf.Tensor,
    gamma: float = 1.0,
    eps: float = 1e-5,
    binary_clip: float | None = None,
) -> tf.Tensor:
    """The effective kernel of a scaled-WS convolution, in one fused operation.

    With `W_hat = scaled_standardize(W, gamma, eps)`, this is `gain * W_hat`, or with
    `binary_clip` set `gain * magnitude_aware_ste_sign(W_hat, binary_clip)`: per output
    unit `gain * mean(|W_hat|) * sign(W_hat)`, whose gradient reaches `W_hat` where
    `|W_hat| <= binary_clip`. Same values and gradients as those compositions (to float32
    rounding; tests compare both), with fewer passes over the kernel, and only per-unit
    statistics kept for the backward pass instead of the intermediate kernels. The layers
    use it unless the acceleration setting is "exact" (`larq_nobn.acceleration`). It uses
    three identities, the reason gamma must be positive:
    - `sign(W_hat) = sign(W - mean)`;
    - `mean(|W_hat|) = gamma / sqrt(fan_in) / (std + eps) * mean(|W - mean|)`;
    - `|W_hat| < gamma` (a centered entry is at most `std * sqrt(fan_in - 1)`), so with
      `gamma <= binary_clip`, as in the paper (1 and 1), no entry is ever clipped.

    Args:
        kernel: the latent kernel, output units on the last axis (rank >= 2).
        gain: per-output-unit factors, shape (out,).
        gamma: the scale of the nonlinearity that follows, > 0.
        eps: added to the standard deviation.
        binary_clip: None for a real-valued kernel; else the straight-through clip value.

    Returns:
        The effective kernel, with the shape and dtype of `kernel`.
    """
    if not gamma > 0:
        raise ValueError(f"`gamma` must be > 0, got {gamma}.")
    kernel, gain = tf.convert_to_tensor(kernel), tf.convert_to_tensor(gain)
    shape, dtype, gain_dtype = kernel.shape, kernel.dtype, gain.dtype
    compute_dtype = _compute_dtype(dtype)
    matrix_shape = _matrix_shape(kernel, "scaled_ws_kernel")
    scale = gamma * matrix_shape[0] ** -0.5
    binary = binary_clip is not None
    may_clip = binary and gamma > binary_clip

    def as_matrix(x):
        return tf.reshape(tf.cast(x, compute_dtype), matrix_shape)

    @tf.custom_gradient
    def _kernel(kernel, gain):
        matrix = as_matrix(kernel)
        moments = _Moments(matrix, scale, eps)
        row_gain = tf.reshape(tf.cast(gain, compute_dtype), [1, -1])
        if binary:
            # mean |W_hat| per unit, and +-(gain * mean |W_hat|) by the sign of W_hat.
            magnitude = moments.factor * moments.mean_abs_centered()
            positive = magnitude * row_gain
            effective = tf.where(moments.at_or_above_mean(matrix), positive, -positive)
        else:
            effective = moments.standardized(row_gain)

        def grad(upstream):
            g, matrix = as_matrix(upstream), as_matrix(kernel)
            if not binary:
                d_kernel, _, g_dot_centered = moments.grad(g, matrix, row_gain)
                d_gain = g_dot_centered * moments.factor
            else:
                # sum(g * sign(W_hat)) = 2 * sum(g where W >= mean) - sum(g)
                positive_sum = _column_reduce(tf.where(matrix >= moments.mean, g, 0.0), mean=False)
                reductions = [positive_sum]
                if may_clip:  # sum(g) before g is zeroed where |W_hat| > clip
                    reductions.append(_column_reduce(g, mean=False))
                    inside = tf.abs(matrix - moments.mean) * moments.factor <= binary_clip
                    g = tf.where(inside, g, 0.0)
                d_kernel, g_sum, _ = moments.grad(g, matrix, row_gain, after=reductions)
                full_sum = reductions[1] if may_clip else g_sum
                d_gain = (2.0 * positive_sum - full_sum) * magnitude
            return (
                tf.cast(tf.reshape(d_kernel, shape), dtype),
                tf.cast(tf.reshape(d_gain, [-1]), gain_dtype),
            )

        return tf.cast(tf.reshape(effective, shape), dtype), grad

    return _kernel(kernel, gain)


def scaled_standardize(kernel: tf.Tensor, gamma: float = 1.0, eps: float = 1e-5) -> tf.Tensor:
    """Scaled weight standardization: `gamma * standardize(W, eps) / sqrt(fan_in)`.

    Args:
        kernel: a kernel whose last axis holds the output units.
        gamma: the scale of the nonlinearity that follows (1.0 in the paper).
        eps: added to the standard deviation.

    Returns:
        The scaled, standardized kernel.

    References:
        - [Characterizing signal propagation to close the performance gap in
          unnormalized ResNets](https://arxiv.org/abs/2101.08692)
    """
    fan_in = kernel.shape[:-1].num_elements()
    return standardize(kernel, eps, scale=gamma * fan_in**-0.5)
