"""The commands' options, each written once: name, type, default, help, check, group.

`OPTIONS` is the one definition of the training program's options (`larq-nobn-train`),
`SPP_OPTIONS` that of `larq-nobn-spp`. From `OPTIONS` come the absl flags
(`define_flags`), the fields of `config.Config` (`dataclass_fields`), `config.json`
(`to_json`) and the check that a rerun of an unfinished run has its flags (`changed`); from
either, the command's `--help` (`help_text`), grouped by `GROUPS`. Names are checked
against the registries (`zoo.MODELS`, `catalog.APPLICATIONS`, `catalog.DATASETS`), so that
every check and the help run before TensorFlow is imported: this module imports none of it.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from larq_nobn import acceleration, zoo
from larq_nobn.registry import unknown_name_message
from larq_nobn.train import catalog
from larq_nobn.train import hyperparameters as hp
from larq_nobn.zoo import variants

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
MIXED_PRECISION = ("float32", "mixed_float16", "mixed_bfloat16")
# --init_from value that starts a Keras application from its published ImageNet weights.
IMAGENET = "imagenet"


#: The sections of a command's `--help`, in order: every option names one of them.
GROUPS: Mapping[str, str] = {
    "model": "the network and the weights it starts from",
    "data": "the dataset and its images",
    "training": "the recipe: stages, schedule, optimizer, loss, seed",
    "distribution": "devices, machines and numerics",
    "outputs": "what is written and printed",
}


class ConfigError(ValueError):
    """A bad flag or flag combination (one user-facing line)."""


# A check takes the option's name and value and returns what is wrong, or None.
Check = Callable[[str, Any], "str | None"]


def one_of(names: Callable[[], Sequence[str]]) -> Check:
    """The value must be one of `names()` (the message of an unknown name lists them)."""

    def check(name: str, value: Any) -> str | None:
        if value not in names():
            return unknown_name_message(f"--{name}", value, map(str, names()))
        return None

    return check


def positive(name: str, value: Any) -> str | None:
    """The value must be positive (a resolved value: never None)."""
    return None if value > 0 else f"--{name} must be positive, got {value}"


def positive_or_none(name: str, value: Any) -> str | None:
    """None, or a positive value."""
    return None if value is None else positive(name, value)


def non_negative(note: str = "") -> Check:
    """None, or a value >= 0; `note` follows the bound in the message."""

    def check(name: str, value: Any) -> str | None:
        if value is not None and value < 0:
            return f"--{name} must be >= 0{note}, got {value}"
        return None

    return check


def required(name: str, value: Any) -> str | None:
    """The option must be given."""
    return f"--{name} is required" if value is None else None


def stages(name: str, value: Any) -> str | None:
    """A non-empty selection of the zoo's stages."""
    if not value or any(stage not in zoo.STAGES for stage in value):
        return f"--{name} must be 1, 2 or 1,2, got {value}"
    return None


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a command: its flag and, for the training program, its `Config` field
    and its config.json key.

    Args:
        name: The flag's and the field's name.
        type: `str`, `int`, `float`, `bool`, `tuple` (a comma-separated list of integers)
            or `list` (a string flag that may be repeated).
        default: The flag's and the field's default (None: resolved by `Config.resolved`;
            the help then says what the default is).
        help: The flag's help, one sentence.
        check: What the resolved value must be (`one_of`, `positive`, ...); None: anything.
        resume: Whether an unfinished run resumes only with the same value (config.json).
        absent: The value a run had whose config.json lacks the option (written before it
            existed), if not `default` (a default that the resolution fills in).
        group: Its section of `--help`, a key of `GROUPS` (keyword-only and required, so
            that a new option cannot be left out of the help's sections).

    Raises:
        ValueError: `group` is not one of `GROUPS`.
    """

    name: str
    type: type
    default: Any
    help: str
    check: Check | None = None
    resume: bool = True
    absent: Any = None
    group: str = dataclasses.field(kw_only=True)

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(
                f"option --{self.name}: group must be one of {', '.join(GROUPS)}, "
                f"got {self.group!r}"
            )

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None."""
        return None if self.check is None else self.check(self.name, value)

    def from_flag(self, value: Any) -> Any:
        """The field's value of the flag's (a list flag's strings become integers)."""
        if self.type is list:
            return tuple(value or ())
        if self.type is not tuple or value is None:
            return value
        try:
            return tuple(int(item) for item in value)
        except ValueError:
            text = ",".join(value)
            raise ConfigError(
                self.problem(text) or f"--{self.name} takes integers, got {text}"
            ) from None

    def to_json(self, value: Any) -> Any:
        """The value as config.json holds it."""
        return list(value) if isinstance(value, tuple) else value

    def annotation(self) -> Any:
        """The field's type (`X | None` where the default is None)."""
        kind = {tuple: tuple[int, ...], list: tuple[str, ...]}.get(self.type, self.type)
        return kind if self.default is not None else kind | None

    def usage(self) -> str:
        """How the flag is written in `--help`: `--name=TYPE`, or `--[no]name`."""
        if self.type is bool:
            return f"--[no]{self.name}"
        metavar = {str: "TEXT", int: "INT", float: "NUMBER", tuple: "INTS", list: "TEXT"}
        return f"--{self.name}={metavar[self.type]}"

    def to_text(self, value: Any) -> str:
        """A value as it is written on the command line."""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple | list):
            return ",".join(str(item) for item in value)
        return str(value)

    def help_line(self) -> str:
        """The help with the default: `(default: X)` or, where it is resolved later, the
        help's own words (which must then say what the default is)."""
        if self.type is list:
            return f"{self.help} (repeatable; default: none)"
        if self.default is None:
            return self.help
        return f"{self.help} (default: {self.to_text(self.default)})"


_applications = ", ".join(catalog.APPLICATIONS.names())

OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        str,
        "reactnet_nobn",
        f"zoo model: {', '.join(zoo.MODELS.names())}; or a full-precision Keras application "
        f"(a teacher): {_applications}",
        one_of(lambda: (*zoo.MODELS.names(), *catalog.APPLICATIONS.names())),
        group="model",
    ),
    Option(
        "dataset",
        str,
        "digits",
        f"dataset: {', '.join(catalog.DATASETS.names())}",
        one_of(catalog.DATASETS.names),
        group="data",
    ),
    Option(
        "model_dir",
        str,
        None,
        "output directory (default runs/<model>_<dataset>)",
        group="outputs",
    ),
    Option(
        "data_dir",
        str,
        None,
        "TFDS data dir, or the Fashion-MNIST IDX directory (default TFDS's own, "
        "~/tensorflow_datasets)",
        group="data",
    ),
    Option(
        "stages",
        tuple,
        None,
        "1 (binary activations), 2 (binary weights too); default 1,2 (applications: 1)",
        stages,
        group="training",
    ),
    Option(
        "epochs",
        int,
        None,
        "epochs per stage (default per dataset; 256 for the paper)",
        positive,
        group="training",
    ),
    Option(
        "batch_size",
        int,
        None,
        "global batch size (default per dataset; 256)",
        positive,
        group="training",
    ),
    Option(
        "recipe",
        str,
        None,
        f"training recipe of zoo models: {hp.PAPER.name} (BNN - BN = ?) or {hp.AB.name} (A&B "
        f"BNN's notebooks); default {hp.AB.name} for the *_ab models, else {hp.PAPER.name}. It "
        "sets the defaults of --learning_rate, --weight_decay and --agc_clip, and CIFAR's "
        "normalization and crop padding",
        one_of(lambda: tuple(hp.RECIPES)),
        absent=hp.PAPER.name,
        group="training",
    ),
    Option(
        "learning_rate",
        float,
        None,
        f"default the recipe's: {hp.PAPER.learning_rate} ({hp.PAPER.name}), "
        f"{hp.AB.learning_rate} ({hp.AB.name}) (Adam, linear decay to 0); applications: "
        f"{hp.FULL_PRECISION_LEARNING_RATE}, or {hp.FINE_TUNE_LEARNING_RATE} from "
        "ImageNet weights, times batch_size / 256 (SGD, cosine decay to 0)",
        positive,
        group="training",
    ),
    Option(
        "weight_decay",
        float,
        None,
        "Adam's coupled L2 on kernels, gains and learnable biases (default the recipe's: "
        f"{hp.PAPER.weight_decay[1]} ({hp.PAPER.name}), {hp.AB.weight_decay[1]} ({hp.AB.name}) "
        f"in stage 1, 0 in stage 2; applications: SGD's weight decay "
        f"{hp.FULL_PRECISION_WEIGHT_DECAY} on kernels)",
        non_negative(),
        group="training",
    ),
    Option(
        "agc_clip",
        float,
        None,
        f"AGC clip factor; 0 disables AGC (default the recipe's: {hp.PAPER.agc_clip} "
        f"({hp.PAPER.name}); {hp.AB.agc_clip}, on ImageNet {hp.AB.imagenet_agc_clip} "
        f"({hp.AB.name}))",
        non_negative(" (0 disables AGC)"),
        group="training",
    ),
    Option(
        "loss",
        str,
        "ce",
        "ce, ls (label smoothing 0.1) or kd (needs --teacher)",
        one_of(lambda: hp.LOSSES),
        group="training",
    ),
    Option(
        "teacher",
        str,
        None,
        "--loss kd's teacher (default none): a saved Keras model (e.g. runs/<teacher "
        f"run>/model.keras) or a Keras application with ImageNet weights: {_applications}",
        group="training",
    ),
    Option(
        "init_from",
        str,
        None,
        "weights to start the first stage from (default none: a seeded initialization): "
        ".keras, .weights.h5, a TF checkpoint, or a PyTorch checkpoint .pth/.pth.tar/.pt "
        f"of the reference or ReActNet, or A&B BNN's *_step2.h5; `{IMAGENET}` for an "
        "application",
        group="model",
    ),
    Option(
        "seed",
        int,
        0,
        "seed of initialization, shuffling and augmentation",
        group="training",
    ),
    Option(
        "train_subset",
        int,
        None,
        "train on the first N examples only (default all)",
        positive_or_none,
        group="data",
    ),
    Option(
        "image_size",
        int,
        None,
        "resize images to this size (default the dataset's)",
        positive_or_none,
        group="data",
    ),
    Option(
        "stem",
        str,
        zoo.STEMS[0],
        f"first layers: {zoo.STEMS[0]} (the reference's; ReActNet-A's first convolution has "
        f"stride 2) or {zoo.STEMS[1]} (ReActNet-18: 3x3/1, no pool; ReActNet-A: stride 1)",
        one_of(lambda: zoo.STEMS),
        group="model",
    ),
    # Strings, not enums: a bad value is a one-line error with exit code 2 (absl rejects a
    # bad enum value itself, with exit code 1).
    Option(
        "strategy",
        str,
        "auto",
        f"tf.distribute strategy: {', '.join(STRATEGIES)}",
        one_of(lambda: STRATEGIES),
        group="distribution",
    ),
    Option(
        "mixed_precision",
        str,
        "float32",
        f"Keras dtype policy: {', '.join(MIXED_PRECISION)}",
        one_of(lambda: MIXED_PRECISION),
        group="distribution",
    ),
    Option(
        "jit_compile",
        bool,
        False,
        "compile the training step with XLA",
        group="distribution",
    ),
    Option(
        "export_tflite",
        bool,
        False,
        "also export a TFLite model (larq-compute-engine)",
        group="outputs",
    ),
    Option(
        "deterministic",
        bool,
        False,
        "bit-reproducible runs (same flags, same weights)",
        group="training",
    ),
    Option(
        "acceleration",
        str,
        acceleration.AUTO,
        "which exact reformulations run (larq_nobn.acceleration): exact (TensorFlow's "
        "kernels and ops, torch's Adam), fused, cpu_light, cpu (every CPU one, for CPUs "
        "with slow gradient kernels: benchmarks/conv_gradients.py says), or auto: "
        f"${acceleration.VARIABLE} if set, else fused with a GPU and cpu_light without. "
        "config.json records the resolved one; a resumed run keeps it",
        one_of(lambda: acceleration.CHOICES),
        group="distribution",
    ),
    Option(
        "verbose",
        int,
        1,
        "Keras progress: 0 silent, 1 bar, 2 a line per epoch",
        resume=False,
        group="outputs",
    ),
    Option(
        "checkpoint_every_steps",
        int,
        None,
        "also checkpoint every N steps inside an epoch (default: at the end of each epoch, "
        "and when a SIGTERM or SIGINT stops the run)",
        positive_or_none,
        resume=False,
        group="outputs",
    ),
    Option(
        "traceback",
        bool,
        False,
        "print an error's traceback before its one line (for debugging; or set "
        "LARQ_NOBN_TRACEBACK=1)",
        resume=False,
        group="outputs",
    ),
)
BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def define_flags(flag_values, command_options: Sequence[Option] = OPTIONS) -> None:
    """Defines one absl flag per option in `flag_values` (an `absl.flags.FlagValues`).

    Args:
        flag_values: Where to define them (`absl.flags.FLAGS` for the training program).
        command_options: The command's options: `OPTIONS` or `SPP_OPTIONS`.
    """
    from absl import flags

    define = {
        str: flags.DEFINE_string,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        bool: flags.DEFINE_bool,
        tuple: flags.DEFINE_list,
        list: flags.DEFINE_multi_string,
    }
    for option in command_options:
        define[option.type](option.name, option.default, option.help, flag_values=flag_values)


def from_flags(flag_values) -> dict[str, Any]:
    """The `Config` fields of parsed absl flags; raises ConfigError for a malformed list."""
    return {option.name: option.from_flag(flag_values[option.name].value) for option in OPTIONS}


def dataclass_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields of `config.Config`, for `dataclasses.make_dataclass`."""
    return [
        (option.name, option.annotation(), dataclasses.field(default=option.default))
        for option in OPTIONS
    ]


def to_json(config) -> dict[str, Any]:
    """config.json: every option's value."""
    return {option.name: option.to_json(getattr(config, option.name)) for option in OPTIONS}


def _absent(option: Option) -> Any:
    return option.default if option.absent is None else option.absent


def changed(saved: Mapping[str, Any], config) -> list[str]:
    """The options whose value in `config` differs from config.json's `saved`.

    A key `saved` lacks was written before its option existed: the run had its default
    (or the option's `absent` value).
    Options with `resume=False` (`verbose`) may differ; keys of no option count as changed.
    """
    current = to_json(config)
    names = [
        option.name
        for option in OPTIONS
        if option.resume
        and saved.get(option.name, option.to_json(_absent(option))) != current[option.name]
    ]
    return sorted(names + [key for key in saved if key not in BY_NAME])


# ----------------------------------------------------------------------------- larq-nobn-spp

#: The spp command's image size per backbone when no trained model fixes it.
SPP_IMAGE_SIZES: Mapping[str, int] = {"reactnet18": 32, "reactnet_a": 64}

SPP_OPTIONS: tuple[Option, ...] = (
    Option(
        "backbone",
        str,
        "reactnet18",
        f"zoo backbone: {', '.join(variants.SPP_BACKBONES)}",
        one_of(lambda: variants.SPP_BACKBONES),
        group="model",
    ),
    Option(
        "stage",
        int,
        1,
        "1 (binary activations), 2 (binary weights too)",
        one_of(lambda: zoo.STAGES),
        group="model",
    ),
    Option("seed", int, 0, "seed of the three variants' initialization", group="model"),
    Option(
        "trained",
        list,
        None,
        "a trained model of the backbone and --stage, VARIANT=PATH (e.g. "
        "nobn=runs/x/stage1/model.keras), drawn dashed",
        group="model",
    ),
    BY_NAME["dataset"],  # the training program's, as it is
    BY_NAME["data_dir"],
    Option(
        "image_size",
        int,
        None,
        "image side (default "
        + ", ".join(f"{size} for {name}" for name, size in SPP_IMAGE_SIZES.items())
        + "; a trained model's own)",
        positive_or_none,
        group="data",
    ),
    Option("images", int, 64, "the batch: the first N test images", positive, group="data"),
    Option("out", str, None, "the PNG to write (required; no default)", required, group="outputs"),
)


# ----------------------------------------------------------------------------- help, parsing

HELP_ARGUMENTS = ("--help", "-h", "-?", "--helpshort")
FULL_HELP_ARGUMENTS = ("--helpfull",)


def requested_help(argv: Sequence[str]) -> str | None:
    """ "short" (`--help`, `-h`, `-?`, `--helpshort`), "full" (`--helpfull`) or None.

    Args:
        argv: The arguments without the program's name; a `--` ends the flags.
    """
    for argument in argv:
        if argument == "--":
            break
        if argument in FULL_HELP_ARGUMENTS:
            return "full"
        if argument in HELP_ARGUMENTS:
            return "short"
    return None


def help_text(
    command: str,
    summary: str,
    command_options: Sequence[Option],
    flag_values=None,
    full: bool = False,
) -> str:
    """A command's `--help`: its options by group, each with its default and help.

    Args:
        command: The command's name, for the usage line.
        summary: What the command does (its module's docstring).
        command_options: The command's options (`OPTIONS`, `SPP_OPTIONS`).
        flag_values: The `absl.flags.FlagValues` the command parses; with `full`, its other
            flags (absl's own: logging, help) follow, in absl's format.
        full: `--helpfull`'s text.

    Returns:
        The text, ending with a newline.
    """
    width = 100
    lines = [f"usage: {command} [flags]", "", summary.strip(), ""]
    for group, title in GROUPS.items():
        members = [option for option in command_options if option.group == group]
        if not members:
            continue
        lines.append(f"{group}: {title}")
        for option in members:
            flag = f"  {option.usage()}"
            column = 26
            wrapped = textwrap.wrap(
                option.help_line(),
                width - column - 2,
                break_long_words=False,
                break_on_hyphens=False,
            )
            if len(flag) < column:
                lines.append(f"{flag:<{column}}  {wrapped[0]}")
                wrapped = wrapped[1:]
            else:
                lines.append(flag)
            lines += [" " * (column + 2) + text for text in wrapped]
        lines.append("")
    if flag_values is None:
        return "\n".join(lines) + "\n"
    own = {option.name for option in command_options}
    others = {
        module: flags
        for module, flags in flag_values.flags_by_module_dict().items()
        if not own.issuperset(flag.name for flag in flags)
    }
    if not full:
        if others:
            lines.append("--helpfull lists absl's own flags too (logging, flag files).")
        return "\n".join(lines) + "\n"
    from absl import flags

    lines.append("absl's own flags:")
    lines += [flag_values.module_help(module) for module in sorted(others)]
    lines.append(flags.FlagValues().get_help())  # --flagfile and --undefok
    return "\n".join(lines) + "\n"


def exit_if_help_requested(
    command: str,
    summary: str,
    command_options: Sequence[Option],
    argv: Sequence[str],
    flag_values=None,
) -> None:
    """Prints the help and exits with code 0 if `argv` asks for it (see `requested_help`).

    Args and the text: as for `help_text`; `argv` without the program's name.
    """
    if kind := requested_help(argv):
        text = help_text(command, summary, command_options, flag_values, full=kind == "full")
        sys.stdout.write(text)
        raise SystemExit(0)


def parse(
    command: str, command_options: Sequence[Option], argv: Sequence[str], flag_values
) -> dict[str, Any]:
    """The checked values of a command's options, parsed by absl from `argv`.

    Args:
        command: The command's name (absl's program name).
        command_options: The options defined in `flag_values` (`define_flags`).
        argv: The arguments without the program's name.
        flag_values: The command's `absl.flags.FlagValues`.

    Returns:
        {option name: value} (a repeatable option's values as a tuple).

    Raises:
        ConfigError: an unknown or malformed flag, a positional argument, or a value its
            option's check refuses (one line).
    """
    from absl import flags

    flag_values.unparse_flags()
    try:
        rest = flag_values([command, *argv])
    except flags.Error as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    if rest[1:]:
        raise ConfigError(f"unexpected arguments: {' '.join(rest[1:])}")
    values = {
        option.name: option.from_flag(flag_values[option.name].value) for option in command_options
    }
    for option in command_options:
        if problem := option.problem(values[option.name]):
            raise ConfigError(problem)
    return values
