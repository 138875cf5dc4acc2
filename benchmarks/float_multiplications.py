"""Float multiplications per inference and LCE latency of the BN-free and A&B ReActNets.

For each backbone it builds the stage-2 `<backbone>_nobn` (the paper's BN-free design) and
`<backbone>_ab` (A&B BNN's) models, seeded, with random learnable biases, gains and PReLU
slopes (at their initial values biases are zeros that the converter drops, and every slope
would be 1/4 or 1/8), converts both with `larq_nobn.export.convert` and reads the
flatbuffers (`export.operators`). Counted, for one image, from the operators' output
shapes:

- MUL: every output element of a MUL operator (e.g. a beta rescaling that cannot be folded
  into a bias because a shortcut also reads it; a quantized PReLU's slopes if it were not
  rewritten);
- PRELU: every output element (the engine multiplies the negative ones by their slope; the
  count is the worst case, all negative). A&B's slopes are powers of two, a shift on
  hardware without multipliers: the column "slopes 2^k" says whether every slope stored in
  the flatbuffer is one;
- bconv transform: every output element of an `LceBconv2d` that writes floats (its third
  input, the per-channel `post_activation_multiplier`, scales the integer accumulator of
  each output element; then the per-channel bias is added). An `LceBconv2d` that writes
  bits (a threshold instead) multiplies nothing.

Their total is what the A&B design removes or makes shifts. The real (float-input)
convolutions and the classifier, which A&B keeps as they are, are listed apart: their
multiply-accumulates (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED: output elements times
kernel taps). Average pooling's divisions are not counted.

Latency: one LCE `Interpreter` per model (`--threads`), two warm-up inferences each, then
`--rounds` alternating rounds of `--runs` single-image inferences after one untimed round;
the median round, per inference, all models measured side by side in one process.

    python benchmarks/float_multiplications.py --size 32 --stem cifar
    python benchmarks/float_multiplications.py  # 224x224, ImageNet stems, 1000 classes
"""

import common

# isort: split
import argparse

import numpy as np
import tensorflow as tf
from larq_compute_engine.tflite.python.interpreter import Interpreter

import larq_nobn
from larq_nobn import export

DESIGNS = ("nobn", "ab")
MACS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def randomize(model: tf.keras.Model, seed: int = common.SEED) -> tf.keras.Model:
    """Random learnable biases, scaled-WS gains and PReLU slopes (free ones in (0.05, 0.5),
    quantized ones `2 ** round(L)` with L in (-6, 1)), as a trained model has."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, larq_nobn.LearnableBias):
            layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
        elif isinstance(layer, larq_nobn.QuantizedPReLU):
            layer.set_weights([rng.uniform(-6, 1, w.shape) for w in layer.get_weights()])
        elif isinstance(layer, tf.keras.layers.PReLU):
            layer.set_weights([rng.uniform(0.05, 0.5, w.shape) for w in layer.get_weights()])
        for weight in layer.weights:
            if weight.name.split("/")[-1].startswith("gain"):
                weight.assign(rng.uniform(0.5, 1.5, weight.shape))
    return model


def elements(tensor: export.Tensor) -> int:
    return int(np.prod(tensor.shape, dtype=np.int64))


def count(flatbuffer: bytes) -> dict[str, object]:
    """Float multiplications per inference by source, and what else the table shows."""
    result = {"MUL": 0, "PRELU": 0, "bconv": 0, "macs": 0, "bconvs": 0, "pow2": True}
    for op in export.operators(flatbuffer):
        if op.kind == "MUL":
            result["MUL"] += elements(op.outputs[0])
        elif op.kind == "PRELU":
            result["PRELU"] += elements(op.outputs[0])
            _, exponents = np.frexp(op.inputs[1].data)
            result["pow2"] &= bool(np.all(np.ldexp(0.5, exponents) == op.inputs[1].data))
        elif op.kind == "LceBconv2d":
            result["bconvs"] += 1
            if len(op.inputs) > 2 and op.inputs[2] is not None:
                result["bconv"] += elements(op.outputs[0])
        elif op.kind in MACS:
            # Kernel taps per output element: the weights' size over the output channels.
            weights = op.inputs[1]
            result["macs"] += elements(op.outputs[0]) * elements(weights) // weights.shape[0]
    result["total"] = result["MUL"] + result["PRELU"] + result["bconv"]
    return result


def export_model(name: str, args: argparse.Namespace) -> bytes:
    common.log(f"building and converting {name} {args.size}x{args.size}, {args.stem} stem")
    model = common.build_model(
        name,
        stage=2,
        input_size=args.size,
        num_classes=common.num_classes_for(args.size, args.num_classes),
        stem=args.stem,
    )
    flatbuffer = export.convert(randomize(model))
    del model
    common.release()
    return flatbuffer


def latencies(flatbuffers: dict[str, bytes], args: argparse.Namespace) -> dict[str, float]:
    """Median ms per inference of every model, timed in alternating rounds."""
    image = common.random_batch(args.size, 1, 10)[0]
    interpreters = {}
    for name, flatbuffer in flatbuffers.items():
        interpreters[name] = Interpreter(flatbuffer, num_threads=args.threads)
        interpreters[name].predict(image)
        interpreters[name].predict(image)

    def run(interpreter: Interpreter) -> None:
        for _ in range(args.runs):
            interpreter.predict(image)

    seconds = common.alternate(
        {name: lambda i=interpreter: run(i) for name, interpreter in interpreters.items()},
        args.rounds,
    )
    return {name: common.median(s) / args.runs * 1e3 for name, s in seconds.items()}


def millions(n: int) -> str:
    return f"{n / 1e6:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbones",
        type=common.choices(common.BACKBONES),
        default=["reactnet18", "reactnet_a"],
        help="comma-separated",
    )
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--stem", choices=("imagenet", "cifar"), default="imagenet")
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: 10 at 32x32, 1000 otherwise"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="inferences per round")
    args = parser.parse_args()

    flatbuffers = {
        common.model_name(backbone, design): None
        for backbone in args.backbones
        for design in DESIGNS
    }
    for name in flatbuffers:
        flatbuffers[name] = export_model(name, args)
    common.log("timing")
    ms = latencies(flatbuffers, args)

    print(common.machine_description())
    print(
        f"Stage 2, {args.size}x{args.size}, {args.stem} stem, batch 1. Float multiplications "
        "per inference in the flatbuffer, in millions (see the docstring); LCE latency: "
        f"median of {args.rounds} alternating rounds of {args.runs} inferences, "
        f"{args.threads} thread(s)"
    )
    rows = []
    for name, flatbuffer in flatbuffers.items():
        c = count(flatbuffer)
        rows.append(
            [
                name,
                millions(c["MUL"]),
                millions(c["PRELU"]),
                "yes" if c["pow2"] and c["PRELU"] else "no" if c["PRELU"] else "-",
                millions(c["bconv"]),
                millions(c["total"]),
                c["bconvs"],
                millions(c["macs"]),
                f"{ms[name]:.2f}",
            ]
        )
    common.print_table(
        ["model", "MUL", "PRELU", "slopes 2^k", "bconv transform", "total"]
        + ["LceBconv2d", "real conv/FC MACs", "LCE ms"],
        rows,
    )


if __name__ == "__main__":
    main()
