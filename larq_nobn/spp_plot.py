"""Signal propagation plots: bn, nobn and none side by side, at initialization and trained.

```
python -m larq_nobn.spp_plot --backbone reactnet18 --dataset digits \\
    --out docs/signal_propagation_reactnet18.png
```
builds the three variants at initialization with a fixed seed, runs them on a batch of test
images and writes one PNG; `--trained nobn=runs/<run>/stage1/model.keras` (repeatable, one
per variant) adds trained models of that backbone and stage as dashed lines.
matplotlib is imported when a plot is drawn, not before.
"""

import argparse
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.spp import BlockStatistics, signal_propagation
from larq_nobn.zoo import blocks, reactnet18, reactnet_a

STATISTICS = (
    ("squared_mean", "average channel squared mean"),
    ("variance", "average channel variance"),
    ("residual_variance", "residual branch: average channel variance"),
)
COLORS = {"bn": "tab:blue", "nobn": "tab:green", "none": "tab:red"}
BACKBONES = ("reactnet18", "reactnet_a")
DEFAULT_IMAGE_SIZE = {"reactnet18": 32, "reactnet_a": 64}


def plot_signal_propagation(
    statistics: Mapping[str, Sequence[BlockStatistics]],
    path: str | os.PathLike,
    *,
    trained: Mapping[str, Sequence[BlockStatistics]] | None = None,
    title: str = "Signal propagation",
    transitions: Sequence[str] = (),
) -> None:
    """Writes a PNG with one panel per statistic and one line per variant.

    Solid lines are `statistics` (e.g. at initialization), dashed lines `trained`. A panel's
    y axis is logarithmic when its values are positive and span more than a factor of 10.

    Args:
        statistics: per variant (e.g. "bn", "nobn", "none"; one or more), the output of
            `larq_nobn.signal_propagation`. All variants must have the same blocks.
        path: where to write the PNG.
        trained: optional statistics of trained models, keyed like `statistics`.
        title: the figure's title.
        transitions: names of blocks to mark with a vertical line (e.g. stride-2 blocks).

    Raises:
        ValueError: if there are no variants, or the variants' blocks differ, or `trained`
            has a variant `statistics` lacks.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trained = dict(trained or {})
    if not statistics or set(trained) - set(statistics):
        raise ValueError(
            f"Need one or more variants and trained ones among them, got {list(statistics)} "
            f"and trained {list(trained)}."
        )
    names = [block.name for block in next(iter(statistics.values()))]
    for variant, stats in [*statistics.items(), *trained.items()]:
        if [block.name for block in stats] != names:
            raise ValueError(f"The blocks of {variant!r} differ from {names}.")
    x = np.arange(len(names))
    figure = Figure(figsize=(15, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(STATISTICS))
    for ax, (field, label) in zip(axes, STATISTICS, strict=True):
        values = []
        for line_style, runs in (("-", statistics), ("--", trained)):
            for variant, stats in runs.items():
                y = [getattr(block, field) for block in stats]
                values += y
                state = "init" if line_style == "-" else "trained"
                ax.plot(
                    x,
                    y,
                    line_style,
                    marker=".",
                    color=COLORS.get(variant),
                    label=f"{variant} ({state})",
                )
        for i, name in enumerate(transitions):
            ax.axvline(
                names.index(name),
                color="0.6",
                ls=":",
                label="stride 2 (beta reset)" if not i else None,
            )
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("residual block")
        ax.set_xticks(x, names, rotation=90, fontsize=7)
        ax.grid(True, which="major", alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=100)


def write_signal_propagation_plot(
    models: Mapping[str, tf.keras.Model],
    images: np.ndarray | tf.Tensor,
    path: str | os.PathLike,
    *,
    trained: Mapping[str, tf.keras.Model] | None = None,
    training: bool = True,
    title: str = "Signal propagation",
    transitions: Sequence[str] = (),
    **layers,
) -> None:
    """Measures `signal_propagation` of each model on `images` and plots the variants.

    For one trained model: `write_signal_propagation_plot({"nobn": initial_twin}, images,
    path, trained={"nobn": model})`, the twin rebuilt as the model was before training.

    Args:
        models: per variant, a model (e.g. at initialization).
        images: one batch all models accept.
        path: where to write the PNG.
        trained: optional trained models, keyed like `models` (dashed lines).
        training: run the models in training mode, so batch norm uses the batch's
            statistics (at initialization its moving averages make it the identity).
        title: the figure's title.
        transitions: names of blocks to mark with a vertical line.
        **layers: `block_outputs` and `residual_outputs` for models outside the zoo.
    """

    def measure(runs: Mapping[str, tf.keras.Model]) -> dict[str, list[BlockStatistics]]:
        return {
            variant: signal_propagation(model, images, training=training, **layers)
            for variant, model in runs.items()
        }

    plot_signal_propagation(
        measure(models),
        path,
        trained=measure(trained or {}),
        title=title,
        transitions=transitions,
    )


def transition_blocks(backbone: str, alpha: float = blocks.DEFAULT_ALPHA) -> list[str]:
    """Names (as `signal_propagation` gives them) of a zoo backbone's stride-2 blocks.

    There the BN-free variant's expected variance is reset to 1.
    """
    if backbone == "reactnet18":
        specs = reactnet18.block_specs(alpha)
        return [f"block{i}" for i, spec in enumerate(specs, 1) if spec.downsample]
    if backbone == "reactnet_a":
        specs = reactnet_a.block_specs(alpha)
        return [f"block{i}a" for i, spec in enumerate(specs, 1) if spec.strides == 2]
    raise ValueError(f"`backbone` must be one of {BACKBONES}, got {backbone!r}.")


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
    statistics = signal_propagation(model, images, training=True)
    for block in statistics:
        print(label, block.name, *(f"{getattr(block, f):.4g}" for f, _ in STATISTICS))
    return statistics


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: the three variants of a backbone at initialization (and trained
    models given with --trained), one PNG."""
    from larq_nobn.train import data

    parser = argparse.ArgumentParser(
        prog="python -m larq_nobn.spp_plot",
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
    args = parser.parse_args(argv)

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
        transitions=transition_blocks(args.backbone),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
