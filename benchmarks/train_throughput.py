"""Training throughput (images/s) of the BN and the BN-free ReActNets, side by side.

For every (backbone, SIZE:BATCH config, mode) cell it builds the `<backbone>_bn` and
`<backbone>_nobn` models (stage 2 by default, Adam with linear decay wrapped in AGC 0.02 for
both, as in the paper's recipe), warms both train functions up (tracing, XLA compilation),
then times `--steps` calls of Keras' train function per contender in `--rounds` alternating
rounds (bn nobn, nobn bn, ...) after one untimed round. Reported: images/s from each
contender's median round and the ratio nobn/bn. The pair is deleted before the next cell.

    python benchmarks/train_throughput.py --backbones reactnet18 --configs 32:64 --rounds 1
"""

import common

# isort: split
import argparse

GOALS = {(32, 256): 1.10, (224, 32): 1.10, (32, 64): 1.00}  # nobn/bn images/s, at least


def measure_cell(
    backbone: str, input_size: int, batch_size: int, mode: str, args: argparse.Namespace
) -> dict[str, float]:
    """Images/s per norm ("bn", "nobn") for one cell."""
    trainers = {}
    for norm in common.NORMS:
        name = common.model_name(backbone, norm)
        trainers[norm] = common.make_trainer(name, input_size, batch_size, mode, args)
        trainers[norm].warm_up()
    seconds = common.alternate(
        {norm: lambda t=trainer: t(args.steps) for norm, trainer in trainers.items()},
        args.rounds,
    )
    del trainers
    common.release()
    return {norm: batch_size * args.steps / common.median(s) for norm, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_training_arguments(parser, configs="32:256,224:32,32:64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    args = parser.parse_args()

    print(common.machine_description())
    print(
        f"training steps/s, stage {args.stage}, {args.rounds} alternating rounds of "
        f"{args.steps} steps per contender (median round), after 2 warm-up steps each and "
        "1 untimed round"
    )
    headers = ["backbone", "input", "batch", "mode", "bn img/s", "nobn img/s", "nobn/bn"]
    rows = []
    for backbone in args.backbones:
        for input_size, batch_size in args.configs:
            for mode in args.modes:
                rate = measure_cell(backbone, input_size, batch_size, mode, args)
                ratio = rate["nobn"] / rate["bn"]
                goal = common.verdict(ratio, GOALS.get((input_size, batch_size)), at_least=True)
                rows.append(
                    [
                        backbone,
                        f"{input_size}x{input_size}",
                        batch_size,
                        mode,
                        f"{rate['bn']:.1f}",
                        f"{rate['nobn']:.1f}",
                        f"{ratio:.3f}",
                        *goal,
                    ]
                )
                common.log(f"  {rows[-1]}")
    common.print_table(headers + ["goal", "met"], rows)


if __name__ == "__main__":
    main()
