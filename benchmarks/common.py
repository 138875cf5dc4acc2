"""What the benchmarks share: setup, machine line, alternating timer, tables, trainers.

Import it first in every script (`import common`, from the `benchmarks/` directory the
script runs in): it puts the repository root on `sys.path` (for `zoo` and `train`), quiets
TensorFlow's C++ logging and imports `larq_nobn`, which selects Keras 2 before TensorFlow.
"""

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_nobn  # noqa: E402,F401  (Keras 2 before TensorFlow)
from larq_nobn.train.process import reuse_freed_memory  # noqa: E402

# As the training program does; `MALLOC_MMAP_MAX_=65536` in the environment keeps glibc's
# defaults (benchmarks/malloc_settings.py compares both).
MALLOC_REUSE = reuse_freed_memory()

# isort: split
import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from larq_nobn import zoo  # noqa: E402
from larq_nobn.train import recipe  # noqa: E402

BACKBONES = ("reactnet_a", "reactnet18")
NORMS = ("bn", "nobn")
MODES = ("default", "jit")
LEARNING_RATE = recipe.LEARNING_RATE  # 5e-4
AGC_CLIP = recipe.AGC_CLIP  # 0.02, for bn and nobn models alike (as in the paper's recipe)
TOTAL_STEPS = 1_000_000  # of the linear decay: far away, the learning rate stays ~constant
SEED = 0

Config = tuple[int, int]  # (input size, batch size)


# ----------------------------------------------------------------------------- reporting


def machine_description() -> str:
    """One line: cores, memory, CPU, load, library versions and the date."""
    meminfo = Path("/proc/meminfo")
    memory = "? GiB"
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        first = cpuinfo.read_text().split("\n\n")[0]  # the first processor's block
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in first.splitlines())
        )
        # Hosts of one name differ by generation (AMD: family 25 is Zen 3, 26 Zen 5), and
        # so do TensorFlow's CPU kernels on them.
        cpu = (
            f"{fields.get('model name', cpu)}, "
            f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
        )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("tensorflow", "tf_keras", "larq", "larq-compute-engine")
    )
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"machine: {os.cpu_count()} cores ({cpu}), {memory} RAM, load {load}; "
        f"python {platform.python_version()}, {versions}; "
        f"malloc {'reuses freed memory' if MALLOC_REUSE else 'glibc defaults'}; {date}"
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A markdown table, columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def verdict(value: float, goal: float | None, at_least: bool) -> tuple[str, str]:
    """(goal text, "yes"/"no") for `value >= goal` (or `<=`); ("-", "-") without a goal."""
    if goal is None:
        return "-", "-"
    met = value >= goal if at_least else value <= goal
    return f"{'>=' if at_least else '<='} {goal:.2f}", "yes" if met else "no"


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- timing


def alternating(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) pairs: every name once per round, reversed in every odd round (AB BA AB)."""
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            yield r, name


def alternate(
    contenders: dict[str, Callable[[], object]], rounds: int, untimed_rounds: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contender, called in `alternating` rounds.

    Alternating makes slow drifts of the machine hit every contender alike. The first
    `untimed_rounds` rounds are not recorded: the first call of a warmed-up train function
    after another model ran can still take several times a normal step.
    """
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for r, name in alternating(list(contenders), untimed_rounds + rounds):
        start = time.perf_counter()
        contenders[name]()
        if r >= untimed_rounds:
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ----------------------------------------------------------------------------- arguments


def parse_configs(text: str) -> list[Config]:
    """ "32:256,224:32" -> [(32, 256), (224, 32)] (input size : batch size)."""
    configs = []
    for item in text.split(","):
        size, _, batch = item.strip().partition(":")
        if not size.isdigit() or not batch.isdigit() or int(size) <= 0 or int(batch) <= 0:
            raise argparse.ArgumentTypeError(f"configs are SIZE:BATCH, got {item!r}")
        configs.append((int(size), int(batch)))
    return configs


def choices(valid: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated subset of `valid`."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in valid]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(valid)}, got {text!r}")
        return items

    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that pick the models: --backbones, --stage, --num_classes, --stem."""
    parser.add_argument(
        "--backbones", type=choices(BACKBONES), default=list(BACKBONES), help="comma-separated"
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument(
        "--num_classes", type=int, default=None, help="default: 10 at 32x32, 1000 otherwise"
    )
    parser.add_argument(
        "--stem", choices=("imagenet", "cifar"), default="imagenet", help="the first layers"
    )


def add_training_arguments(
    parser: argparse.ArgumentParser, configs: str, modes: str = "default,jit"
) -> None:
    """The model flags plus the training cells' --configs SIZE:BATCH,... and --modes."""
    add_model_arguments(parser)
    parser.add_argument(
        "--configs", type=parse_configs, default=parse_configs(configs), help="SIZE:BATCH,..."
    )
    parser.add_argument(
        "--modes", type=choices(MODES), default=modes.split(","), help="default,jit"
    )


def num_classes_for(input_size: int, given: int | None) -> int:
    if given is not None:
        return given
    return 10 if input_size <= 32 else 1000


# ----------------------------------------------------------------------------- models


def model_name(backbone: str, norm: str) -> str:
    return f"{backbone}_{norm}"


def build_model(
    name: str,
    *,
    stage: int,
    input_size: int,
    num_classes: int,
    stem: str = "imagenet",
    padding: str = "keras",
) -> tf.keras.Model:
    """A zoo model with seeded initialization."""
    tf.keras.utils.set_random_seed(SEED)
    return zoo.get_model(
        name,
        stage=stage,
        input_shape=(input_size, input_size, 3),
        num_classes=num_classes,
        padding=padding,
        stem=stem,
    )


def random_batch(input_size: int, batch_size: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """Seeded (float32 NHWC images, int32 labels)."""
    rng = np.random.default_rng(SEED)
    images = rng.standard_normal((batch_size, input_size, input_size, 3), dtype=np.float32)
    labels = rng.integers(0, num_classes, size=batch_size, dtype=np.int32)
    return images, labels


class Trainer:
    """A compiled zoo model and Keras' own train function on one fixed in-memory batch.

    Each call of `model.train_function` runs the real `train_step` (forward, loss, gradients,
    optimizer update) once: compiled with `steps_per_execution=1`, fed by an iterator of a
    repeated `Dataset.from_tensors` batch, so nothing but the step runs between calls.
    """

    def __init__(
        self,
        name: str,
        *,
        stage: int,
        input_size: int,
        batch_size: int,
        num_classes: int,
        jit_compile: bool = False,
        agc_clip: float = AGC_CLIP,
        stem: str = "imagenet",
        fused: bool | None = None,
    ):
        self.name = name
        self.model = build_model(
            name, stage=stage, input_size=input_size, num_classes=num_classes, stem=stem
        )
        self.model.compile(
            optimizer=recipe.optimizer(LEARNING_RATE, TOTAL_STEPS, agc_clip, fused=fused),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
            steps_per_execution=1,
        )
        self.model.optimizer.build(self.model.trainable_variables)  # one trace, not two
        self.batch = random_batch(input_size, batch_size, num_classes)
        dataset = tf.data.Dataset.from_tensors(self.batch).repeat()
        self.iterator = iter(dataset)
        self.train_function = self.model.make_train_function()

    def forward(self) -> None:
        """One forward pass in training mode, without gradients (warms kernels up)."""
        self.model(self.batch[0], training=True).numpy()

    def __call__(self, steps: int = 1) -> float:
        """Runs `steps` training steps; returns the last loss (reading it waits for the step)."""
        logs = None
        for _ in range(steps):
            logs = self.train_function(self.iterator)
        return float(logs["loss"])

    def warm_up(self, steps: int = 2) -> None:
        """The first call traces (and with XLA compiles) the step; the second settles it."""
        loss = self(steps)
        if not np.isfinite(loss):
            raise RuntimeError(f"{self.name}: the warm-up loss is {loss}")

    def state_bytes(self) -> int:
        """Bytes of the model's and the optimizer's variables and of the input batch."""
        variables = list(self.model.variables) + list(self.model.optimizer.variables)
        unique = {id(v): v for v in variables}.values()
        weights = sum(int(np.prod(v.shape)) * v.dtype.size for v in unique)
        return weights + sum(array.nbytes for array in self.batch)


def make_trainer(
    name: str,
    input_size: int,
    batch_size: int,
    mode: str,
    args: argparse.Namespace,
    agc_clip: float = AGC_CLIP,
) -> Trainer:
    """A `Trainer` of a training cell (mode "default" or "jit"), from the model flags."""
    log(f"building {name} {input_size}x{input_size} batch {batch_size} {mode} agc {agc_clip}")
    return Trainer(
        name,
        stage=args.stage,
        input_size=input_size,
        batch_size=batch_size,
        num_classes=num_classes_for(input_size, args.num_classes),
        jit_compile=mode == "jit",
        agc_clip=agc_clip,
        stem=args.stem,
    )


def release() -> None:
    """Drops the Keras graph state and collects garbage between measurement cells."""
    tf.keras.backend.clear_session()
    gc.collect()
