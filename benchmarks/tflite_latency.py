"""Batch-1 latency of the exported BN and BN-free ReActNets in larq-compute-engine.

For each backbone it builds the stage-2 `<backbone>_bn` and `<backbone>_nobn` models
(untrained, seeded), converts both with `larq_nobn.export.convert` (weight standardization
folded, then `larq_compute_engine.convert_keras_model`) and counts their operators. It then
makes one LCE `Interpreter` per (model, thread count), runs two warm-up inferences on each,
and times `--runs` single-image `predict` calls per interpreter in `--rounds` alternating
rounds after one untimed round. Reported: the median latency per image, nobn/bn per thread
count (goal <= 1.00), and how many of the Keras model's binary convolutions (binary input
quantizer and kernel quantizer of precision 1) became `LceBconv2d` operators (goal 100 %).

The default input is 224x224. (At 32x32 and 64x64 ReActNet-A's last stage is 1x1 and 2x2,
smaller than its 3x3 kernels, where `LceBconv2d` would pad with ones: `export.convert`
rewrites those convolutions, `export.pad_small_binary_inputs_with_ones`.)

`--compare padding` times one variant (`--norm`, default nobn) with the zoo's two
paddings instead, `padding="torch"` (PyTorch's symmetric padding, for ported PyTorch
weights) against `"keras"` (the default); reported torch/keras, with no goal.

    python benchmarks/tflite_latency.py --backbones reactnet18 --rounds 1 --runs 1
    python benchmarks/tflite_latency.py --compare padding --norm bn
"""

import common

# isort: split
import argparse

import numpy as np
import tensorflow as tf
from larq_compute_engine.tflite.python.interpreter import Interpreter

from larq_nobn import export

LATENCY_GOAL = 1.00  # nobn/bn, at most
CONVERTED_GOAL = 1.00  # LceBconv2d / binary-weight convolutions, at least


def binary_weight_convs(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    """Convolutions whose kernel quantizer has precision 1 (binary weights)."""
    return [
        layer
        for layer in model.layers
        if getattr(getattr(layer, "kernel_quantizer", None), "precision", None) == 1
    ]


def export_model(name: str, args: argparse.Namespace, padding: str = "keras") -> dict:
    """The flatbuffer of a zoo model and what was converted to what."""
    common.log(f"building and converting {name} {args.input_size}x{args.input_size} {padding}")
    model = common.build_model(
        name,
        stage=args.stage,
        input_size=args.input_size,
        num_classes=common.num_classes_for(args.input_size, args.num_classes),
        stem=args.stem,
        padding=padding,
    )
    binary = binary_weight_convs(model)
    flatbuffer = export.convert(model)
    del model
    common.release()
    return {
        "flatbuffer": flatbuffer,
        "binary_weight_convs": len(binary),
        "real_input": sum(layer.input_quantizer is None for layer in binary),
        "bconv": export.op_counts(flatbuffer)["LceBconv2d"],
    }


def latencies(
    flatbuffers: dict[str, bytes], image: np.ndarray, args: argparse.Namespace
) -> dict[tuple[str, int], float]:
    """Median ms per image of every (model, thread count), timed in alternating rounds."""
    interpreters = {}
    for threads in args.threads:
        for norm, flatbuffer in flatbuffers.items():
            interpreter = Interpreter(flatbuffer, num_threads=threads)
            interpreter.predict(image)
            interpreter.predict(image)
            interpreters[f"{norm}/{threads}"] = (norm, threads), interpreter

    def run(interpreter: Interpreter) -> None:
        for _ in range(args.runs):
            interpreter.predict(image)

    seconds = common.alternate(
        {name: lambda i=interpreter: run(i) for name, (_, interpreter) in interpreters.items()},
        args.rounds,
    )
    return {
        key: common.median(seconds[name]) / args.runs * 1e3
        for name, (key, _) in interpreters.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_arguments(parser)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument(
        "--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2], help="1,2"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="inferences per round")
    parser.add_argument(
        "--compare", choices=("norm", "padding"), default="norm", help="bn vs nobn, or paddings"
    )
    parser.add_argument("--norm", choices=("bn", "nobn", "none"), default="nobn")
    args = parser.parse_args()
    # What is timed against what: (contender names, baseline, challenger).
    if args.compare == "norm":
        contenders, baseline, challenger = common.NORMS, "bn", "nobn"
    else:
        contenders, baseline, challenger = ("keras", "torch"), "keras", "torch"

    print(common.machine_description())
    print(
        f"LCE batch-1 latency, stage {args.stage}, {args.input_size}x{args.input_size}; "
        f"{args.rounds} alternating rounds of {args.runs} inferences per interpreter (median "
        "round), after 2 warm-up inferences each and 1 untimed round"
    )
    image = common.random_batch(args.input_size, 1, 10)[0]
    latency_rows, conversion_rows = [], []
    for backbone in args.backbones:
        if args.compare == "norm":
            exported = {
                norm: export_model(common.model_name(backbone, norm), args) for norm in contenders
            }
        else:
            name = common.model_name(backbone, args.norm)
            exported = {padding: export_model(name, args, padding) for padding in contenders}
        for contender, e in exported.items():
            # Binary convolutions: binary inputs and binary weights, what LceBconv2d runs. A
            # binary-weight convolution of real inputs (ReActNet-18's downsample 1x1s) stays
            # a float CONV_2D in any engine; the table lists those separately.
            binary_convs = e["binary_weight_convs"] - e["real_input"]
            converted = e["bconv"] / binary_convs if binary_convs else 0
            conversion_rows.append(
                [
                    common.model_name(backbone, contender)
                    if args.compare == "norm"
                    else f"{common.model_name(backbone, args.norm)} {contender}",
                    e["bconv"],
                    e["binary_weight_convs"] - e["real_input"],
                    e["real_input"],
                    f"{converted * 100:.0f} %",
                    f">= {CONVERTED_GOAL * 100:.0f} %",
                    common.verdict(converted, CONVERTED_GOAL, at_least=True)[1],
                ]
            )
        common.log(f"timing {backbone}")
        ms = latencies({c: e["flatbuffer"] for c, e in exported.items()}, image, args)
        del exported
        for threads in args.threads:
            ratio = ms[challenger, threads] / ms[baseline, threads]
            verdict = (
                common.verdict(ratio, LATENCY_GOAL, at_least=False)
                if args.compare == "norm"
                else ["-", "-"]
            )
            latency_rows.append(
                [
                    backbone if args.compare == "norm" else f"{backbone}_{args.norm}",
                    f"{args.input_size}x{args.input_size}",
                    threads,
                    f"{ms[baseline, threads]:.1f}",
                    f"{ms[challenger, threads]:.1f}",
                    f"{ratio:.3f}",
                    *verdict,
                ]
            )
            common.log(f"  {latency_rows[-1]}")
    print("\nBatch-1 latency (ms per image)")
    common.print_table(
        ["model", "input", "threads", f"{baseline} ms", f"{challenger} ms"]
        + [f"{challenger}/{baseline}", "goal", "met"],
        latency_rows,
    )
    print(
        "\nBinary convolutions converted (LceBconv2d ops / conv layers with binary inputs and "
        "binary weights)"
    )
    common.print_table(
        ["model", "LceBconv2d", "binary convs", "binary-weight convs of real inputs"]
        + ["converted", "goal", "met"],
        conversion_rows,
    )


if __name__ == "__main__":
    main()
