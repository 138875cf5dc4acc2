"""One switch for every acceleration of the library: which exact reformulations run.

Four computations of a training step have a faster form that gives the same values to
float32 rounding (each is tested against the direct formula):

- convolution gradients from forward kernels (`larq_nobn.conv`): on some CPUs TensorFlow's
  `Conv2DBackpropInput` and `Conv2DBackpropFilter` are many times slower than the forward
  convolution on small maps with many channels, the late stages of every ReActNet;
- the statistics and the gradient of a kernel's standardization on fused batch-norm ops
  (`larq_nobn.unitwise`), for kernels of `unitwise.FUSED_MIN_SIZE` elements and more, on
  CPUs (below that size a fixed cost per op outweighs the passes they save);
- a scaled-WS layer's effective kernel in one operation with a written-out gradient
  (`larq_nobn.scaled_ws_kernel`) instead of the composition of standardization,
  quantizer and gain: fewer passes over the kernel, only per-unit statistics kept;
- `TorchAdam`'s update in TensorFlow's one-pass `ApplyAdam` kernel instead of torch's op
  order (each variable read and written once instead of by a dozen elementwise ops).

A setting names which of them run:

| setting       | conv gradients                   | fused statistics | fused WS kernel, Adam |
|---------------|----------------------------------|------------------|-----------------------|
| `"exact"`     | TensorFlow's kernels             | no               | no                    |
| `"fused"`     | TensorFlow's kernels             | no               | yes                   |
| `"cpu_light"` | ours where the output is 1 pixel | on CPUs          | yes                   |
| `"cpu"`       | ours wherever channels are many  | on CPUs          | yes                   |

`"exact"` is TensorFlow's own kernels and ops everywhere, torch's op order in Adam.
`"cpu"` is every CPU reformulation: it pays on CPUs whose gradient kernels are slow, and
costs a little where they are not (on 2x2 and larger outputs TensorFlow's kernels are then
as fast or faster). `"cpu_light"` keeps the forward-kernel gradients to one-pixel outputs,
where they win on every CPU measured. `"auto"`, the default, is `"fused"` where a GPU is
visible and `"cpu_light"` where none is. Whether a host's gradient kernels are slow is a
measurement, and measurements do not decide the math here: `benchmarks/conv_gradients.py`
measures them and prints the recommended setting.

Which reformulation runs for a given computation is a function of its shapes, its dtype,
the setting and the kind of device only (no clock, no probe, no private TensorFlow call),
decided when a function is traced. The fused batch-norm ops never run where a GPU is
visible, whatever the setting: cuDNN reads the saved variance of the gradient op as an
inverse standard deviation and clamps epsilon at 1e-5, and the gradient here needs 0.
Whether TensorFlow runs oneDNN's kernels does not decide either: TensorFlow's own
batch-norm kernels give the same values, at about the cost of the separate ops.

Set it with `set_acceleration(setting)`, for a block with `acceleration_scope(setting)`,
for a process with the environment variable `LARQ_NOBN_ACCELERATION`, and for a training
run with `--acceleration`, which the run records in its config.json and keeps on resume.
This module imports no TensorFlow until a setting is resolved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator

AUTO = "auto"
SETTINGS = ("exact", "fused", "cpu_light", "cpu")
"""The settings that name what runs; `AUTO` resolves to one of them."""
CHOICES = (AUTO, *SETTINGS)
VARIABLE = "LARQ_NOBN_ACCELERATION"
"""The environment variable that sets the setting a process starts with."""

# Forward-kernel convolution gradients: never, only for one-pixel outputs, or for every
# convolution whose channels pass the rule of `larq_nobn.conv`.
CONV_TENSORFLOW, CONV_ONE_PIXEL, CONV_CHANNELS = "tensorflow", "one_pixel", "channels"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one setting runs.

    Args:
        conv_gradients: `CONV_TENSORFLOW`, `CONV_ONE_PIXEL` or `CONV_CHANNELS`.
        fused_statistics: large kernels' standardization on fused batch-norm ops (where
            no GPU is visible).
        fused_ws_kernel: a scaled-WS layer's effective kernel from `scaled_ws_kernel`.
        fused_adam: `TorchAdam` on TensorFlow's `ApplyAdam` kernel, unless told otherwise.
    """

    conv_gradients: str
    fused_statistics: bool
    fused_ws_kernel: bool
    fused_adam: bool


PLANS = {
    "exact": Plan(CONV_TENSORFLOW, False, False, False),
    "fused": Plan(CONV_TENSORFLOW, False, True, True),
    "cpu_light": Plan(CONV_ONE_PIXEL, True, True, True),
    "cpu": Plan(CONV_CHANNELS, True, True, True),
}

_lock = threading.Lock()
_setting: str | None = None  # None: the environment's (`from_environment`)


def _checked(setting: str, what: str) -> str:
    if setting not in CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(CHOICES)}, got {setting!r}")
    return setting


def from_environment() -> str:
    """The setting of `LARQ_NOBN_ACCELERATION`, or `"auto"` where it is not set.

    Raises:
        ValueError: the variable holds no setting (a one-line message).
    """
    return _checked(os.environ.get(VARIABLE, AUTO), VARIABLE)


def get_acceleration() -> str:
    """The current setting, as set (`"auto"` is not resolved)."""
    with _lock:
        return _setting if _setting is not None else from_environment()


def set_acceleration(setting: str) -> str:
    """Chooses the acceleration for functions traced from now on, in this process.

    Args:
        setting: one of `CHOICES`: "auto", "exact", "fused", "cpu_light" or "cpu" (see
            the module's documentation).

    Returns:
        The previous setting.
    """
    global _setting
    _checked(setting, "The acceleration")
    previous = get_acceleration()
    with _lock:
        _setting = setting
    return previous


@contextlib.contextmanager
def acceleration_scope(setting: str) -> Iterator[None]:
    """`set_acceleration(setting)` for the duration of a `with` block."""
    previous = set_acceleration(setting)
    try:
        yield
    finally:
        set_acceleration(previous)


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU: the one device fact the settings read."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def resolve(setting: str | None = None) -> str:
    """The setting that runs: `setting` (by default the current one), "auto" resolved.

    Args:
        setting: one of `CHOICES`, or None for `get_acceleration()`.

    Returns:
        One of `SETTINGS`: "auto" is "fused" where a GPU is visible, else "cpu_light".
    """
    setting = get_acceleration() if setting is None else _checked(setting, "The acceleration")
    if setting != AUTO:
        return setting
    return "fused" if gpu_visible() else "cpu_light"


def plan(setting: str | None = None) -> Plan:
    """What runs under `setting` (by default the current one) on this kind of device."""
    chosen = PLANS[resolve(setting)]
    if chosen.fused_statistics and gpu_visible():
        return dataclasses.replace(chosen, fused_statistics=False)
    return chosen
