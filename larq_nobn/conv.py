"""A 2-D convolution whose gradients are computed as forward convolutions and matmuls.

On some CPUs TensorFlow's `Conv2DBackpropInput` and `Conv2DBackpropFilter` kernels are
many times slower than the forward convolution on small feature maps with many channels
(a 3x3 convolution over a 1x1 or 2x2 map with 512 channels), which is what the late
stages of a ReActNet are made of. The same gradients written with the forward kernel cost
about one forward convolution:

- the input gradient of a stride-1 convolution is a forward convolution of the output
  gradient with the kernel flipped in both spatial axes and its channels swapped; a
  stride-s one splits into s x s such convolutions, one per phase of the input grid, each
  with the kernel taps that reach that phase (no zero-upsampling, so the cost stays that
  of one forward convolution), interleaved back into the input grid;
- the filter gradient is one matmul of the input's patches with the output gradient.

`conv2d` computes exactly what `tf.nn.conv2d` computes, forward and backward (to float32
rounding). Every convolution layer of `larq_nobn`, and the `QuantConv2D` the zoo uses for
its batch-norm and no-norm variants, calls it through `FastGradientConv`.

Which convolutions take these gradients (`gradient_plan`) is the acceleration setting's
(`larq_nobn.acceleration`), read when a layer's call is traced, and the convolution's
shapes: a rule on the channels (below it TensorFlow's kernels are as fast, and the patches
would cost k*k times the input's memory for nothing), and under "cpu_light" only the
convolutions with one-pixel outputs, the one place where ours win on every CPU.
`benchmarks/conv_gradients.py` times both per convolution of the zoo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import larq as lq
import tensorflow as tf

from larq_nobn import acceleration
from larq_nobn.registry import keras_serializable

# Ours replace TensorFlow's kernels from these channel products (in * out) on: below them
# TensorFlow's kernels are as fast or faster on every CPU measured.
INPUT_GRADIENT_MIN_CHANNELS = 128 * 128
FILTER_GRADIENT_MIN_CHANNELS = 512 * 512
# Under "cpu_light", ours only for outputs of at most this many pixels a side: there they
# win where TensorFlow's gradient kernels are fast too; on larger outputs they do not.
ONE_PIXEL = 1


def _output_sizes(sizes, kernel, strides, pads) -> list[int]:
    """The output's height and width, from the input's and the padding of `_spatial_padding`."""
    return [
        (n + before + after - k) // s + 1
        for n, (before, after), k, s in zip(sizes, pads, kernel, strides, strict=True)
    ]


def gradient_plan(
    input_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[Sequence[int]] = "SAME",
    setting: str | None = None,
) -> tuple[bool, bool]:
    """Which gradients `conv2d` computes itself for these shapes.

    Args:
        input_shape: NHWC, height and width known.
        kernel_shape: (kh, kw, in, out).
        strides: an int or a pair.
        padding: as for `conv2d`.
        setting: an acceleration setting; None for the current one.

    Returns:
        (the input gradient by forward convolutions, the filter gradient by a matmul of
        patches); where False, TensorFlow's kernel computes that gradient.
    """
    strides = _pair(strides, "strides")
    sizes, kernel = input_shape[1:3], kernel_shape[:2]
    pads = _spatial_padding(padding, sizes, kernel, strides)
    out_sizes = _output_sizes(sizes, kernel, strides, pads)
    return _gradient_plan(kernel_shape[2], kernel_shape[3], out_sizes, setting)


def _gradient_plan(
    in_channels: int, out_channels: int, out_sizes: Sequence[int], setting: str | None = None
) -> tuple[bool, bool]:
    """(input gradient by forward convolutions, filter gradient by a matmul of patches)."""
    rule = acceleration.plan(setting).conv_gradients
    if rule == acceleration.CONV_TENSORFLOW:
        return False, False
    if rule == acceleration.CONV_ONE_PIXEL and max(out_sizes) > ONE_PIXEL:
        return False, False
    channels = in_channels * out_channels
    return channels >= INPUT_GRADIENT_MIN_CHANNELS, channels >= FILTER_GRADIENT_MIN_CHANNELS


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    if len(values) == 4:  # TensorFlow's NHWC form [1, h, w, 1]
        values = values[1:3]
    if len(values) != 2:
        raise ValueError(f"`{name}` must be an int or a pair, got {value!r}.")
    return values


def _spatial_padding(padding, sizes, kernel, strides) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis, as TensorFlow computes it."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return [(0, 0), (0, 0)]
        if padding.upper() != "SAME":
            raise ValueError(f"`padding` must be 'SAME', 'VALID' or explicit, got {padding!r}.")
        pads = []
        for n, k, s in zip(sizes, kernel, strides, strict=True):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    pairs = [tuple(int(v) for v in p) for p in padding]
    if len(pairs) == 4:  # [[0, 0], [top, bottom], [left, right], [0, 0]]
        pairs = pairs[1:3]
    if len(pairs) != 2 or any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise ValueError(f"Explicit `padding` must be two non-negative pairs, got {padding!r}.")
    return pairs


def _pad_or_crop(x: tf.Tensor, amounts: Sequence[tuple[int, int]]) -> tf.Tensor:
    """Zero-pads (positive) or crops (negative) the two spatial axes of an NHWC tensor."""
    crops = [(max(-b, 0), max(-a, 0)) for b, a in amounts]
    if any(c for pair in crops for c in pair):
        (top, bottom), (left, right) = crops
        x = x[:, top : x.shape[1] - bottom, left : x.shape[2] - right, :]
    pads = [(max(b, 0), max(a, 0)) for b, a in amounts]
    if any(p for pair in pads for p in pair):
        x = tf.pad(x, [(0, 0), *pads, (0, 0)])
    return x


def _phase(out_size: int, k: int, s: int, before: int, a: int, rows: int):
    """Kernel taps and output-gradient padding for input phase `a` along one axis.

    Input position `a + s*t` receives `dy[t + d - q] * w[c + s*q]` for the taps
    `c, c + s, ...` with `c = (a + before) mod s`: a correlation of `dy`, padded by
    `(taps - 1 - d)` before, with those taps reversed.
    """
    c = (a + before) % s
    d = (a + before - c) // s
    taps = list(range(c, k, s))[::-1]
    pad_before = len(taps) - 1 - d
    pad_after = rows + len(taps) - 1 - pad_before - out_size
    return taps, (pad_before, pad_after)


def _live_taps(size: int, out_size: int, k: int, s: int, before: int) -> tuple[int, int]:
    """The first and last kernel tap along one axis that reach an input position.

    Output `o` reads input `o*s + t - before` through tap `t`; taps that only ever read
    padding (a 3x3 kernel over a 1x1 map has one live tap, its centre) contribute
    nothing, and their filter gradient is zero.
    """
    first = max(0, before - (out_size - 1) * s)
    last = min(k - 1, before + size - 1)
    return (first, last) if first <= last else (0, k - 1)


def _trimmed(kernel, sizes, out_sizes, strides, pads):
    """The kernel cut to its live taps, their padding, and how to pad the cut back."""
    ranges = [
        _live_taps(n, m, k, s, before)
        for n, m, k, s, (before, _) in zip(
            sizes, out_sizes, kernel.shape[:2], strides, pads, strict=True
        )
    ]
    (top, bottom), (left, right) = ranges
    live = kernel[top : bottom + 1, left : right + 1]
    live_pads = [
        (before - first, (m - 1) * s + (last - first + 1) - n - (before - first))
        for (first, last), n, m, s, (before, _) in zip(
            ranges, sizes, out_sizes, strides, pads, strict=True
        )
    ]
    kh, kw = kernel.shape[:2]
    restore = [(top, kh - 1 - bottom), (left, kw - 1 - right), (0, 0), (0, 0)]
    return live, live_pads, restore


def _input_gradient(dy, kernel, input_shape, strides, pads) -> tf.Tensor:
    """The input gradient of a stride-s convolution as s*s forward convolutions."""
    _, height, width, _ = input_shape
    kh, kw = kernel.shape[:2]
    (sh, sw), out_h, out_w = strides, dy.shape[1], dy.shape[2]
    rows, cols = -(-height // sh), -(-width // sw)
    swapped = None
    phases = []
    for a in range(sh):
        taps_h, pad_h = _phase(out_h, kh, sh, pads[0][0], a, rows)
        row = []
        for b in range(sw):
            taps_w, pad_w = _phase(out_w, kw, sw, pads[1][0], b, cols)
            if not taps_h or not taps_w:  # a kernel smaller than its stride skips pixels
                row.append(tf.zeros([tf.shape(dy)[0], rows, cols, kernel.shape[2]], dy.dtype))
                continue
            window = _pad_or_crop(dy, [pad_h, pad_w])
            if len(taps_h) == len(taps_w) == 1:
                # One tap: a matmul with the tap's (in, out) matrix, transposed in the
                # product rather than in memory.
                flat = tf.matmul(
                    tf.reshape(window, [-1, window.shape[-1]]),
                    kernel[taps_h[0], taps_w[0]],
                    transpose_b=True,
                )
                row.append(tf.reshape(flat, [-1, rows, cols, kernel.shape[2]]))
                continue
            if swapped is None:
                # (kh, kw, in, out) -> (kh, kw, out, in): the output gradient's channels go in.
                swapped = tf.transpose(kernel, (0, 1, 3, 2))
            if len(taps_h) == kh and len(taps_w) == kw:
                sub = tf.reverse(swapped, [0, 1])
            else:
                sub = tf.gather(tf.gather(swapped, taps_h, axis=0), taps_w, axis=1)
            row.append(tf.nn.conv2d(window, sub, 1, "VALID"))
        phases.append(row)
    if sh == sw == 1:
        return phases[0][0]
    # phases[a][b][n, t, u] is dx[n, a + sh*t, b + sw*u]: interleave, then crop.
    grid = tf.stack([tf.stack(row, axis=3) for row in phases], axis=2)
    shape = tf.shape(grid)
    dx = tf.reshape(grid, [shape[0], rows * sh, cols * sw, shape[-1]])
    return dx[:, :height, :width, :]


def _filter_gradient(x, dy, kernel_shape, strides, pads) -> tf.Tensor:
    """The filter gradient as one matmul of the input's patches with the output gradient."""
    kh, kw, cin, cout = kernel_shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    padded = _pad_or_crop(x, pads)
    if (kh, kw) == (1, 1):
        patches = padded[:, : (out_h - 1) * strides[0] + 1 : strides[0]]
        patches = patches[:, :, : (out_w - 1) * strides[1] + 1 : strides[1]]
    else:
        patches = tf.image.extract_patches(
            padded, [1, kh, kw, 1], [1, *strides, 1], [1, 1, 1, 1], "VALID"
        )
    patches = tf.reshape(patches, [-1, kh * kw * cin])
    grad = tf.matmul(patches, tf.reshape(dy, [-1, cout]), transpose_a=True)
    return tf.reshape(grad, kernel_shape)


def conv2d(
    inputs: tf.Tensor,
    kernel: tf.Tensor,
    strides: int | Sequence[int] = 1,
    padding: str | Sequence[Sequence[int]] = "SAME",
) -> tf.Tensor:
    """`tf.nn.conv2d` (NHWC, no dilation) with gradients computed by forward kernels.

    The forward pass is `tf.nn.conv2d` itself. The input gradient is computed with
    forward convolutions (one per phase of a strided input grid) and the filter gradient
    as one matmul of image patches, where `gradient_plan` says so (the acceleration
    setting, on CPUs, for convolutions with many channels); both equal TensorFlow's own gradients
    to float32 rounding. Inputs whose height or width is not known when the function is
    traced take TensorFlow's gradients.

    Args:
        inputs: a 4-D NHWC tensor.
        kernel: a (kh, kw, in, out) tensor of the same dtype.
        strides: an int or a pair.
        padding: "SAME", "VALID" or explicit `[[top, bottom], [left, right]]`.

    Returns:
        The convolution's output.

    References:
        - [A guide to convolution arithmetic for deep learning](https://arxiv.org/abs/1603.07285)
    """
    strides = _pair(strides, "strides")
    inputs = tf.convert_to_tensor(inputs)
    kernel = tf.convert_to_tensor(kernel, dtype=inputs.dtype)
    sizes = inputs.shape[1:3]
    if isinstance(padding, str):
        # The forward op is the one Keras runs (explicit padding takes other CPU kernels,
        # which round differently: enough to flip binary activations).
        tf_padding = padding.upper()
    else:
        tf_padding = [(0, 0), *_spatial_padding(padding, None, None, None), (0, 0)]
    if None in sizes or None in kernel.shape:
        return tf.nn.conv2d(inputs, kernel, strides, tf_padding)
    pads = _spatial_padding(padding, sizes, kernel.shape[:2], strides)
    out_sizes = _output_sizes(sizes, kernel.shape[:2], strides, pads)
    by_forward, by_patches = _gradient_plan(kernel.shape[2], kernel.shape[3], out_sizes)
    if not (by_forward or by_patches):
        return tf.nn.conv2d(inputs, kernel, strides, tf_padding)
    explicit = dict(
        strides=[1, *strides, 1],
        padding="EXPLICIT",
        explicit_paddings=[0, 0, *pads[0], *pads[1], 0, 0],
    )

    @tf.custom_gradient
    def _conv(x, w):
        def grad(dy):
            live, live_pads, restore = _trimmed(w, sizes, dy.shape[1:3], strides, pads)
            if by_forward:
                dx = _input_gradient(dy, live, x.shape, strides, live_pads)
            else:
                dx = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(x), filter=w, out_backprop=dy, **explicit
                )
            if by_patches:
                dw = _filter_gradient(x, dy, live.shape.as_list(), strides, live_pads)
                if any(map(any, restore)):
                    dw = tf.pad(dw, restore)
            else:
                dw = tf.raw_ops.Conv2DBackpropFilter(
                    input=x, filter_sizes=tf.shape(w), out_backprop=dy, **explicit
                )
            return dx, dw

        return tf.nn.conv2d(x, w, strides, tf_padding), grad

    return _conv(inputs, kernel)


class FastGradientConv:
    """A mixin for Keras 2-D convolution layers: their convolution is `conv2d` above.

    It replaces `convolution_op`, the one method through which tf-keras' `Conv2D` (and
    larq's `QuantConv2D`, after its input quantizer and padding) convolves. Layouts and
    options that `conv2d` does not cover (channels_first, dilation, groups) keep
    TensorFlow's convolution, as do all layers under an acceleration setting that keeps
    TensorFlow's gradient kernels ("exact", "fused").
    """

    def convolution_op(self, inputs, kernel):
        if not (
            acceleration.plan().conv_gradients != acceleration.CONV_TENSORFLOW
            and self.rank == 2
            and self.data_format == "channels_last"
            and self.groups == 1
            and tuple(self.dilation_rate) == (1, 1)
            and self.padding in ("same", "valid")
        ):
            return super().convolution_op(inputs, kernel)
        return conv2d(inputs, tf.convert_to_tensor(kernel), self.strides, self.padding.upper())


@keras_serializable()
class QuantConv2D(FastGradientConv, lq.layers.QuantConv2D):
    """larq's `QuantConv2D` with the gradients of `larq_nobn.conv.conv2d`.

    Same arguments, weights and outputs as `larq.layers.QuantConv2D`; only the backward
    pass differs in how it is computed (not in its values). The zoo builds its
    batch-norm and no-norm variants from it, so that they train at the cost of their
    convolutions as the BN-free variant does.
    """
