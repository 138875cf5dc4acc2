"""Where a training step's time goes: ablations of one backbone, side by side.

A profile by subtraction. For one (backbone, SIZE:BATCH) cell it builds five contenders of
the same stage-2 network, warms them up, and times `--steps` train steps each in `--rounds`
alternating rounds after one untimed round:

- `bn`: the BN twin (Adam + AGC, as in the paper's recipe);
- `none`: BN deleted, nothing in its place (what BN itself costs: bn - none);
- `nobn`: the BN-free network;
- `nobn_no_ws`: the same graph with the weight standardization skipped (the effective
  kernel is `gain * Q(W)`): nobn - nobn_no_ws is what scaled WS costs;
- `nobn_no_agc`: the BN-free network with plain Adam: nobn - nobn_no_agc is AGC's cost.

The ablations compute other functions: they are for timing only.

    python benchmarks/step_breakdown.py --backbone reactnet18 --config 32:64
"""

import common

# isort: split
import argparse
import contextlib

import tensorflow as tf

from larq_nobn import layers

CONTENDERS = ("bn", "none", "nobn", "nobn_no_ws", "nobn_no_agc")


@contextlib.contextmanager
def weight_standardization_skipped():
    """While active, new scaled-WS layers compute `kernel_scale * gain * Q(W)` (no WS)."""

    def skip(self, latent_kernel):
        kernel = tf.convert_to_tensor(latent_kernel)
        if self.layer.kernel_quantizer is not None:
            kernel = self.layer.kernel_quantizer(kernel)
        return kernel * tf.cast(self.scaled_gain(), kernel.dtype)

    original = layers._StandardizedKernel.__call__
    layers._StandardizedKernel.__call__ = skip
    try:
        yield
    finally:
        layers._StandardizedKernel.__call__ = original


def make(contender: str, size: int, batch: int, args: argparse.Namespace) -> common.Trainer:
    norm = contender.split("_")[0]
    name = common.model_name(args.backbone, norm)
    agc_clip = 0.0 if contender == "nobn_no_agc" else common.AGC_CLIP
    context = (
        weight_standardization_skipped() if contender == "nobn_no_ws" else contextlib.nullcontext()
    )
    with context:
        trainer = common.make_trainer(name, size, batch, "default", args, agc_clip=agc_clip)
        trainer.warm_up()  # traces the step, so the skipped WS is in its graph
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_arguments(parser)
    parser.add_argument("--backbone", choices=common.BACKBONES, default="reactnet18")
    parser.add_argument("--config", type=common.parse_configs, default=[(32, 64)])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="training steps per round")
    args = parser.parse_args()
    (size, batch), *_ = args.config

    print(common.machine_description())
    print(
        f"{args.backbone} {size}x{size} batch {batch}, stage {args.stage}, default mode; "
        f"{args.rounds} alternating rounds of {args.steps} steps per contender (median round), "
        "after 2 warm-up steps each and 1 untimed round"
    )
    trainers = {c: make(c, size, batch, args) for c in CONTENDERS}
    seconds = common.alternate(
        {c: lambda t=trainer: t(args.steps) for c, trainer in trainers.items()}, args.rounds
    )
    ms = {c: common.median(s) / args.steps * 1e3 for c, s in seconds.items()}
    rows = [[c, f"{ms[c]:.0f}", f"{ms[c] / ms['bn']:.3f}"] for c in CONTENDERS]
    common.print_table(["contender", "ms/step", "vs bn"], rows)
    print(
        f"\nBN costs {ms['bn'] - ms['none']:+.0f} ms/step (bn - none); scaled WS "
        f"{ms['nobn'] - ms['nobn_no_ws']:+.0f} ms (nobn - nobn_no_ws); AGC "
        f"{ms['nobn'] - ms['nobn_no_agc']:+.0f} ms (nobn - nobn_no_agc); the BN-free graph "
        f"without WS vs BN: {ms['nobn_no_ws'] - ms['bn']:+.0f} ms."
    )


if __name__ == "__main__":
    main()
