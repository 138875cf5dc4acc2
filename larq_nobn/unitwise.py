"""Per-output-unit math shared by every layer, constraint and optimizer of larq_nobn.

Keras stores the output units of a kernel on its last axis: (kh, kw, in, out) for a 2-D
convolution, (in, out) for a dense layer. Everything here reduces over all other axes.
"""

import tensorflow as tf


def fan_in_axes(rank: int) -> list[int]:
    """The axes of a kernel of the given rank that belong to one output unit."""
    return list(range(rank - 1))


def unitwise_norm(x: tf.Tensor) -> tf.Tensor:
    """L2 norm of `x` per output unit, broadcastable against `x`.

    For a kernel of rank >= 2 the norm is taken over every axis but the last (one norm
    per output unit, shape (1, ..., 1, out)); for vectors and scalars it is the norm of
    the whole tensor, as in NFNets and the reference `agc.py`.

    Args:
        x: a weight or gradient tensor.

    Returns:
        The norms, with the rank of `x` (a scalar for rank <= 1).

    References:
        - [High-Performance Large-Scale Image Recognition Without Normalization](
          https://arxiv.org/abs/2102.06171)
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank is None or x.shape.rank <= 1:
        return tf.norm(x)
    return tf.sqrt(tf.reduce_sum(tf.square(x), axis=fan_in_axes(x.shape.rank), keepdims=True))


def standardize(kernel: tf.Tensor, eps: float = 1e-5) -> tf.Tensor:
    """`(W - mean) / (std + eps)` per output unit, with the population standard deviation.

    The eps is added to the standard deviation (not under the square root), as in the
    reference implementation of the paper.

    Args:
        kernel: a kernel whose last axis holds the output units.
        eps: added to the standard deviation.

    Returns:
        The standardized kernel, same shape and dtype.
    """
    axes = fan_in_axes(kernel.shape.rank)
    mean, variance = tf.nn.moments(kernel, axes=axes, keepdims=True)
    return (kernel - mean) / (tf.sqrt(variance) + eps)


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
    return standardize(kernel, eps) * (gamma * fan_in**-0.5)
