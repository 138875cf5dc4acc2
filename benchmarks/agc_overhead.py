"""Time overhead of adaptive gradient clipping in a training step of the BN-free ReActNets.

For every (backbone, SIZE:BATCH config, mode) cell it builds the same `<backbone>_nobn` model
twice (same initial weights), compiled once with plain Adam with linear decay and once
with that Adam wrapped in AGC (`larq_nobn.train.recipe.optimizer` with agc_clip 0 and 0.02),
warms both train functions up, then times `--steps` steps per contender in `--rounds`
alternating rounds after one untimed round. Overhead = median AGC step time / median Adam
step time - 1.

    python benchmarks/agc_overhead.py --backbones reactnet18 --configs 32:64 --rounds 1
"""

import common

# isort: split
import argparse

GOAL = 0.03  # overhead, at most
CONTENDERS = {"adam": 0.0, "agc": common.AGC_CLIP}  # name: agc_clip


def measure_cell(
    backbone: str, input_size: int, batch_size: int, mode: str, args: argparse.Namespace
) -> dict[str, float]:
    """Median seconds per step of each contender ("adam", "agc")."""
    name = common.model_name(backbone, "nobn")
    trainers = {}
    for contender, agc_clip in CONTENDERS.items():
        trainers[contender] = common.make_trainer(
            name, input_size, batch_size, mode, args, agc_clip=agc_clip
        )
        trainers[contender].warm_up()
    seconds = common.alternate(
        {contender: lambda t=trainer: t(args.steps) for contender, trainer in trainers.items()},
        args.rounds,
    )
    del trainers
    common.release()
    return {contender: common.median(s) / args.steps for contender, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_training_arguments(parser, configs="32:64,32:256", modes="default")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    args = parser.parse_args()

    print(common.machine_description())
    print(
        f"AGC overhead in the nobn training step, stage {args.stage}, AGC clip "
        f"{common.AGC_CLIP}; {args.rounds} alternating rounds of {args.steps} steps per "
        "contender (median round), after 2 warm-up steps each and 1 untimed round"
    )
    rows = []
    for backbone in args.backbones:
        for input_size, batch_size in args.configs:
            for mode in args.modes:
                step = measure_cell(backbone, input_size, batch_size, mode, args)
                overhead = step["agc"] / step["adam"] - 1
                _, met = common.verdict(overhead, GOAL, at_least=False)
                rows.append(
                    [
                        common.model_name(backbone, "nobn"),
                        f"{input_size}x{input_size}",
                        batch_size,
                        mode,
                        f"{step['adam'] * 1e3:.1f}",
                        f"{step['agc'] * 1e3:.1f}",
                        f"{overhead * 100:+.1f} %",
                        f"<= {GOAL * 100:.0f} %",
                        met,
                    ]
                )
                common.log(f"  {rows[-1]}")
    common.print_table(
        ["model", "input", "batch", "mode", "adam ms/step", "agc ms/step", "overhead"]
        + ["goal", "met"],
        rows,
    )


if __name__ == "__main__":
    main()
