"""Peak memory of one training step of the BN and the BN-free ReActNets, side by side.

Two measurements per (backbone, SIZE:BATCH config, mode) cell, both after the train
function has been traced and has run twice (optimizer slots exist, XLA has compiled):

1. TensorFlow's allocator (`tf.config.experimental.get_memory_info("CPU:0")`, which works on
   this CPU build). Both models live in this process and are measured in `--rounds`
   alternating rounds: reset the peak, run `--steps` steps, read it. A contender's *step
   peak* is its persistent state (model and optimizer variables and the input batch, summed
   from their shapes) plus its *transient* memory, the allocator's peak minus what was
   allocated right before the steps (activations kept for the backward pass, gradients,
   temporaries). This isolates one model's step from everything else in the process; the
   goal (nobn/bn <= 0.90) is judged on it. Memory that libraries allocate outside
   TensorFlow's allocator (oneDNN's primitive caches, for one) is not seen.
2. Resident memory of a fresh process per contender (`--rss`, on by default; VmRSS and
   VmHWM from /proc/self/status). The child builds and compiles the model, runs two
   forward passes and traces the train function (which creates the optimizer's slots);
   then it runs two training steps (graph optimization or XLA compilation, the steps),
   resets the high-water mark (`echo 5 > /proc/self/clear_refs`) and runs `--steps` more.
   Reported: the process's peak RSS over its life, the *first-steps increase* (that peak
   minus the RSS right before the first training step) and the *step increase* (peak RSS
   of the later steps minus the RSS right before them; near 0 when the allocator and
   malloc keep the memory of the first steps for reuse). RSS includes everything (runtime,
   traced graphs, allocator caches), so its ratios are diluted.

    python benchmarks/peak_memory.py --backbones reactnet18 --configs 32:64 --modes default
"""

import common

# isort: split
import argparse
import json
import subprocess
import sys
from pathlib import Path

import tensorflow as tf

GOAL = 0.90  # nobn/bn step peak, at most
MIB = 2**20
RESULT_PREFIX = "RESULT "  # the line of a child's stdout that holds its JSON result
CHILD_ARGS = ("stage", "num_classes", "stem", "steps")  # the flags a child needs


# ----------------------------------------------------------------------------- allocator


def allocator_cell(
    backbone: str, input_size: int, batch_size: int, mode: str, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """{"bn"|"nobn": {"state", "transient", "peak"}} in bytes (medians over rounds)."""
    trainers = {
        norm: common.make_trainer(
            common.model_name(backbone, norm), input_size, batch_size, mode, args
        )
        for norm in common.NORMS
    }
    for trainer in trainers.values():
        trainer.warm_up()
    transient: dict[str, list[float]] = {norm: [] for norm in trainers}
    for _, norm in common.alternating(list(trainers), args.rounds):
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        trainers[norm](args.steps)
        transient[norm].append(tf.config.experimental.get_memory_info("CPU:0")["peak"] - before)
    result = {}
    for norm, trainer in trainers.items():
        state = trainer.state_bytes()
        moving = common.median(transient[norm])
        result[norm] = {"state": state, "transient": moving, "peak": state + moving}
    del trainers
    common.release()
    return result


# ----------------------------------------------------------------------------- RSS


def proc_status_bytes(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_child(spec: dict) -> dict:
    """Runs in a fresh process: the RSS numbers of one contender (bytes)."""
    args = argparse.Namespace(**spec["args"])
    name = common.model_name(spec["backbone"], spec["norm"])
    trainer = common.make_trainer(name, spec["input_size"], spec["batch_size"], spec["mode"], args)
    trainer.forward()
    trainer.forward()
    # Tracing creates the optimizer's slots; the graph is optimized (and with XLA compiled)
    # at the first call.
    trainer.train_function.get_concrete_function(trainer.iterator)
    before_first = proc_status_bytes("VmRSS")
    trainer(1)
    trainer(1)
    peak_so_far = proc_status_bytes("VmHWM")
    result = {
        "first_step": peak_so_far - before_first,
        "step": None,
        "total": peak_so_far,
    }
    if reset_peak_rss():
        before = proc_status_bytes("VmRSS")
        trainer(args.steps)
        peak = proc_status_bytes("VmHWM")
        result["step"] = peak - before
        result["total"] = max(peak_so_far, peak)
    return result


def rss_cell(
    backbone: str, input_size: int, batch_size: int, mode: str, args: argparse.Namespace
) -> dict[str, dict[str, float | None]]:
    """{"bn"|"nobn": {"total", "first_step", "step"}} in bytes, medians of fresh processes."""
    runs: dict[str, list[dict]] = {norm: [] for norm in common.NORMS}
    for _, norm in common.alternating(list(common.NORMS), args.rss_rounds):
        spec = dict(
            backbone=backbone,
            norm=norm,
            input_size=input_size,
            batch_size=batch_size,
            mode=mode,
            args={k: v for k, v in vars(args).items() if k in CHILD_ARGS},
        )
        common.log(f"fresh process: {common.model_name(backbone, norm)} (RSS)")
        child = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
        )
        lines = [x for x in child.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if child.returncode or not lines:
            tail = "\n".join(child.stderr.splitlines()[-15:])
            raise RuntimeError(f"the RSS child failed ({child.returncode}):\n{tail}")
        runs[norm].append(json.loads(lines[-1][len(RESULT_PREFIX) :]))
    result = {}
    for norm, values in runs.items():
        result[norm] = {}
        for key in ("total", "first_step", "step"):
            numbers = [v[key] for v in values if v[key] is not None]
            result[norm][key] = common.median(numbers) if numbers else None
    return result


# ----------------------------------------------------------------------------- report


def mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:.0f}"


def ratio(nobn: float | None, bn: float | None) -> str:
    return "n/a" if nobn is None or not bn else f"{nobn / bn:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_training_arguments(parser, configs="32:256,224:32,32:64")
    parser.add_argument("--rounds", type=int, default=3, help="alternating allocator rounds")
    parser.add_argument("--steps", type=int, default=1, help="training steps per measurement")
    parser.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure RSS in a fresh process per contender",
    )
    parser.add_argument("--rss_rounds", type=int, default=1, help="fresh processes per contender")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_PREFIX + json.dumps(rss_child(json.loads(args.child))), flush=True)
        return

    print(common.machine_description())
    print(
        f"peak memory of a training step, stage {args.stage}; allocator: {args.rounds} "
        f"alternating rounds of {args.steps} step(s) after 2 warm-up steps (median)"
        + (f"; RSS: {args.rss_rounds} fresh process(es) per contender" if args.rss else "")
    )
    allocator_rows, rss_rows = [], []
    for backbone in args.backbones:
        for input_size, batch_size in args.configs:
            for mode in args.modes:
                cell = [backbone, f"{input_size}x{input_size}", batch_size, mode]
                a = allocator_cell(backbone, input_size, batch_size, mode, args)
                r = a["nobn"]["peak"] / a["bn"]["peak"]
                allocator_rows.append(
                    cell
                    + [mib(a["bn"]["peak"]), mib(a["nobn"]["peak"]), f"{r:.3f}"]
                    + list(common.verdict(r, GOAL, at_least=False))
                    + [mib(a["bn"]["state"]), mib(a["nobn"]["state"])]
                    + [mib(a["bn"]["transient"]), mib(a["nobn"]["transient"])]
                    + [ratio(a["nobn"]["transient"], a["bn"]["transient"])]
                )
                common.log(f"  {allocator_rows[-1]}")
                if args.rss:
                    m = rss_cell(backbone, input_size, batch_size, mode, args)
                    row = list(cell)
                    for key in ("total", "first_step"):
                        row += [mib(m["bn"][key]), mib(m["nobn"][key])]
                        row.append(ratio(m["nobn"][key], m["bn"][key]))
                    row += [mib(m["bn"]["step"]), mib(m["nobn"]["step"])]  # ~0: no ratio
                    rss_rows.append(row)
                    common.log(f"  {rss_rows[-1]}")
    print("\nTensorFlow allocator (MiB): step peak = state + transient")
    common.print_table(
        ["backbone", "input", "batch", "mode", "bn peak", "nobn peak", "nobn/bn", "goal", "met"]
        + ["bn state", "nobn state", "bn transient", "nobn transient", "transient nobn/bn"],
        allocator_rows,
    )
    if args.rss:
        print("\nResident memory of a fresh process per contender (MiB)")
        common.print_table(
            ["backbone", "input", "batch", "mode"]
            + ["bn peak RSS", "nobn peak RSS", "nobn/bn"]
            + ["bn 1st-steps incr.", "nobn 1st-steps incr.", "nobn/bn"]
            + ["bn step incr.", "nobn step incr."],
            rss_rows,
        )


if __name__ == "__main__":
    main()
