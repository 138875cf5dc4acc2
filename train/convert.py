"""`larq-nobn-convert`: a PyTorch checkpoint of a zoo model as a Keras model, and optionally
as a TFLite flatbuffer for larq-compute-engine.

    larq-nobn-convert cifar10_reactnet18_step2.h5 --out model.keras --tflite model.tflite

The checkpoint is A&B BNN's released `*_step2.h5` (a `torch.save` state dict), or the
reference's or ReActNet's `.pth.tar`; its tensors say the model (`zoo.from_torch`): backbone,
design, number of classes and stem. The stage cannot be read (`--stage`, 2 by default: binary
weights, A&B's `step2`). The model takes 32x32 images unless it has ImageNet's 1000 classes
(224x224), and pads as PyTorch does, so its logits are the checkpoint's.

Every error is one line on stderr, exit code 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# isort: split
# Flags and files are checked before TensorFlow is imported (`larq_nobn` first: Keras 2).
from absl import flags  # noqa: E402

from larq_nobn import zoo  # noqa: E402
from larq_nobn.train import process  # noqa: E402
from larq_nobn.train.options import (  # noqa: E402
    Check,
    ConfigError,
    Option,
    define_flags,
    exit_if_help_requested,
    one_of,
    positive_or_none,
)

PROGRAM = "larq-nobn-convert"
IMAGENET_CLASSES = 1000
SIZES = {"cifar": 32, "imagenet": 224}  # default input sides, by the classes' dataset


def _unless_none(check: Check) -> Check:
    """`check`, for a value that is not None (None: the checkpoint says)."""
    return lambda name, value: None if value is None else check(name, value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "out",
        str,
        None,
        "the .keras file to write (default: the checkpoint's name with .keras, here)",
        group="outputs",
    ),
    Option(
        "tflite",
        str,
        None,
        "also write a TFLite flatbuffer (larq-compute-engine) here (default none)",
        group="outputs",
    ),
    Option(
        "model",
        str,
        None,
        "zoo model, instead of the one the checkpoint's tensors say (default theirs)",
        _unless_none(one_of(zoo.MODELS.names)),
        group="model",
    ),
    Option(
        "stem",
        str,
        None,
        f"first layers, {' or '.join(zoo.STEMS)} (default what the checkpoint says; A&B's "
        "ReActNet-A: cifar unless it has 1000 classes)",
        _unless_none(one_of(lambda: zoo.STEMS)),
        group="model",
    ),
    Option(
        "stage",
        int,
        2,
        "1: real weights (A&B's *_step1, the reference's Qa_*); 2: binary weights (*_step2, Qaw_*)",
        lambda name, value: (
            None if value in zoo.STAGES else f"--{name} must be 1 or 2, got {value}"
        ),
        group="model",
    ),
    Option(
        "input_size",
        int,
        None,
        f"input height and width (default {SIZES['imagenet']} for {IMAGENET_CLASSES} classes, "
        f"else {SIZES['cifar']})",
        positive_or_none,
        group="data",
    ),
)
FLAGS = flags.FlagValues()  # this command's own: no clash with larq-nobn-train's --model
define_flags(FLAGS, OPTIONS)


SUMMARY = (
    "A PyTorch checkpoint of a zoo model (A&B BNN's released *_step2.h5, the reference's or "
    "ReActNet's .pth.tar) as a Keras model, and optionally a TFLite flatbuffer."
)


def arguments(argv: Sequence[str]) -> tuple[str, dict]:
    """(checkpoint, options) of the command line; raises ConfigError."""
    try:
        positional = FLAGS(list(argv))[1:]
        values = {option.name: FLAGS[option.name].value for option in OPTIONS}
    except flags.Error as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    finally:
        FLAGS.unparse_flags()  # parsed afresh by the next call (tests run several)
    for option in OPTIONS:
        problem = option.problem(values[option.name])
        if problem:
            raise ConfigError(problem)
    if len(positional) != 1:
        got = f"got {' '.join(positional)}" if positional else "got none"
        raise ConfigError(f"{PROGRAM} takes one checkpoint file, {got}")
    checkpoint = positional[0]
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"no such file: {checkpoint}")
    out = values["out"] or os.path.splitext(os.path.basename(checkpoint))[0] + ".keras"
    if not out.endswith(".keras"):
        raise ConfigError(f"--out must name a .keras file, got {out}")
    values["out"] = out
    return checkpoint, values


def _require(module: str, what: str, extra: str) -> None:
    """Imports `module`, or raises ConfigError saying which extra installs it."""
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module}: pip install 'larq-nobn[{extra}]'") from None


def convert(
    checkpoint: str,
    out: str,
    tflite: str | None = None,
    model: str | None = None,
    stem: str | None = None,
    stage: int = 2,
    input_size: int | None = None,
):
    """Writes the Keras model (and the flatbuffer) of a PyTorch checkpoint.

    Args:
        checkpoint: the `torch.save` file.
        out: the `.keras` file to write.
        tflite: the flatbuffer to write, or None.
        model: a registry name overriding the checkpoint's (`zoo.from_torch`).
        stem: a stem overriding the checkpoint's.
        stage: 1 (real weights) or 2 (binary weights).
        input_size: the input's height and width; by default 224 for 1000 classes, else 32.

    Returns:
        The loaded `tf.keras.Model`.

    Raises:
        ConfigError: one line, for a file that is not a checkpoint of a zoo model, or an
            input size the model does not take.
    """
    from larq_nobn.zoo import torch_weights

    try:
        state = torch_weights.read_state_dict(checkpoint)
        try:
            found = torch_weights.describe(state)
        except torch_weights.TorchWeightsError as error:
            raise ConfigError(f"{checkpoint} holds {error}") from None
        classes = found.get("num_classes", IMAGENET_CLASSES)
        size = input_size or SIZES["imagenet" if classes == IMAGENET_CLASSES else "cifar"]
        keras_model = zoo.from_torch(
            checkpoint,
            model,
            stage=stage,
            input_shape=(size, size, 3),
            **({"stem": stem} if stem else {}),
        )
    except ValueError as error:  # TorchWeightsError, a size the model does not take, ...
        raise ConfigError(str(error).strip().splitlines()[0]) from None
    keras_model.save(out)
    print(
        f"{checkpoint}: {keras_model.name}, stage {stage}, {keras_model.output_shape[-1]} "
        f"classes, input {size}x{size}x3 -> {out}"
    )
    if tflite:
        from larq_nobn import export

        try:
            flatbuffer = export.convert(keras_model)
        except ValueError as error:
            raise ConfigError(f"--tflite: {str(error).strip().splitlines()[0]}") from None
        with open(tflite, "wb") as file:
            file.write(flatbuffer)
        print(f"{tflite}: TFLite flatbuffer (larq-compute-engine)")
    if torch_weights.design_of(keras_model) == "ab":
        print(
            "Inputs: RGB in [0, 1] normalized with ImageNet's mean (0.485, 0.456, 0.406) and "
            "std (0.229, 0.224, 0.225), as A&B BNN trained it (CIFAR too)"
        )
    return keras_model


def main(argv: Sequence[str]) -> int:
    """The command; the exit code (2 for bad input, one line on stderr)."""
    exit_if_help_requested(f"{PROGRAM} CHECKPOINT", SUMMARY, OPTIONS, argv[1:], FLAGS)
    try:
        checkpoint, values = arguments(argv)
        # TensorFlow's start-up noise filtered; what else it writes is written afterwards.
        with process.tensorflow_noise_filtered():
            _require("torch", "Reading PyTorch checkpoints", "torch")
            if values["tflite"]:
                _require("larq_compute_engine", "--tflite", "lce")
            convert(checkpoint, **values)
    except (ConfigError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """The `larq-nobn-convert` command (also `python -m larq_nobn.train.convert`)."""
    raise SystemExit(main(sys.argv))


if __name__ == "__main__":
    run()
