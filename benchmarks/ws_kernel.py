"""Scaled weight standardization on fused batch-norm ops against separate ops, side by side.

Two tables, each measured in alternating rounds in one process:

1. per distinct scaled-WS kernel of the BN-free backbones (stage 2): the effective kernel
   (`larq_nobn.scaled_ws_kernel`) and its kernel and gain gradients, with the statistics
   and the gradient on separate ops and on `FusedBatchNormV3` / `FusedBatchNormGradV3`;
2. per backbone and SIZE:BATCH cell: training images/s of the BN model, of the BN-free
   model with separate ops for every kernel ("nobn separate", what ran before) and with
   the default (fused ops for kernels of at least `unitwise.FUSED_MIN_SIZE` elements
   where the acceleration setting fuses: on CPUs, unless it is "exact" or "fused"), and
   nobn/bn for both.

`larq_nobn.unitwise.fused_batch_norm_statistics` decides between the two when a function
is traced; here it is replaced while each contender is traced.

    python benchmarks/ws_kernel.py                      # both tables, 32:64
    python benchmarks/ws_kernel.py --tables models --configs 32:64,224:32
"""

import common

# isort: split
import argparse
import contextlib

import numpy as np
import tensorflow as tf

import larq_nobn
from larq_nobn import layers, unitwise

DEFAULT = unitwise.fused_batch_norm_statistics
# Which kernels run on fused ops: none, all, or the default's choice (by size).
BACKENDS = {"separate": lambda size: False, "fused": lambda size: True, "default": DEFAULT}


@contextlib.contextmanager
def statistics(backend: str):
    """While active, newly traced functions use the given backend."""
    unitwise.fused_batch_norm_statistics = BACKENDS[backend]
    try:
        yield
    finally:
        unitwise.fused_batch_norm_statistics = DEFAULT


def kernel_shapes(backbone: str, args: argparse.Namespace) -> list[tuple[tuple[int, ...], bool]]:
    """(kernel shape, binary) of every distinct scaled-WS kernel of `<backbone>_nobn`."""
    model = common.build_model(
        common.model_name(backbone, "nobn"),
        stage=args.stage,
        input_size=32,
        num_classes=10,
        stem=args.stem,
    )
    found = {
        (tuple(layer.kernel.shape), layer.kernel_quantizer is not None): None
        for layer in model.submodules
        if isinstance(layer, layers.ScaledWSQuantConv2D)
    }
    common.release()
    return list(found)


def kernel_step(shape: tuple[int, ...], binary: bool, backend: str):
    """A traced forward and backward pass of `scaled_ws_kernel` on one kernel."""
    rng = np.random.default_rng(common.SEED)
    kernel = tf.Variable(rng.normal(0.0, 0.05, size=shape).astype(np.float32))
    gain = tf.Variable(np.ones(shape[-1], np.float32))
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = unitwise.scaled_ws_kernel(kernel, gain, binary_clip=1.0 if binary else None)
        d_kernel, d_gain = tape.gradient(out, [kernel, gain], output_gradients=upstream)
        return d_kernel[0, 0], d_gain[0]

    with statistics(backend):
        step()
    return lambda: [t.numpy() for t in step()]


def shapes_table(args: argparse.Namespace) -> None:
    rows = []
    for backbone in args.backbones:
        for shape, binary in kernel_shapes(backbone, args):
            steps = {name: kernel_step(shape, binary, name) for name in ("separate", "fused")}
            seconds = common.alternate(
                {name: lambda s=s: [s() for _ in range(args.repeats)] for name, s in steps.items()},
                args.rounds,
            )
            ms = {n: common.median(s) / args.repeats * 1e3 for n, s in seconds.items()}
            rows.append(
                [
                    backbone,
                    "x".join(map(str, shape)),
                    "binary" if binary else "real",
                    f"{ms['separate']:.2f}",
                    f"{ms['fused']:.2f}",
                    f"{ms['fused'] / ms['separate']:.2f}",
                ]
            )
            common.log(f"  {rows[-1]}")
    print("\nscaled_ws_kernel, forward and both gradients, ms (median round)")
    common.print_table(
        ["backbone", "kernel", "quantizer", "separate", "fused", "fused/separate"], rows
    )


def models_table(args: argparse.Namespace) -> None:
    rows = []
    for backbone in args.backbones:
        for size, batch in args.configs:
            trainers = {"bn": common.make_trainer(f"{backbone}_bn", size, batch, "default", args)}
            trainers["bn"].warm_up()
            for name in ("separate", "default"):
                with statistics(name):
                    trainer = common.make_trainer(f"{backbone}_nobn", size, batch, "default", args)
                    trainer.warm_up()  # traces the step with this backend
                trainers[f"nobn {name}"] = trainer
            seconds = common.alternate(
                {n: lambda t=t: t(args.steps) for n, t in trainers.items()}, args.rounds
            )
            rate = {n: batch * args.steps / common.median(s) for n, s in seconds.items()}
            rows.append(
                [
                    backbone,
                    f"{size}x{size}",
                    batch,
                    *(f"{rate[n]:.1f}" for n in trainers),
                    f"{rate['nobn separate'] / rate['bn']:.3f}",
                    f"{rate['nobn default'] / rate['bn']:.3f}",
                ]
            )
            common.log(f"  {rows[-1]}")
            del trainers
            common.release()
    print(f"\ntraining images/s, stage {args.stage}, median of {args.rounds} alternating rounds")
    common.print_table(
        [
            "backbone",
            "input",
            "batch",
            "bn",
            "nobn separate",
            "nobn default",
            "nobn/bn separate",
            "nobn/bn default",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_arguments(parser)
    parser.add_argument(
        "--configs", type=common.parse_configs, default=[(32, 64)], help="SIZE:BATCH,..."
    )
    parser.add_argument("--tables", type=common.choices(("shapes", "models")), default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--repeats", type=int, default=20, help="kernel passes per round")
    args = parser.parse_args()
    tables = args.tables or ["shapes", "models"]

    print(common.machine_description())
    print(
        f"the default ({larq_nobn.acceleration.resolve()}) runs the fused ops on kernels of "
        ">= 2^20 elements here: "
        f"{DEFAULT(unitwise.FUSED_MIN_SIZE)}"
    )
    if "shapes" in tables:
        shapes_table(args)
    if "models" in tables:
        models_table(args)


if __name__ == "__main__":
    main()
