"""The signal propagation plot of a zoo backbone: bn, nobn and none side by side.

    larq-nobn-spp --backbone reactnet18 --dataset digits --out spp_reactnet18.png

(or `python -m larq_nobn.train.spp ...`) builds the three variants at initialization with
a fixed seed, runs them on a batch of test images and writes one PNG;
`--trained nobn=runs/<run>/stage1/model.keras` (repeatable, one per variant) adds trained
models of that backbone and stage as dashed lines.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from absl import flags

from larq_nobn.train import options, process
from larq_nobn.train.options import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

    from larq_nobn.spp import BlockStatistics

COMMAND = "larq-nobn-spp"
# Its own flags, apart from absl's global ones (which the training program's share names
# with these: both may be imported in one process).
FLAGS = flags.FlagValues()
options.define_flags(FLAGS, options.SPP_OPTIONS)


def _trained_models(specs: Sequence[str], backbone: str) -> dict[str, tf.keras.Model]:
    """`VARIANT=PATH` arguments: the saved zoo models, checked to be of `backbone`."""
    import tensorflow as tf

    from larq_nobn.zoo import variants

    models = {}
    for spec in specs:
        variant, _, path = spec.partition("=")
        if variant not in variants.NORMS or not path:
            raise ConfigError(
                f"--trained takes VARIANT=PATH with VARIANT in {variants.NORMS}: {spec}"
            )
        model = tf.keras.models.load_model(path, compile=False)
        if model.name != f"{backbone}_{variant}":
            raise ConfigError(f"--trained {spec}: a {model.name} model, not {backbone}_{variant}")
        models[variant] = model
    return models


def _measured(label: str, model: tf.keras.Model, images) -> list[BlockStatistics]:
    """`signal_propagation` in training mode, each block printed as a line after `label`."""
    from larq_nobn import zoo
    from larq_nobn.spp import signal_propagation
    from larq_nobn.spp_plot import STATISTICS

    layers = zoo.signal_propagation_layers(model)
    statistics = signal_propagation(model, images, training=True, **layers)
    for block in statistics:
        print(label, block.name, *(f"{getattr(block, f):.4g}" for f, _ in STATISTICS))
    return statistics


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: the three variants of a backbone at initialization (and trained
    models given with --trained), one PNG.

    Args:
        argv: the arguments without the program's name; `None` for `sys.argv[1:]`.

    Returns:
        The exit code: 0, or 2 after one `error:` line for bad input.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    options.exit_if_help_requested(COMMAND, __doc__, options.SPP_OPTIONS, argv, FLAGS)
    try:  # the flags are checked before TensorFlow is imported
        values = options.parse(COMMAND, options.SPP_OPTIONS, argv, FLAGS)
        # TensorFlow's start-up lines (CUDA plugins, cuInit, CPU features) filtered out;
        # everything else it writes, and errors, still show.
        with process.tensorflow_noise_filtered():
            plot(**values)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def plot(
    backbone: str,
    stage: int,
    seed: int,
    trained: Sequence[str],
    dataset: str,
    data_dir: str | None,
    image_size: int | None,
    images: int,
    out: str,
) -> None:
    """Measures and draws the variants; the arguments are `options.SPP_OPTIONS`'.

    Raises:
        ConfigError: a --trained model that is not of the backbone, or data not found.
    """
    import tensorflow as tf

    from larq_nobn import zoo
    from larq_nobn.spp_plot import plot_signal_propagation
    from larq_nobn.train import data

    trained_models = _trained_models(trained, backbone)
    size = image_size or options.SPP_IMAGE_SIZES[backbone]
    stem = "cifar"
    for model in trained_models.values():  # the trained models fix the image size and stem
        size = model.input_shape[1]
        layer_names = {layer.name for layer in model.layers}
        stem = "imagenet" if "pool_first" in layer_names else "cifar"
    try:
        _, test, info = data.load(
            dataset, global_batch_size=images, image_size=size, data_dir=data_dir
        )
    except data.DatasetError as error:
        raise ConfigError(str(error)) from None
    batch = next(iter(test))[0]
    statistics = {}
    for norm in zoo.NORMS:
        tf.keras.utils.set_random_seed(seed)
        model = zoo.get_model(
            f"{backbone}_{norm}",
            stage=stage,
            input_shape=(size, size, 3),
            num_classes=info.num_classes,
            **({"stem": stem} if backbone == "reactnet18" else {}),
        )
        statistics[norm] = _measured(norm, model, batch)
    trained_statistics = {
        variant: _measured(f"{variant}(trained)", model, batch)
        for variant, model in trained_models.items()
    }
    title = (
        f"{backbone}, stage {stage}, at initialization (seed {seed})"
        f"{' and trained (dashed)' if trained_models else ''}: "
        f"{len(batch)} {dataset} test images, {size}x{size}, training-mode forward pass"
    )
    plot_signal_propagation(
        statistics,
        out,
        trained=trained_statistics,
        title=title,
        transitions=zoo.transition_blocks(backbone),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
