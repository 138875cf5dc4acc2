"""Input pipeline throughput against the training step's consumption, per dataset.

For each dataset it loads the training program's train pipeline (`train.data.load` with the
training program's default batch size and image size for that dataset) and builds the
training program's default model (`train.config.Config().model`, ReActNet-A BN-free, stage
2, AGC) at the dataset's image shape, classes and batch size, in the default (non-XLA)
mode on a fixed in-memory batch. After one warm-up epoch of the pipeline (which fills its
cache) and two warm-up training steps it alternates, in `--rounds` rounds after one untimed
round, `--epochs` full epochs of the pipeline (a new iterator per epoch, as `fit` makes one
per epoch; the batches are pulled in Python, no model) with `--steps` training steps.
Ratio = pipeline images/s / model images/s (medians); the goal is >= 3.

"cifar10" runs on `tfds.testing.mock_data` (random images; `--mock_examples` of them per
split), so it works offline; after the warm-up epoch its pipeline reads the same in-memory
cache as the real data would.

    python benchmarks/input_pipeline.py --datasets digits --rounds 1 --epochs 1 --steps 1
"""

import common

# isort: split
import argparse
import contextlib
import sys
import types

import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.train import config, data

GOAL = 3.0  # pipeline images/s / model images/s, at least
DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "fashion_mnist")
MOCKED = ("cifar10", "cifar100")


def mock_tfds(num_examples: int) -> contextlib.AbstractContextManager:
    """`tfds.testing.mock_data` (tfds.testing imports `dill`, needed only for pickling)."""
    try:
        import dill  # noqa: F401
    except ImportError:
        sys.modules.setdefault("dill", types.ModuleType("dill"))
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(num_examples=num_examples)


def epoch(dataset: tf.data.Dataset) -> int:
    """Pulls one epoch of batches (a fresh iterator); returns the number of images."""
    images = 0
    for batch_images, _ in dataset:
        images += int(batch_images.shape[0])
    return images


def measure(name: str, args: argparse.Namespace) -> dict[str, object]:
    """Pipeline and model images/s for one dataset, with the shapes used."""
    defaults = config.Config().resolved()  # the default command's model, recipe and AGC clip
    batch_size = args.batch_size or config.DATASET_DEFAULTS[name]["batch_size"]
    with contextlib.ExitStack() as stack:
        if name in MOCKED:
            stack.enter_context(mock_tfds(args.mock_examples))
        train_ds, _, info = data.load(
            name,
            global_batch_size=batch_size,
            seed=defaults.seed,
            image_size=args.image_size,
            synthetic_examples=args.synthetic_examples,
        )
        common.log(f"{name}: warm-up epoch, then {defaults.model} {info.image_shape}")
        images_per_epoch = epoch(train_ds)
        trainer = common.Trainer(
            defaults.model,
            stage=args.stage,
            input_size=info.image_shape[0],
            batch_size=batch_size,
            num_classes=info.num_classes,
            jit_compile=defaults.jit_compile,
            agc_clip=defaults.agc_clip,
            stem=defaults.stem,
        )
        trainer.warm_up()

        def pipeline() -> None:
            for _ in range(args.epochs):
                epoch(train_ds)

        seconds = common.alternate(
            {"pipeline": pipeline, "model": lambda t=trainer: t(args.steps)}, args.rounds
        )
    del trainer, pipeline
    common.release()
    return {
        "image_shape": info.image_shape,
        "batch_size": batch_size,
        "images_per_epoch": images_per_epoch,
        "pipeline": images_per_epoch * args.epochs / common.median(seconds["pipeline"]),
        "model": batch_size * args.steps / common.median(seconds["model"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        type=common.choices(DATASETS),
        default=["digits", "synthetic", "cifar10"],
        help="comma-separated",
    )
    parser.add_argument("--batch_size", type=int, default=None, help="default: per dataset")
    parser.add_argument("--image_size", type=int, default=None, help="default: per dataset")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2, help="pipeline epochs per round")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--mock_examples", type=int, default=2048, help="cifar mock split size")
    parser.add_argument("--synthetic_examples", type=int, default=512)
    args = parser.parse_args()

    model = config.Config().model
    model = f"{model} ({zoo.backbone(model)} backbone)"
    print(common.machine_description())
    print(
        f"input pipeline vs the training step of {model}, stage {args.stage}; {args.rounds} "
        f"alternating rounds of {args.epochs} epoch(s) / {args.steps} step(s) (median round), "
        "after a warm-up epoch, 2 warm-up steps and 1 untimed round"
    )
    rows = []
    for name in args.datasets:
        try:
            m = measure(name, args)
        except data.DatasetError as error:
            rows.append([name, "-", "-", "-", "unavailable", "-", "-", "-", str(error)[:60]])
            continue
        ratio = m["pipeline"] / m["model"]
        size = m["image_shape"][0]
        rows.append(
            [
                name + (" (mock)" if name in MOCKED else ""),
                f"{size}x{size}",
                m["batch_size"],
                m["images_per_epoch"],
                f"{m['pipeline']:.0f}",
                f"{m['model']:.1f}",
                f"{ratio:.1f}",
                *common.verdict(ratio, GOAL, at_least=True),
            ]
        )
        common.log(f"  {rows[-1]}")
    common.print_table(
        ["dataset", "input", "batch", "images/epoch", "pipeline img/s", "model img/s"]
        + ["pipeline/model", "goal", "met"],
        rows,
    )


if __name__ == "__main__":
    main()
