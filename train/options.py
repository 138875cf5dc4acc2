"""The training program's options, each written once: name, type, default, help, check.

`OPTIONS` is the one definition. From it come the absl flags (`define_flags`), the fields
of `config.Config` (`dataclass_fields`), `config.json` (`to_json`) and the check that a
rerun of an unfinished run has its flags (`changed`). Names are checked against the
registries (`zoo.MODELS`, `catalog.APPLICATIONS`, `catalog.DATASETS`), so that every check
here runs before TensorFlow is imported: this module imports none of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from larq_nobn import zoo
from larq_nobn.registry import unknown_name_message
from larq_nobn.train import catalog
from larq_nobn.train import hyperparameters as hp

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
MIXED_PRECISION = ("float32", "mixed_float16", "mixed_bfloat16")
# --init_from value that starts a Keras application from its published ImageNet weights.
IMAGENET = "imagenet"


class ConfigError(ValueError):
    """A bad flag or flag combination (one user-facing line)."""


# A check takes the option's name and value and returns what is wrong, or None.
Check = Callable[[str, Any], "str | None"]


def one_of(names: Callable[[], Sequence[str]]) -> Check:
    """The value must be one of `names()` (the message of an unknown name lists them)."""

    def check(name: str, value: Any) -> str | None:
        if value not in names():
            return unknown_name_message(f"--{name}", value, names())
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


def stages(name: str, value: Any) -> str | None:
    """A non-empty selection of the zoo's stages."""
    if not value or any(stage not in zoo.STAGES for stage in value):
        return f"--{name} must be 1, 2 or 1,2, got {value}"
    return None


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of the training program: its flag, its `Config` field, its config.json key.

    Args:
        name: The flag's and the field's name.
        type: `str`, `int`, `float`, `bool`, or `tuple` (a comma-separated list of integers).
        default: The flag's and the field's default (None: resolved by `Config.resolved`).
        help: The flag's help.
        check: What the resolved value must be (`one_of`, `positive`, ...); None: anything.
        resume: Whether an unfinished run resumes only with the same value (config.json).
    """

    name: str
    type: type
    default: Any
    help: str
    check: Check | None = None
    resume: bool = True

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None."""
        return None if self.check is None else self.check(self.name, value)

    def from_flag(self, value: Any) -> Any:
        """The field's value of the flag's (a list flag's strings become integers)."""
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
        kind = tuple[int, ...] if self.type is tuple else self.type
        return kind if self.default is not None else kind | None


_applications = ", ".join(catalog.APPLICATIONS.names())

OPTIONS: tuple[Option, ...] = (
    Option(
        "model",
        str,
        "reactnet_nobn",
        f"zoo model: {', '.join(zoo.MODELS.names())}; or a full-precision Keras application "
        f"(a teacher): {_applications}",
        one_of(lambda: (*zoo.MODELS.names(), *catalog.APPLICATIONS.names())),
    ),
    Option(
        "dataset",
        str,
        "digits",
        f"dataset: {', '.join(catalog.DATASETS.names())}",
        one_of(catalog.DATASETS.names),
    ),
    Option("model_dir", str, None, "output directory (default runs/<model>_<dataset>)"),
    Option("data_dir", str, None, "TFDS data dir, or the Fashion-MNIST IDX directory"),
    Option(
        "stages",
        tuple,
        None,
        "1 (binary activations), 2 (binary weights too); default 1,2 (applications: 1)",
        stages,
    ),
    Option(
        "epochs",
        int,
        None,
        "epochs per stage (default per dataset; 256 for the paper)",
        positive,
    ),
    Option("batch_size", int, None, "global batch size (default per dataset; 256)", positive),
    Option(
        "learning_rate",
        float,
        None,
        f"default {hp.LEARNING_RATE} (Adam, linear decay to 0); applications: "
        f"{hp.FULL_PRECISION_LEARNING_RATE}, or {hp.FINE_TUNE_LEARNING_RATE} from "
        "ImageNet weights, times batch_size / 256 (SGD, cosine decay to 0)",
        positive,
    ),
    Option(
        "weight_decay",
        float,
        None,
        "Adam's coupled L2 on kernels, gains and learnable biases (default 1e-5 stage 1, 0 "
        f"stage 2; applications: SGD's weight decay {hp.FULL_PRECISION_WEIGHT_DECAY} on "
        "kernels)",
        non_negative(),
    ),
    Option(
        "agc_clip",
        float,
        hp.AGC_CLIP,
        "AGC clip factor; 0 disables AGC",
        non_negative(" (0 disables AGC)"),
    ),
    Option(
        "loss",
        str,
        "ce",
        "ce, ls (label smoothing 0.1) or kd (needs --teacher)",
        one_of(lambda: hp.LOSSES),
    ),
    Option(
        "teacher",
        str,
        None,
        "--loss kd's teacher: a saved Keras model (e.g. runs/<teacher run>/model.keras) or a "
        f"Keras application with ImageNet weights: {_applications}",
    ),
    Option(
        "init_from",
        str,
        None,
        "weights to start the first stage from (.keras, .weights.h5, a TF checkpoint, or a "
        "PyTorch checkpoint .pth/.pth.tar/.pt of the reference or ReActNet); "
        f"`{IMAGENET}` for an application",
    ),
    Option("seed", int, 0, "seed of initialization, shuffling and augmentation"),
    Option("train_subset", int, None, "train on the first N examples only", positive_or_none),
    Option("image_size", int, None, "resize images to this size", positive_or_none),
    Option(
        "stem",
        str,
        zoo.STEMS[0],
        f"ReActNet-18 stem: {zoo.STEMS[0]} (the reference's) or {zoo.STEMS[1]}",
        one_of(lambda: zoo.STEMS),
    ),
    # Strings, not enums: a bad value is a one-line error with exit code 2 (absl rejects a
    # bad enum value itself, with exit code 1).
    Option(
        "strategy",
        str,
        "auto",
        f"tf.distribute strategy: {', '.join(STRATEGIES)}",
        one_of(lambda: STRATEGIES),
    ),
    Option(
        "mixed_precision",
        str,
        "float32",
        f"Keras dtype policy: {', '.join(MIXED_PRECISION)}",
        one_of(lambda: MIXED_PRECISION),
    ),
    Option("jit_compile", bool, False, "compile the training step with XLA"),
    Option("export_tflite", bool, False, "also export a TFLite model (larq-compute-engine)"),
    Option("deterministic", bool, False, "bit-reproducible runs (same flags, same weights)"),
    Option(
        "verbose",
        int,
        1,
        "Keras progress: 0 silent, 1 bar, 2 a line per epoch",
        resume=False,
    ),
    Option(
        "checkpoint_every_steps",
        int,
        None,
        "also checkpoint every N steps inside an epoch (default: at the end of each epoch, "
        "and when a SIGTERM or SIGINT stops the run)",
        positive_or_none,
        resume=False,
    ),
    Option(
        "traceback",
        bool,
        False,
        "print an error's traceback before its one line (for debugging; or set "
        "LARQ_NOBN_TRACEBACK=1)",
        resume=False,
    ),
)
BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def define_flags(flag_values) -> None:
    """Defines one absl flag per option in `flag_values` (an `absl.flags.FlagValues`)."""
    from absl import flags

    define = {
        str: flags.DEFINE_string,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
        bool: flags.DEFINE_bool,
        tuple: flags.DEFINE_list,
    }
    for option in OPTIONS:
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


def changed(saved: Mapping[str, Any], config) -> list[str]:
    """The options whose value in `config` differs from config.json's `saved`.

    A key `saved` lacks was written before its option existed: the run had its default.
    Options with `resume=False` (`verbose`) may differ; keys of no option count as changed.
    """
    current = to_json(config)
    names = [
        option.name
        for option in OPTIONS
        if option.resume
        and saved.get(option.name, option.to_json(option.default)) != current[option.name]
    ]
    return sorted(names + [key for key in saved if key not in BY_NAME])
