"""Trains a larq-nobn zoo model with the recipe of "BNN - BN = ?".

    larq-nobn-train --model reactnet_nobn            # offline, on the embedded digits
    larq-nobn-train --model reactnet18_nobn --dataset cifar10 --loss kd --teacher T
    larq-nobn-train --model resnet50 --dataset cifar10       # a full-precision teacher

The same program: `python -m larq_nobn.train`, or `python train/main.py` in a checkout.

See the README for the paper's full commands.
"""

import contextlib
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging as absl_logging  # noqa: E402

import larq_nobn  # noqa: E402,F401  (Keras 2 before TensorFlow)

# isort: split
from absl import app, flags  # noqa: E402

from larq_nobn import quiet, zoo  # noqa: E402
from larq_nobn.train import data, recipe, teachers  # noqa: E402
from larq_nobn.train.config import MIXED_PRECISION, STRATEGIES, Config, ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model",
    "reactnet_nobn",
    f"zoo model: {', '.join(zoo.MODEL_NAMES)}; or a full-precision Keras application "
    f"(a teacher): {', '.join(teachers.APPLICATION_NAMES)}",
)
flags.DEFINE_string("dataset", "digits", f"dataset: {', '.join(data.DATASET_NAMES)}")
flags.DEFINE_string("model_dir", None, "output directory (default runs/<model>_<dataset>)")
flags.DEFINE_string("data_dir", None, "TFDS data dir, or the Fashion-MNIST IDX directory")
flags.DEFINE_list(
    "stages", None, "1 (binary activations), 2 (binary weights too); default 1,2 (applications: 1)"
)
flags.DEFINE_integer("epochs", None, "epochs per stage (default per dataset; 256 for the paper)")
flags.DEFINE_integer("batch_size", None, "global batch size (default per dataset; 256)")
flags.DEFINE_float(
    "learning_rate",
    None,
    f"default {recipe.LEARNING_RATE} (Adam, linear decay to 0); applications: "
    f"{recipe.FULL_PRECISION_LEARNING_RATE}, or {recipe.FINE_TUNE_LEARNING_RATE} from ImageNet "
    "weights, times batch_size / 256 (SGD, cosine decay to 0)",
)
flags.DEFINE_float(
    "weight_decay",
    None,
    "Adam's coupled L2 on kernels, gains and learnable biases (default 1e-5 stage 1, 0 stage 2;"
    f" applications: SGD's weight decay {recipe.FULL_PRECISION_WEIGHT_DECAY} on kernels)",
)
flags.DEFINE_float("agc_clip", recipe.AGC_CLIP, "AGC clip factor; 0 disables AGC")
flags.DEFINE_string("loss", "ce", "ce, ls (label smoothing 0.1) or kd (needs --teacher)")
flags.DEFINE_string(
    "teacher",
    None,
    "--loss kd's teacher: a saved Keras model (e.g. runs/<teacher run>/model.keras) or a Keras "
    f"application with ImageNet weights: {', '.join(teachers.APPLICATION_NAMES)}",
)
flags.DEFINE_string(
    "init_from",
    None,
    "weights to start the first stage from (.keras, .weights.h5, a TF checkpoint, or a PyTorch "
    "checkpoint .pth/.pth.tar/.pt of the reference or ReActNet); `imagenet` for an application",
)
flags.DEFINE_integer("seed", 0, "seed of initialization, shuffling and augmentation")
flags.DEFINE_integer("train_subset", None, "train on the first N examples only")
flags.DEFINE_integer("image_size", None, "resize images to this size")
flags.DEFINE_string("stem", "imagenet", "ReActNet-18 stem: imagenet (the reference's) or cifar")
# Strings, not enums: Config checks them, so a bad value is a one-line error with exit code 2
# (absl rejects a bad enum value itself, with exit code 1).
flags.DEFINE_string("strategy", "auto", f"tf.distribute strategy: {', '.join(STRATEGIES)}")
flags.DEFINE_string(
    "mixed_precision", "float32", f"Keras dtype policy: {', '.join(MIXED_PRECISION)}"
)
flags.DEFINE_bool("jit_compile", False, "compile the training step with XLA")
flags.DEFINE_bool("export_tflite", False, "also export a TFLite model (larq-compute-engine)")
flags.DEFINE_bool("deterministic", False, "bit-reproducible runs (same flags, same weights)")
flags.DEFINE_integer("verbose", 1, "Keras progress: 0 silent, 1 bar, 2 a line per epoch")


def config_from_flags() -> Config:
    try:
        stages = None if FLAGS.stages is None else tuple(int(s) for s in FLAGS.stages)
    except ValueError:
        raise ConfigError(f"--stages must be 1, 2 or 1,2, got {','.join(FLAGS.stages)}") from None
    return Config(
        model=FLAGS.model,
        dataset=FLAGS.dataset,
        model_dir=FLAGS.model_dir,
        data_dir=FLAGS.data_dir,
        stages=stages,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        weight_decay=FLAGS.weight_decay,
        agc_clip=FLAGS.agc_clip,
        loss=FLAGS.loss,
        teacher=FLAGS.teacher,
        init_from=FLAGS.init_from,
        seed=FLAGS.seed,
        train_subset=FLAGS.train_subset,
        image_size=FLAGS.image_size,
        stem=FLAGS.stem,
        strategy=FLAGS.strategy,
        mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        export_tflite=FLAGS.export_tflite,
        verbose=FLAGS.verbose,
    ).resolved()


def main(argv: list[str], **run_options) -> int:
    """The program: `run_options` go to `runner.Run` (extra callbacks, e.g. a test's)."""
    if len(argv) > 1:
        return fail(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    absl_logging.set_verbosity(absl_logging.WARNING)
    from larq_nobn.train.runner import Run, TrainingError

    try:
        # Set-up without TensorFlow's noise (cuInit on CPU machines, CPU features, ...);
        # everything else it writes, and errors, still show.
        with quiet.tensorflow_noise_filtered():
            config = config_from_flags()
            tf.keras.utils.set_random_seed(config.seed)
            if FLAGS.deterministic:
                make_deterministic()
            program = Run(config, **run_options)
        program.run()
    except (ConfigError, data.DatasetError) as error:
        return fail(str(error))
    except TrainingError as error:
        return fail(str(error), code=1)
    return 0


def make_deterministic() -> None:
    """Same seed and flags, same weights, bit for bit, in any process.

    Op determinism alone is not enough on CPUs: Grappler's arithmetic optimizer rewrites
    gradient sums (where residual branches join) into forms whose float additions happen
    in the order inter-op threads finish.
    """
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": False})


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(**run_options) -> None:
    """The `larq-nobn-train` command; `run_options` as for `main`."""
    # absl's start-up (its init callbacks) initializes TensorFlow's devices: on a CPU
    # machine, cuInit's error. Filtered until `main` starts; from there output is live.
    with contextlib.ExitStack() as startup:
        startup.enter_context(quiet.tensorflow_noise_filtered())

        def main_after_startup(argv: list[str]) -> int:
            startup.close()
            return main(argv, **run_options)

        app.run(main_after_startup)


if __name__ == "__main__":
    run()
