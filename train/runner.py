"""Runs the configured stages: strategy, data, models, each stage's fit, the outputs.

A `Run` puts together the pieces of the other modules: `feed.Feed` (the data),
`models.Models` (student, teacher, optimizer), `rundir.RunDirectory` (--model_dir, resume
state, the chief) and `stage.Stage` (one stage's fit).
"""

import json
import os
import time
from collections.abc import Callable, Sequence

import tensorflow as tf

from larq_nobn import acceleration
from larq_nobn.train import files, options, outputs, teachers
from larq_nobn.train.config import IMAGENET, Config, ConfigError
from larq_nobn.train.feed import Feed
from larq_nobn.train.models import Models
from larq_nobn.train.rundir import RunDirectory, TrainingError
from larq_nobn.train.stage import Stage, read_finished

__all__ = ["Run", "TrainingError", "make_strategy"]


def make_strategy(
    name: str, cross_device_ops: tf.distribute.CrossDeviceOps | None = None
) -> tf.distribute.Strategy:
    """The tf.distribute strategy for --strategy.

    Args:
        name: the --strategy.
        cross_device_ops: how a MirroredStrategy all-reduces; None for TensorFlow's choice
            (collective all-reduce). A process that builds several MirroredStrategies, as a
            test session does, passes `tf.distribute.ReductionToOneDevice()`: collective
            instance keys are process-wide and collide between strategies.
    """
    if name == "multi_worker":
        try:
            tf_config = json.loads(os.environ.get("TF_CONFIG", ""))
            cluster = tf_config["cluster"]
            if not cluster.get("worker") and not cluster.get("chief"):
                raise KeyError("worker")
            # This task must be one of the cluster's: MultiWorkerMirroredStrategy would
            # otherwise fail later with a long message, or wait for peers forever.
            task = tf_config["task"]
            if not 0 <= int(task.get("index", 0)) < len(cluster[task["type"]]):
                raise KeyError("index")
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(
                "--strategy multi_worker needs TF_CONFIG with a cluster of workers and this "
                f"task in it (see the README), got {os.environ.get('TF_CONFIG')!r}"
            ) from error
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy(
            [d.name for d in devices], cross_device_ops=cross_device_ops
        )
    return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)


class Run:
    """One invocation of the training program (one or two stages).

    Args:
        config: the run's configuration.
        callbacks: a function of the stage giving extra Keras callbacks for that stage's
            fit (e.g. a test's fault); run before the program's own.
        cross_device_ops: how a MirroredStrategy all-reduces (see `make_strategy`).
    """

    def __init__(
        self,
        config: Config,
        callbacks: Callable[[int], Sequence[tf.keras.callbacks.Callback]] | None = None,
        cross_device_ops: tf.distribute.CrossDeviceOps | None = None,
    ):
        # The strategy first: a multi-worker one must configure the collective ops before
        # anything initializes TensorFlow's devices (listing them does).
        self.strategy = make_strategy(config.strategy, cross_device_ops)
        # The acceleration that runs is a named setting, recorded in config.json and kept
        # on resume (an unfinished run's, or auto resolved here).
        self.config = config = config.with_acceleration_resolved()
        self.callbacks = callbacks or (lambda stage: ())
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(
                f"--batch_size {config.batch_size} does not divide across {replicas} replicas"
            )
        if config.mixed_precision != "float32":
            tf.keras.mixed_precision.set_global_policy(config.mixed_precision)
        self.directory = RunDirectory(config.model_dir, self.strategy)
        self.chief = self.directory.chief
        self.feed = Feed(config)
        self.info = self.feed.info
        self.models = Models(config, self.strategy, self.info, self.feed.steps_per_epoch)
        self.init_weights: list | None = None  # --init_from, read by preflight

    def application(self, name: str, weights: str | None, what: str) -> tf.keras.Model:
        """`models.Models.application`."""
        return self.models.application(name, weights, what)

    def read_weights(self, stage: int, path: str, what: str) -> list:
        """`models.Models.read_weights`."""
        return self.models.read_weights(stage, path, what)

    def stage_dir(self, stage: int) -> str:
        """`rundir.RunDirectory.stage_dir`."""
        return self.directory.stage_dir(stage)

    def preflight(self) -> None:
        """Every check that can fail on bad input, before --model_dir is touched."""
        config = self.config
        config.check_files()  # also checked before TensorFlow is imported (main)
        size = self.info.image_shape[0]
        if config.is_application and size < teachers.MIN_SIZE:
            raise ConfigError(
                f"--model {config.model} needs images of at least {teachers.MIN_SIZE} pixels, "
                f"got {size} (see --image_size)"
            )
        if config.init_from == IMAGENET:  # Config allows it for applications only
            if self.info.num_classes == teachers.IMAGENET_CLASSES:
                raise ConfigError(
                    f"--init_from {IMAGENET} on {config.dataset}: the published "
                    f"{config.model} already is that model; use it as --teacher {config.model}"
                )
            imagenet = self.application(config.model, weights=IMAGENET, what="--init_from")
            self.init_weights = imagenet.get_weights()
        elif config.init_from:
            stage = config.stages[0]
            # Read (and checked) once, here, before anything is written; used by the stage.
            self.init_weights = self.read_weights(stage, config.init_from, "--init_from")

    def config_json(self) -> dict:
        """config.json: every option's value (`options.to_json`)."""
        return options.to_json(self.config)

    def run(self) -> dict:
        """Runs every stage under the run's acceleration setting; the final metrics."""
        with acceleration.acceleration_scope(self.config.acceleration):
            return self._run()

    def _run(self) -> dict:
        config = self.config
        self.preflight()
        start = time.time()
        print("Configuration:")
        for key, value in self.config_json().items():
            print(f"  {key:16} {value}")
        print(f"  {'replicas':16} {self.strategy.num_replicas_in_sync}")
        if self.chief:
            os.makedirs(config.model_dir, exist_ok=True)
            files.write_json(os.path.join(config.model_dir, "config.json"), self.config_json())
        results, histories, student = {}, {}, None
        for stage in config.stages:
            results[stage], histories[stage], student = self.run_stage(stage, student)
        final = results[config.stages[-1]]
        # Every worker prints it: the workers of a multi-worker run must end with the same
        # weights, and two runs with the same seed and --deterministic with the same digest.
        print(f"final weights sha256 {outputs.weights_sha256(student)}")
        metrics = {
            "test_accuracy": final["test_accuracy"],
            "test_loss": final["test_loss"],
            "stages": {str(s): r for s, r in results.items()},
            "config": self.config_json(),
            "elapsed_seconds": round(time.time() - start, 1),
        }
        if self.chief:
            last = self.stage_dir(config.stages[-1])
            outputs.link_or_copy(
                os.path.join(last, "model.keras"), os.path.join(config.model_dir, "model.keras")
            )
            outputs.plot_curves(histories, os.path.join(config.model_dir, "curves.png"))
            if config.export_tflite:
                outputs.export_tflite(student, os.path.join(config.model_dir, "model.tflite"))
            files.write_json(os.path.join(config.model_dir, "metrics.json"), metrics)
            print(f"\ntest_accuracy {final['test_accuracy']:.4f}")
            print(f"Everything is in {config.model_dir}:")
            for name in ("metrics.json", "config.json", "curves.png", "model.keras"):
                print(f"  {os.path.join(config.model_dir, name)}")
            for stage in config.stages:
                print(f"  {self.stage_dir(stage)}/  (model.keras, history.csv, metrics.json, logs)")
        return metrics

    def run_stage(self, stage: int, previous: tf.keras.Model | None):
        """(metrics, history, student) of `stage`, trained now or finished earlier.

        `previous` is the previous stage's student (None for the first stage), trained in
        this process or read from the `model.keras` of an earlier one.
        """
        done = self.directory.finished_stage(stage)
        if done is not None:  # finished before a crash in a later stage
            return read_finished(stage, done, self.models, self.directory)
        return Stage(
            stage,
            self.config,
            self.models,
            self.feed,
            self.directory,
            initial_weights=lambda: self.initial_weights(previous),
            callbacks=self.callbacks(stage),
        ).run()

    def initial_weights(self, previous: tf.keras.Model | None) -> list | None:
        """The weights a stage starts from when it has no checkpoint: --init_from's (read
        by `preflight`, or None) for the first stage, the previous stage's student's for
        the next (the values of its `model.keras`: float32 weights are saved exactly)."""
        if previous is not None:
            return previous.get_weights()
        weights, self.init_weights = self.init_weights, None
        return weights
