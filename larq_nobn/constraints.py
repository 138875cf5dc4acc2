"""A weight-standardization constraint for existing larq and Keras layers."""

import tensorflow as tf
from larq import utils as lq_utils

from larq_nobn.registry import keras_serializable
from larq_nobn.unitwise import standardize


@lq_utils.register_alias("weight_standardization")
@keras_serializable("WeightStandardization")  # the name older files give it
class WeightStandardization(tf.keras.constraints.Constraint):
    """Projects a kernel to zero mean and unit variance per output unit after each update.

    `W <- (W - mean(W)) / (std(W) + eps)` over every axis but the last, applied by Keras
    after each optimizer step. Use it to add weight standardization to an existing larq or
    larq-zoo model without changing its layers:
    `lq.layers.QuantConv2D(..., kernel_constraint="weight_standardization")`.

    How it differs from `ScaledWSQuantConv2D`: that layer *reparameterizes* the kernel, so
    the latent weights are free, the standardization is part of the forward pass and
    gradients flow through it; it also scales by `gamma / sqrt(fan_in)` and has a learnable
    gain. This constraint *projects* the stored weights instead: the forward pass sees
    whatever the weights are, gradients ignore the standardization, and there is no fan-in
    scaling or gain. A constraint replaces any other kernel constraint, such as the
    `weight_clip` larq recommends for binary kernels.

    Args:
        eps: added to the per-unit standard deviation.

    References:
        - [Micro-Batch Training with Batch-Channel Normalization and Weight
          Standardization](https://arxiv.org/abs/1903.10520)
    """

    def __init__(self, eps: float = 1e-5):
        self.eps = eps

    def __call__(self, w):
        if w.shape.rank is not None and w.shape.rank < 2:
            raise ValueError(f"WeightStandardization needs a kernel of rank >= 2, got {w.shape}.")
        return standardize(w, self.eps)

    def get_config(self):
        return {"eps": self.eps}
