"""--model_dir as one worker sees it: the stages' directories, what is finished, what to
resume, and who writes (the chief)."""

import os
import shutil
import tempfile

import tensorflow as tf

from larq_nobn.train import files, outputs
from larq_nobn.train.files import TrainingError  # noqa: F401  (rundir.TrainingError, as before)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this worker writes the run's outputs (every worker of a one-worker run does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


class RunDirectory:
    """The outputs and the resume state of a run in `model_dir`.

    The chief writes them; the other workers of a multi-worker run take part in every save
    (saving is collective) but write to scratch directories, and resume from the chief's
    checkpoints.

    Args:
        model_dir: the run's --model_dir.
        strategy: the run's strategy; its cluster says whether this worker is the chief.
    """

    def __init__(self, model_dir: str, strategy: tf.distribute.Strategy):
        self.model_dir = model_dir
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self._sum = None  # `agree`'s all-reduce, traced once

    def path(self, name: str) -> str:
        return os.path.join(self.model_dir, name)

    def stage_dir(self, stage: int) -> str:
        return os.path.join(self.model_dir, f"stage{stage}")

    def finished_stage(self, stage: int) -> dict | None:
        """The metrics of `stage` if it finished (before a crash in a later stage), with its
        history (`history`, if it finished with this version); raises ConfigError if its
        metrics.json is unreadable."""
        stage_dir = self.stage_dir(stage)
        done = files.read_json(
            os.path.join(stage_dir, "metrics.json"),
            f"it says that stage {stage} finished (its checkpoints are gone): restore it, or "
            f"remove it and {stage_dir}/model.keras to train stage {stage} again",
        )
        if done is not None and self.chief:
            # A kill may have come between the stage's end and this removal.
            outputs.remove_checkpoints(stage_dir)
        return done

    def training_state(self, stage: int, **options) -> outputs.TrainingState:
        """The checkpoints and history of `stage`, for its fit (see `outputs.TrainingState`,
        which takes `options`).

        Non-chief workers save to a scratch directory (removed by `finish_stage`) and restore
        the chief's checkpoints.
        """
        stage_dir = self.stage_dir(stage)
        directory = stage_dir if self.chief else tempfile.mkdtemp()
        return outputs.TrainingState(
            directory, write=self.chief, restore_from=stage_dir, agree=self.agree, **options
        )

    @property
    def multi_worker(self) -> bool:
        return getattr(self.strategy, "cluster_resolver", None) is not None

    def agree(self, value: int) -> int:
        """`value` summed over the workers of a multi-worker run (every worker calls it at
        the same point: it is collective); `value` itself in a one-worker run."""
        if not self.multi_worker:
            return value
        if self._sum is None:  # in a tf.function: run eagerly, every call warns and is slow
            strategy = self.strategy

            @tf.function
            def total(local):
                per_replica = strategy.run(tf.identity, args=(local,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._sum = total
        return int(self._sum(tf.constant(float(value), tf.float64)).numpy())

    def check_workers_agree(self, epochs_done: int, steps_done: int = 0) -> None:
        """Raises TrainingError unless every worker restored the same epoch and step.

        Workers that restore different epochs (a --model_dir that is not one storage all
        workers see) would otherwise train out of step, or wait for each other forever.
        Every worker computes the same verdict, from the sum and the sum of squares of the
        replicas' values (equal iff n * sum(x^2) == sum(x)^2), for epochs and steps.
        """
        strategy = self.strategy
        if not self.multi_worker:
            return
        e, s = epochs_done, steps_done
        value = tf.constant([e, e**2, s, s**2], tf.float64)
        total = strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(value)), axis=None
        ).numpy()
        n = strategy.num_replicas_in_sync
        if n * total[1] != total[0] ** 2 or n * total[3] != total[2] ** 2:
            this = f"{e}" + (f", step {s}" if s else "")
            raise TrainingError(
                f"the workers restored different epochs (this one: {this}); "
                "--model_dir must be one directory every worker can read"
            )

    def finish_stage(self, stage: int, state: outputs.TrainingState, result: dict) -> None:
        """Writes a trained stage's metrics (the chief, after its model.keras) and removes
        its checkpoints: a finished stage is never resumed, its model is what later stages
        read. A non-chief's scratch directory goes."""
        stage_dir = self.stage_dir(stage)
        if self.chief:
            # With the history: the record of the stage once its checkpoints are gone.
            files.write_json(
                os.path.join(stage_dir, "metrics.json"), {**result, "history": state.history()}
            )
            outputs.remove_checkpoints(stage_dir)
        else:
            shutil.rmtree(state.directory, ignore_errors=True)
