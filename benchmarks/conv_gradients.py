"""Convolution gradients: TensorFlow's kernels against `larq_nobn.conv2d`'s, side by side,
and the acceleration setting this host should run.

It first times TensorFlow's input-gradient kernel against the forward convolution where
slow kernels are slowest (3x3, 512 -> 512 channels, a 1x1 map, batch 64) and prints the
recommended `--acceleration` (`larq_nobn.acceleration`): "cpu" where that kernel is at
least `SLOW_KERNEL_RATIO` times the forward convolution, else "auto". The library itself
never measures: this is the command that does. Then two tables, each measured in
alternating rounds in one process:

1. per convolution shape of the zoo's backbones (stage 2, at each --configs cell): the
   forward convolution, and forward plus input and filter gradients with TensorFlow's
   `Conv2DBackpropInput` / `Conv2DBackpropFilter` against ours (as "cpu" computes them;
   the column "ours under" names the settings that take ours for that shape);
2. per zoo model: the forward pass (training mode) and a training step with the paper's
   optimizer under each acceleration setting, images/s, and nobn/bn images/s.

    python benchmarks/conv_gradients.py                       # both tables, 32:64 and 224:32
    python benchmarks/conv_gradients.py --tables shapes --configs 32:64
    python benchmarks/conv_gradients.py --tables none         # the recommendation only
"""

import common

# isort: split
import argparse
import collections
import math
import time

import numpy as np
import tensorflow as tf

import larq_nobn
from larq_nobn import acceleration

SETUPS = acceleration.SETTINGS
# TensorFlow's input gradient over the forward convolution in `gradient_kernel_ratio`, from
# which "cpu" pays: the slow hosts measured read about 90, the others 0.8-1.9.
SLOW_KERNEL_RATIO = 8.0
ZOO_NORMS = ("bn", "nobn", "none")


def conv_shapes(backbone: str, size: int, batch: int) -> list[tuple]:
    """(batch, height, width, in, out, kernel, stride, padding) of every distinct conv."""
    model = common.build_model(f"{backbone}_nobn", stage=2, input_size=size, num_classes=10)
    shapes = collections.Counter()
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            _, h, w, cin = layer.input.shape
            shapes[
                (
                    batch,
                    h,
                    w,
                    cin,
                    layer.filters,
                    layer.kernel_size[0],
                    layer.strides[0],
                    layer.padding.upper(),
                )
            ] += 1
    common.release()
    return sorted(shapes.items(), key=lambda item: -item[0][1])


def conv_contenders(shape: tuple) -> dict:
    batch, h, w, cin, cout, k, s, padding = shape
    rng = np.random.default_rng(common.SEED)
    x = tf.constant(rng.standard_normal((batch, h, w, cin), dtype=np.float32))
    kernel = tf.constant(rng.standard_normal((k, k, cin, cout), dtype=np.float32))

    def backward(conv):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                y = conv(x, kernel, s, padding)
            dx, dw = tape.gradient(y, [x, kernel], output_gradients=y)
            return tf.reduce_sum(dx) + tf.reduce_sum(dw)

        return lambda: step().numpy()

    forward = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, kernel, s, padding)))
    return {
        "forward": lambda: forward().numpy(),
        "tensorflow": backward(tf.nn.conv2d),
        "forward_grads": backward(larq_nobn.conv2d),
    }


def ours_under(shape: tuple) -> str:
    """The settings under which `larq_nobn.conv2d` computes gradients of `shape` itself,
    and which ("both", or "input" only); "-" where every setting takes TensorFlow's
    kernels (the row then times the same graph twice)."""
    batch, h, w, cin, cout, k, s, padding = shape
    found = []
    for setting in ("cpu_light", "cpu"):
        plan = larq_nobn.conv.gradient_plan(
            (batch, h, w, cin), (k, k, cin, cout), s, padding, setting
        )
        if any(plan):
            found.append(f"{setting} ({'both' if all(plan) else 'input'})")
    return ", ".join(found) or "-"


def _best_time(op, runs: int) -> float:
    op().numpy()  # kernel selection and allocations happen on the first call
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        op().numpy()
        best = min(best, time.perf_counter() - start)
    return best


def gradient_kernel_ratio() -> float:
    """TensorFlow's CPU input-gradient kernel's time over the forward convolution's, on
    the convolution where slow hosts are slowest: 3x3, 512 -> 512 channels, a 1x1 map,
    batch 64 (best of 3 forward calls, of 2 `Conv2DBackpropInput` calls)."""
    with tf.device("/CPU:0"):
        x = tf.fill([64, 1, 1, 512], 0.5)
        w = tf.fill([3, 3, 512, 512], 0.01)
        forward = _best_time(lambda: tf.nn.conv2d(x, w, 1, "SAME"), runs=3)
        backward = _best_time(
            lambda: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=x.shape, filter=w, out_backprop=x, strides=[1] * 4, padding="SAME"
            ),
            runs=2,
        )
    return backward / forward


def shapes_table(args) -> None:
    rows = []
    for size, batch in args.configs:
        for backbone in args.backbones:
            for shape, count in conv_shapes(backbone, size, batch):
                common.log(f"shape {backbone} {shape}")
                with acceleration.acceleration_scope("cpu"):  # traced on their first call
                    seconds = common.alternate(conv_contenders(shape), args.rounds)
                fwd, tf_ms, ours = (
                    1e3 * common.median(seconds[n])
                    for n in ("forward", "tensorflow", "forward_grads")
                )
                _, h, w, cin, cout, k, s, padding = shape
                rows.append(
                    (
                        f"{size}:{batch}",
                        backbone,
                        count,
                        f"{h}x{w}",
                        f"{cin}->{cout}",
                        f"{k}x{k}/{s} {padding.lower()}",
                        ours_under(shape),
                        f"{fwd:.1f}",
                        f"{tf_ms:.1f}",
                        f"{ours:.1f}",
                        f"{tf_ms / ours:.2f}",
                    )
                )
                common.release()
    print("\nforward, and forward + input and filter gradients (ms, median)")
    common.print_table(
        (
            "cell",
            "backbone",
            "convs",
            "map",
            "channels",
            "kernel",
            "ours under",
            "forward",
            "TF grads",
            "our grads",
            "TF / ours",
        ),
        rows,
    )


class ModelTimer:
    """A zoo model's forward pass and training step, traced under one of `SETUPS`."""

    def __init__(self, name: str, size: int, batch: int, setup: str, args):
        with acceleration.acceleration_scope(setup):
            self.trainer = common.Trainer(
                name,
                stage=2,
                input_size=size,
                batch_size=batch,
                num_classes=common.num_classes_for(size, None),
            )
            images = tf.constant(self.trainer.batch[0])
            model = self.trainer.model
            self._forward = tf.function(lambda: tf.reduce_sum(model(images, training=True)))
            self.trainer.warm_up(args.warmup_steps)
            self.forward()

    def forward(self) -> None:
        self._forward().numpy()

    def step(self) -> None:
        self.trainer(1)


def models_table(args) -> None:
    rows = []
    for size, batch in args.configs:
        images_per_second = {}
        for backbone in args.backbones:
            for norm in ZOO_NORMS:
                name = common.model_name(backbone, norm)
                common.log(f"model {name} {size}:{batch}")
                timers = {g: ModelTimer(name, size, batch, g, args) for g in SETUPS}
                contenders = {}
                for g, timer in timers.items():
                    contenders[f"{g} forward"] = timer.forward
                    contenders[f"{g} step"] = timer.step
                seconds = {
                    k: common.median(v)
                    for k, v in common.alternate(contenders, args.rounds).items()
                }
                for g in SETUPS:
                    fwd, step = seconds[f"{g} forward"], seconds[f"{g} step"]
                    images_per_second[(backbone, norm, g)] = batch / step
                    rows.append(
                        (
                            f"{size}:{batch}",
                            name,
                            g,
                            f"{1e3 * fwd:.0f}",
                            f"{1e3 * step:.0f}",
                            f"{step / fwd:.2f}",
                            f"{batch / step:.1f}",
                        )
                    )
                del timers, contenders
                common.release()
        for backbone in args.backbones:
            for g in SETUPS:
                ratio = (
                    images_per_second[(backbone, "nobn", g)]
                    / images_per_second[(backbone, "bn", g)]
                )
                rows.append(
                    (f"{size}:{batch}", f"{backbone} nobn/bn", g, "", "", "", f"{ratio:.3f}")
                )
    print("\nforward pass (training mode) and training step (paper's optimizer), ms median")
    common.print_table(
        ("cell", "model", "setup", "forward", "step", "step / fwd", "images/s"), rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", type=common.choices(common.BACKBONES), default=list(common.BACKBONES)
    )
    parser.add_argument(
        "--configs", type=common.parse_configs, default=common.parse_configs("32:64,224:32")
    )
    parser.add_argument(
        "--tables",
        type=common.choices(("shapes", "models", "none")),
        default=["shapes", "models"],
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup_steps", type=int, default=2)
    args = parser.parse_args()
    print(common.machine_description())
    ratio = gradient_kernel_ratio()
    recommended = "cpu" if ratio >= SLOW_KERNEL_RATIO else "auto"
    print(
        "TensorFlow's input gradient over the forward convolution (3x3, 512 channels, 1x1 "
        f"map, batch 64): {ratio:.1f}x (slow from {SLOW_KERNEL_RATIO:g}x)"
    )
    if "shapes" in args.tables:
        shapes_table(args)
    if "models" in args.tables:
        models_table(args)
    print(f"recommended: --acceleration={recommended}")


if __name__ == "__main__":
    main()
