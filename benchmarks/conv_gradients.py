"""Convolution gradients: TensorFlow's kernels against `larq_nobn.conv2d`'s, side by side.

Two tables, each measured in alternating rounds in one process:

1. per convolution shape of the zoo's backbones (stage 2, at each --configs cell): the
   forward convolution, and forward plus input and filter gradients with TensorFlow's
   `Conv2DBackpropInput` / `Conv2DBackpropFilter` against ours;
2. per zoo model: the forward pass (training mode) and a training step with the paper's
   optimizer, "before" (TensorFlow's convolution gradients, `TorchAdam(fused=False)`),
   "tf grads" (TensorFlow's convolution gradients, the recipe's fused Adam) and "after"
   (this package's defaults: `set_conv_gradients("auto")`, the fused Adam), their ratio,
   images/s, and nobn/bn images/s.

    python benchmarks/conv_gradients.py                       # both tables, 32:64 and 224:32
    python benchmarks/conv_gradients.py --tables shapes --configs 32:64
"""

import common

# isort: split
import argparse
import collections

import numpy as np
import tensorflow as tf

import larq_nobn

# (convolution gradients, fused Adam): before the forward-kernel gradients and the fused
# Adam, TensorFlow's gradients with today's optimizer, and today's defaults.
SETUPS = {
    "before": ("tensorflow", False),
    "tf grads": ("tensorflow", True),
    "after": ("auto", True),
}
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


def ours_compute(shape: tuple) -> str:
    """Which gradients `larq_nobn.conv2d` computes itself for `shape` in the current mode
    (the others are TensorFlow's kernels, and the row then times the same graph twice)."""
    batch, h, w, cin, cout, k, s, padding = shape
    by_forward, by_patches = larq_nobn.conv.gradient_plan(
        (batch, h, w, cin), (k, k, cin, cout), s, padding
    )
    return {(True, True): "both", (True, False): "input"}.get((by_forward, by_patches), "-")


def shapes_table(args) -> None:
    rows = []
    for size, batch in args.configs:
        for backbone in args.backbones:
            for shape, count in conv_shapes(backbone, size, batch):
                common.log(f"shape {backbone} {shape}")
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
                        ours_compute(shape),
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
            "ours compute",
            "forward",
            "TF grads",
            "our grads",
            "TF / ours",
        ),
        rows,
    )


class ModelTimer:
    """A zoo model's forward pass and training step, built under one of `SETUPS`."""

    def __init__(self, name: str, size: int, batch: int, setup: str, args):
        gradients, fused = SETUPS[setup]
        with larq_nobn.conv_gradients(gradients):
            self.trainer = common.Trainer(
                name,
                stage=2,
                input_size=size,
                batch_size=batch,
                num_classes=common.num_classes_for(size, None),
                fused=fused,
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
        "--tables", type=common.choices(("shapes", "models")), default=["shapes", "models"]
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup_steps", type=int, default=2)
    args = parser.parse_args()
    print(common.machine_description())
    # The measurement "auto" decides by in this process, not a second one.
    ratio, slow = larq_nobn.conv.host_kernel_ratio(), larq_nobn.conv.slow_gradient_kernels()
    print(
        f"TensorFlow's input gradient over the forward convolution (3x3, 512 channels, 1x1 map,"
        f' batch 64): {ratio:.1f}x, so "auto" takes the rules of a '
        f"{'slow' if slow else 'fast'} host"
    )
    if "shapes" in args.tables:
        shapes_table(args)
    if "models" in args.tables:
        models_table(args)


if __name__ == "__main__":
    main()
