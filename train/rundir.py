"""--model_dir as one worker sees it: the stages' directories, what is finished, what to
resume, and who writes (the chief)."""

import os
import shutil
import tempfile

import tensorflow as tf

from larq_nobn.train import outputs


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (one line)."""


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

    def path(self, name: str) -> str:
        return os.path.join(self.model_dir, name)

    def stage_dir(self, stage: int) -> str:
        return os.path.join(self.model_dir, f"stage{stage}")

    def finished_stage(self, stage: int) -> dict | None:
        """The metrics of `stage` if it finished (before a crash in a later stage)."""
        stage_dir = self.stage_dir(stage)
        done = outputs.read_json(os.path.join(stage_dir, "metrics.json"))
        if done is not None and self.chief:
            # A kill may have come between the stage's end and this removal.
            outputs.remove_checkpoints(stage_dir)
        return done

    def training_state(self, stage: int) -> outputs.TrainingState:
        """The checkpoints and history of `stage`, for its fit (see `outputs.TrainingState`).

        Non-chief workers save to a scratch directory (removed by `finish_stage`) and restore
        the chief's checkpoints.
        """
        stage_dir = self.stage_dir(stage)
        directory = stage_dir if self.chief else tempfile.mkdtemp()
        return outputs.TrainingState(directory, write=self.chief, restore_from=stage_dir)

    def check_workers_agree(self, epochs_done: int) -> None:
        """Raises TrainingError unless every worker restored the same epoch.

        Workers that restore different epochs (a --model_dir that is not one storage all
        workers see) would otherwise train out of step, or wait for each other forever.
        Every worker computes the same verdict, from the sum and the sum of squares of the
        replicas' values (equal iff n * sum(x^2) == sum(x)^2).
        """
        strategy = self.strategy
        if getattr(strategy, "cluster_resolver", None) is None:
            return
        value = tf.constant([epochs_done, epochs_done**2], tf.float64)
        total = strategy.reduce(
            tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(value)), axis=None
        ).numpy()
        if strategy.num_replicas_in_sync * total[1] != total[0] ** 2:
            raise TrainingError(
                f"the workers restored different epochs (this one: {epochs_done}); "
                "--model_dir must be one directory every worker can read"
            )

    def finish_stage(self, stage: int, state: outputs.TrainingState, result: dict) -> None:
        """Writes a trained stage's metrics (the chief, after its model.keras) and removes
        its checkpoints: a finished stage is never resumed, its model is what later stages
        read. A non-chief's scratch directory goes."""
        stage_dir = self.stage_dir(stage)
        if self.chief:
            outputs.write_json(os.path.join(stage_dir, "metrics.json"), result)
            outputs.remove_checkpoints(stage_dir)
        else:
            shutil.rmtree(state.directory, ignore_errors=True)
