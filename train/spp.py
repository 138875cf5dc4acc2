"""The signal propagation plot of a zoo backbone: bn, nobn and none side by side.

```
larq-nobn-spp --backbone reactnet18 --dataset digits \\
    --out docs/signal_propagation_reactnet18.png
```
(or `python -m larq_nobn.train.spp ...`) builds the three variants at initialization with
a fixed seed, runs them on a batch of test images and writes one PNG;
`--trained nobn=runs/<run>/stage1/model.keras` (repeatable, one per variant) adds trained
models of that backbone and stage as dashed lines.
"""

import argparse
from collections.abc import Sequence

import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.spp import BlockStatistics, signal_propagation
from larq_nobn.spp_plot import STATISTICS, plot_signal_propagation
from larq_nobn.train import data
from larq_nobn.zoo import blocks
from larq_nobn.zoo.spp import BACKBONES

DEFAULT_IMAGE_SIZE = {"reactnet18": 32, "reactnet_a": 64}


def _trained_models(specs: Sequence[str], backbone: str) -> dict[str, tf.keras.Model]:
    """`VARIANT=PATH` arguments: the saved zoo models, checked to be of `backbone`."""
    models = {}
    for spec in specs:
        variant, _, path = spec.partition("=")
        if variant not in blocks.NORMS or not path:
            raise SystemExit(f"--trained takes VARIANT=PATH with VARIANT in {blocks.NORMS}: {spec}")
        model = tf.keras.models.load_model(path, compile=False)
        if model.name != f"{backbone}_{variant}":
            raise SystemExit(f"--trained {spec}: a {model.name} model, not {backbone}_{variant}")
        models[variant] = model
    return models


def _measured(label: str, model: tf.keras.Model, images) -> list[BlockStatistics]:
    """`signal_propagation` in training mode, each block printed as a line after `label`."""
    layers = zoo.signal_propagation_layers(model)
    statistics = signal_propagation(model, images, training=True, **layers)
    for block in statistics:
        print(label, block.name, *(f"{getattr(block, f):.4g}" for f, _ in STATISTICS))
    return statistics


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="larq-nobn-spp",
        description="Signal propagation plot of a zoo backbone's variants at initialization.",
    )
    parser.add_argument("--backbone", choices=BACKBONES, default="reactnet18")
    parser.add_argument("--dataset", choices=data.DATASET_NAMES, default="digits")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, help="32 (reactnet18, cifar stem), 64 (A)")
    parser.add_argument("--images", type=int, default=64, help="the batch: first test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", type=int, choices=blocks.STAGES, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--trained",
        action="append",
        default=[],
        metavar="VARIANT=PATH",
        help="a trained model of the backbone and --stage, e.g. nobn=runs/x/stage1/model.keras",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: the three variants of a backbone at initialization (and trained
    models given with --trained), one PNG.

    Args:
        argv: the arguments without the program's name; `None` for `sys.argv[1:]`.
    """
    args = _parser().parse_args(argv)
    trained = _trained_models(args.trained, args.backbone)
    size = args.image_size or DEFAULT_IMAGE_SIZE[args.backbone]
    stem = "cifar"
    for model in trained.values():  # the trained models fix the image size and stem
        size = model.input_shape[1]
        layer_names = {layer.name for layer in model.layers}
        stem = "imagenet" if "pool_first" in layer_names else "cifar"
    _, test, info = data.load(
        args.dataset, global_batch_size=args.images, image_size=size, data_dir=args.data_dir
    )
    images = next(iter(test))[0]
    statistics = {}
    for norm in blocks.NORMS:
        tf.keras.utils.set_random_seed(args.seed)
        model = zoo.get_model(
            f"{args.backbone}_{norm}",
            stage=args.stage,
            input_shape=(size, size, 3),
            num_classes=info.num_classes,
            **({"stem": stem} if args.backbone == "reactnet18" else {}),
        )
        statistics[norm] = _measured(norm, model, images)
    trained_statistics = {
        variant: _measured(f"{variant}(trained)", model, images)
        for variant, model in trained.items()
    }
    title = (
        f"{args.backbone}, stage {args.stage}, at initialization (seed {args.seed})"
        f"{' and trained (dashed)' if trained else ''}: "
        f"{len(images)} {args.dataset} test images, {size}x{size}, training-mode forward pass"
    )
    plot_signal_propagation(
        statistics,
        args.out,
        trained=trained_statistics,
        title=title,
        transitions=zoo.transition_blocks(args.backbone),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
