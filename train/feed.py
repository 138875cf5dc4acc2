"""The data a run feeds: the test set, the dataset's description, each stage's batches."""

import tensorflow as tf

from larq_nobn.train import data
from larq_nobn.train.config import Config


class Feed:
    """`data.load` for a run, auto-sharded by data across the workers.

    Args:
        config: the run's configuration (dataset, batch size, seed, subset, image size).

    Attributes:
        test_ds: the test batches.
        info: the dataset's `data.DatasetInfo`.
        steps_per_epoch: training batches per epoch.
    """

    def __init__(self, config: Config):
        self.config = config
        _, self.test_ds, self.info = self.load(stream=0, first_epoch=0)
        self.steps_per_epoch = self.info.train_examples // config.batch_size

    def load(self, stream: int, first_epoch: int, epochs: int = 1, first_step: int = 0):
        """`data.load` for this run: (train, test, info), auto-sharded by data."""
        config = self.config
        training = config.training_recipe
        train_ds, test_ds, info = data.load(
            config.dataset,
            global_batch_size=config.batch_size,
            seed=config.seed,
            data_dir=config.data_dir,
            train_subset=config.train_subset,
            image_size=config.image_size,
            stream=stream,
            first_epoch=first_epoch,
            epochs=epochs,
            normalization=training.cifar_normalization,
            padding_mode=training.cifar_padding,
            first_step=first_step,
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return train_ds.with_options(options), test_ds.with_options(options), info

    def train_data(
        self, stage: int, first_epoch: int, first_step: int = 0, epochs: int | None = None
    ) -> tf.data.Dataset:
        """The batches of `stage`'s epochs from `first_epoch` (0-based) on, without the
        first `first_step` batches of that epoch; `epochs` epochs (default: to the last).

        Each epoch's batches depend on the seed, the stage and the epoch only (see
        `data.load`), so a resumed stage (at an epoch's start or inside one), a stage run
        after a skipped one and a restarted worker see the batches of an uninterrupted run.
        """
        epochs = self.config.epochs - first_epoch if epochs is None else epochs
        train_ds, _, _ = self.load(stage, first_epoch, epochs, first_step)
        return train_ds
