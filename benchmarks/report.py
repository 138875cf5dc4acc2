"""Reruns every benchmark script and rewrites BENCHMARKS.md from their output.

    python benchmarks/report.py --quick                # every script, reduced settings
    python benchmarks/report.py                        # every script, the full settings
    python benchmarks/report.py --quick --only agc_overhead --out /tmp/agc.md

One section per script: what it measures, the command, and the command's standard output
verbatim (its tables, and its first line: cores, memory, CPU, load, versions). The goals
table at the top is built from those tables' rows that have a goal ("goal" and "met"
columns), and the header names the CPU (lscpu's model name) and the library versions. The
scripts run one after another, each in a process of its own, in the order of `BENCHMARKS`;
their progress goes to stderr. Nothing else should run on the machine meanwhile: the
scripts alternate their contenders, but a busy machine still adds noise.

Exit code 1 if a script failed (its section then shows its exit code and the end of its
stderr); the page is written either way.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One script's section of the page.

    Args:
        script: The file in `benchmarks/`, without `.py`.
        title: The section's title.
        about: What it measures, in a few sentences (markdown).
        args: Its arguments for the page.
        quick_args: Its arguments with `--quick`: fewer cells, rounds and steps.
    """

    script: str
    title: str
    about: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]

    def command(self, quick: bool) -> list[str]:
        """The command line, as printed on the page (`python benchmarks/<script>.py ...`)."""
        return [
            "python",
            f"benchmarks/{self.script}.py",
            *(self.quick_args if quick else self.args),
        ]


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "train_throughput",
        "Training throughput",
        "Training images/s of the bn and the BN-free (nobn) twin of each backbone, stage 2, "
        "the paper's optimizer for both, Keras' train function on a fixed batch.",
        ("--modes", "default"),
        ("--modes", "default", "--configs", "32:64,224:32", "--rounds", "3", "--steps", "2"),
    ),
    Benchmark(
        "peak_memory",
        "Peak memory of a training step",
        "TensorFlow's allocator peak of one training step (model and optimizer state plus "
        "what the step allocates), bn against nobn, and the resident memory of a fresh "
        "process per contender.",
        ("--modes", "default"),
        ("--modes", "default", "--configs", "32:64,224:32", "--rounds", "2"),
    ),
    Benchmark(
        "agc_overhead",
        "AGC overhead",
        "The BN-free training step with the paper's Adam alone and wrapped in AGC.",
        (),
        ("--configs", "32:64", "--rounds", "3", "--steps", "2"),
    ),
    Benchmark(
        "input_pipeline",
        "Input pipeline",
        "The training program's input pipeline per dataset against what the default model "
        "consumes (CIFAR-10 on TFDS's mock data, offline).",
        (),
        ("--rounds", "2", "--epochs", "1", "--steps", "2"),
    ),
    Benchmark(
        "tflite_latency",
        "TFLite latency through larq-compute-engine",
        "Batch-1 latency of the exported bn and nobn models in larq-compute-engine's "
        "interpreter, and how many of their binary convolutions became `LceBconv2d`.",
        (),
        ("--rounds", "2", "--runs", "3"),
    ),
    Benchmark(
        "float_multiplications",
        "Float multiplications per inference: nobn and A&B BNN",
        "The exported stage-2 flatbuffers of the paper's BN-free models and of A&B BNN's: "
        "float multiplications per inference (MUL, PRELU and the binary convolutions' "
        "output transforms), whether the PReLU slopes are powers of two, and LCE latency.",
        ("--size", "32", "--stem", "cifar"),
        ("--size", "32", "--stem", "cifar", "--rounds", "2", "--runs", "3"),
    ),
    Benchmark(
        "step_breakdown",
        "Where the time of a step goes",
        "A profile by subtraction: the bn twin, BN deleted (`none`), the BN-free network, "
        "and the BN-free network without weight standardization or without AGC (timing "
        "only: the ablations compute other functions).",
        (),
        ("--rounds", "3", "--steps", "1"),
    ),
    Benchmark(
        "conv_gradients",
        "Convolution gradients",
        "TensorFlow's convolution gradient kernels against `larq_nobn.conv2d`'s, per "
        "convolution of the zoo and per model (forward pass and training step).",
        (),
        ("--configs", "32:64", "--rounds", "2"),
    ),
    Benchmark(
        "ws_kernel",
        "Scaled WS on fused batch-norm ops",
        "The effective kernel of scaled weight standardization with its statistics and "
        "gradient on separate ops and on fused batch-norm ops, per kernel and per model.",
        ("--configs", "32:64,224:32"),
        ("--configs", "32:64", "--rounds", "3", "--steps", "2", "--repeats", "5"),
    ),
    Benchmark(
        "malloc_settings",
        "glibc's malloc settings",
        "glibc's defaults against `larq_nobn.reuse_freed_memory`, each setting in processes "
        "of its own.",
        (),
        ("--rounds", "2"),
    ),
)
BY_SCRIPT = {benchmark.script: benchmark for benchmark in BENCHMARKS}

INTRO = """\
Is the BN-free network cheaper than its BN twin? Every table below is the verbatim output
of the command printed above it: one script of `benchmarks/` per section, each run once, in
this order, in one session of `{command}`, on one machine:

- CPU: {cpu} ({cores} CPUs available to the process); Python {python}
- {versions}

Each script builds its contenders first and then alternates them (AB, BA, AB, ...) after an
untimed round, reporting medians and ratios of medians, so that slow drifts of the machine
hit every contender alike. Models are the zoo's, untrained and seeded; no script downloads
data. Every script takes `--help`; the arguments below select {setting}."""

GOALS_NOTE = """\
Every row of a table below that has a goal, with the value it is judged on (the column
before the goal)."""


@dataclasses.dataclass
class Run:
    """What one script printed."""

    benchmark: Benchmark
    command: list[str]
    stdout: str
    returncode: int
    stderr_tail: str
    seconds: float


def run(benchmark: Benchmark, quick: bool) -> Run:
    """Runs the script from the repository root; its stderr (progress) goes on to ours as
    it comes, its stdout (the results) is kept."""
    command = benchmark.command(quick)
    print(f"report: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(
            [sys.executable, *command[1:]],
            cwd=REPO_ROOT,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in process.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        returncode = process.wait()
        stdout.seek(0)
        output = stdout.read()
    seconds = time.perf_counter() - start
    return Run(benchmark, command, output, returncode, "\n".join(tail), seconds)


def cpu_model() -> str:
    """lscpu's "Model name" (the CPU as the kernel reports it)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or platform.machine()


def versions() -> str:
    """The versions of the libraries every number depends on."""
    names = ("tensorflow", "tf-keras", "larq", "larq-compute-engine", "numpy")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in `text`: each a list of rows of cells, header row first."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


# Numeric columns that name a row rather than measure it.
ID_COLUMNS = ("batch", "threads")


def goal_rows(text: str) -> list[tuple[str, str, str, str]]:
    """(row, value, goal, met) of every table row of `text` that has a goal.

    A table has goals where a "goal" column is followed by a "met" column. The row is named
    by the cells before its value that are not numbers (model, input, mode...) and by its
    `ID_COLUMNS`; the value is the cell before the goal. Rows whose goal is "-" have none.
    """
    rows = []
    for header, *body in markdown_tables(text):
        if "goal" not in header or header[header.index("goal") + 1 :][:1] != ["met"]:
            continue
        at = header.index("goal")
        for cells in body:
            goal, met, value = cells[at], cells[at + 1], cells[at - 1]
            if goal == "-":
                continue
            names = []
            for column, cell in zip(header[: at - 1], cells[: at - 1], strict=True):
                if column in ID_COLUMNS:
                    names.append(f"{column} {cell}")
                elif not re.fullmatch(r"[-+\d.,% ]+", cell):
                    names.append(cell)
            rows.append((" ".join(names), value, goal, met))
    return rows


def page(runs: Sequence[Run], quick: bool, only: Sequence[str] | None) -> str:
    """BENCHMARKS.md."""
    flags = ["--quick"] if quick else []
    if only:
        flags += ["--only", ",".join(only)]
    command = " ".join(["python benchmarks/report.py", *flags])
    setting = (
        "a reduced setting (fewer cells, rounds and steps than each script's defaults)"
        if quick
        else "the settings of the full page"
    )
    lines = [
        "# Benchmarks",
        "",
        INTRO.format(
            command=command,
            cpu=cpu_model(),
            cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?",
            python=platform.python_version(),
            versions=versions(),
            setting=setting,
        ),
        "",
        "## Goals",
        "",
        GOALS_NOTE,
        "",
        "| benchmark | row | value | goal | met |",
        "|---|---|---|---|---|",
    ]
    for number, result in enumerate(runs, 1):
        for row, value, goal, met in goal_rows(result.stdout):
            title = f"[{number}. {result.benchmark.title}](#{anchor(number, result.benchmark)})"
            lines.append(f"| {title} | {row} | {value} | {goal} | {met} |")
    for number, result in enumerate(runs, 1):
        lines += [
            "",
            f"## {number}. {result.benchmark.title}",
            "",
            result.benchmark.about,
            "",
            "```",
            "$ " + " ".join(result.command),
            result.stdout.rstrip("\n"),
        ]
        if result.returncode:
            lines += [
                f"(exit code {result.returncode}; the end of its stderr:)",
                result.stderr_tail,
            ]
        lines.append("```")
    return "\n".join(lines) + "\n"


def anchor(number: int, benchmark: Benchmark) -> str:
    """The heading's anchor as GitHub and MkDocs make it."""
    text = f"{number}. {benchmark.title}".lower()
    return re.sub(r"[^\w\- ]", "", text).strip().replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced settings")
    parser.add_argument(
        "--only",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=None,
        help=f"comma-separated scripts: {','.join(BY_SCRIPT)}",
    )
    parser.add_argument("--out", default=str(REPO_ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    unknown = [name for name in args.only or () if name not in BY_SCRIPT]
    if unknown:
        parser.error(f"unknown scripts {unknown}; choose from {','.join(BY_SCRIPT)}")
    chosen = [BY_SCRIPT[name] for name in args.only] if args.only else list(BENCHMARKS)
    runs = [run(benchmark, args.quick) for benchmark in chosen]
    Path(args.out).write_text(page(runs, args.quick, args.only))
    for result in runs:
        status = "ok" if result.returncode == 0 else f"exit code {result.returncode}"
        print(
            f"report: {result.benchmark.script}: {status}, {result.seconds:.0f} s", file=sys.stderr
        )
    print(f"report: wrote {args.out}", file=sys.stderr)
    return 1 if any(result.returncode for result in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
