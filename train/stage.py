"""One stage of a run: its model built, resumed or started from given weights, fit,
checked for NaN, evaluated and saved; or, if it finished earlier, read back."""

import os
from collections.abc import Callable, Sequence

import larq as lq
import tensorflow as tf

from larq_nobn.train import outputs, preemption
from larq_nobn.train.config import Config
from larq_nobn.train.feed import Feed
from larq_nobn.train.models import Models, read_weights
from larq_nobn.train.rundir import RunDirectory, TrainingError


def read_finished(stage: int, done: dict, models: Models, directory: RunDirectory):
    """(metrics, history, student) of a stage that finished earlier (`done`, its metrics)."""
    stage_dir = directory.stage_dir(stage)
    history = outputs.finished_history(stage_dir, done, write=directory.chief)
    done = {k: v for k, v in done.items() if k != "history"}
    student = models.student(stage)
    path = os.path.join(stage_dir, "model.keras")
    student.set_weights(read_weights(student, path, f"the finished stage {stage}'s model"))
    print(f"\nStage {stage} finished earlier: test_accuracy {done['test_accuracy']:.4f}")
    return done, history, student


class Stage:
    """Trains one stage from where its checkpoints stopped, to its last epoch.

    Args:
        stage: the stage (1 or 2).
        config: the run's configuration.
        models: builds the stage's model.
        feed: the run's data.
        directory: the run's directory (checkpoints, outputs, the chief).
        initial_weights: called when the stage starts from scratch (no checkpoint): the
            weights to start from, or None for the model's initialization.
        callbacks: extra Keras callbacks for the stage's fit, run before the program's own.
    """

    def __init__(
        self,
        stage: int,
        config: Config,
        models: Models,
        feed: Feed,
        directory: RunDirectory,
        initial_weights: Callable[[], list | None],
        callbacks: Sequence[tf.keras.callbacks.Callback] = (),
    ):
        self.stage = stage
        self.config = config
        self.models = models
        self.feed = feed
        self.directory = directory
        self.initial_weights = initial_weights
        self.callbacks = list(callbacks)

    def run(self):
        """Builds, fits, evaluates and saves the stage: (metrics, history, student)."""
        stage = self.stage
        model, student = self.models.build(stage)
        self._announce(student)
        state = self.directory.training_state(
            stage,
            steps_per_epoch=self.feed.steps_per_epoch,
            every_steps=self.config.checkpoint_every_steps,
        )
        initial_epoch, initial_steps = self._start(model, student, state)
        last_validation = None
        if initial_epoch < self.config.epochs:
            last_validation = self._fit(model, state, initial_epoch, initial_steps)
        if state.nan_epoch is not None:
            raise TrainingError(
                f"the loss became NaN or infinite in stage {stage}, epoch {state.nan_epoch}; "
                f"the last good checkpoint is {state.latest_checkpoint}"
            )
        result, history = self._evaluate(model, state, last_validation)
        if self.directory.chief:
            self.models.save_student(student, self.directory.stage_dir(stage))
        self.directory.finish_stage(stage, state, result)
        print(f"Stage {stage}: test_accuracy {result['test_accuracy']:.4f}")
        return result, history, student

    def _announce(self, student: tf.keras.Model) -> None:
        config, stage = self.config, self.stage
        if config.is_application:
            print(f"\nStage {stage}: full precision {config.model}")
        else:
            print(
                f"\nStage {stage}: {'binary weights and' if stage == 2 else 'real weights,'} "
                "binary activations"
            )
        lq.models.summary(student)

    def _start(
        self, model: tf.keras.Model, student: tf.keras.Model, state: outputs.TrainingState
    ) -> tuple[int, int]:
        """Restores the newest checkpoint, or sets the initial weights: (epochs done, steps
        of the next epoch done)."""
        epochs = state.attach(model)
        steps = state.resumed_steps
        self.directory.check_workers_agree(epochs, steps)
        if epochs == steps == 0:
            weights = self.initial_weights()
            if weights is not None:
                student.set_weights(weights)
        elif steps:
            print(
                f"Resuming stage {self.stage} after epoch {epochs} and {steps} of "
                f"{self.feed.steps_per_epoch} steps of epoch {epochs + 1} from {state.restored}"
            )
        else:
            print(f"Resuming stage {self.stage} after epoch {epochs} from {state.restored}")
        return epochs, steps

    def _fit(
        self,
        model: tf.keras.Model,
        state: outputs.TrainingState,
        initial_epoch: int,
        initial_steps: int = 0,
    ) -> dict | None:
        """Trains to the last epoch, from `initial_steps` steps into epoch `initial_epoch`
        (0-based); returns the last epoch's test-set metrics (without their `val_` prefix),
        or None if the fit stopped before its last epoch."""
        config, steps = self.config, self.feed.steps_per_epoch
        callbacks = [*self.callbacks, state, tf.keras.callbacks.TerminateOnNaN()]
        if self.directory.chief:
            logs = os.path.join(self.directory.stage_dir(self.stage), "logs")
            callbacks.append(tf.keras.callbacks.TensorBoard(logs, profile_batch=0))
        # (first epoch, end epoch, steps of the first already done): the rest of an epoch
        # resumed inside is a fit of its own, since Keras' epochs all have one length.
        parts = [(initial_epoch, config.epochs, 0)]
        if initial_steps:
            parts = [(initial_epoch, initial_epoch + 1, initial_steps)]
            if initial_epoch + 1 < config.epochs:
                parts.append((initial_epoch + 1, config.epochs, 0))
        epochs_run, history = 0, {}
        with preemption.deferred():
            for first, end, done in parts:
                fit = model.fit(
                    self.feed.train_data(self.stage, first, done, epochs=end - first),
                    epochs=end,
                    steps_per_epoch=steps - done,
                    initial_epoch=first,
                    validation_data=self.feed.test_ds,
                    callbacks=callbacks,
                    verbose=config.verbose,
                )
                epochs_run, history = epochs_run + len(fit.epoch), fit.history
                if state.nan_epoch is not None:
                    break
        if epochs_run != config.epochs - initial_epoch or model.optimizer.use_ema:
            return None  # stopped early, or the weights change after the last epoch
        return {
            name[len("val_") :]: values[-1]
            for name, values in history.items()
            if name.startswith("val_")
        }

    def _evaluate(
        self,
        model: tf.keras.Model,
        state: outputs.TrainingState,
        last_validation: dict | None = None,
    ) -> tuple[dict, list[dict]]:
        """(metrics, history): test accuracy and loss, last train accuracy, epochs, steps.

        `last_validation`, the test-set metrics `fit` computed after the last epoch, are the
        final ones: the weights and the test set are those `evaluate` would see, and on
        every worker alike (each ran the same fit), so the test set is not run again.
        """
        evaluation = last_validation
        if not evaluation or not {"accuracy", "loss"} <= evaluation.keys():
            evaluation = model.evaluate(self.feed.test_ds, verbose=0, return_dict=True)
        history = state.history()
        result = {
            "test_accuracy": float(evaluation["accuracy"]),
            "test_loss": float(evaluation["loss"]),
            "train_accuracy": history[-1].get("accuracy") if history else None,
            "epochs": self.config.epochs,
            "steps": int(model.optimizer.iterations.numpy()),
        }
        return result, history
