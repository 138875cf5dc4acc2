"""What a stage trains: the student, the teacher, the distillation model, the compiled
optimizer, and weights read from files."""

import io
import os
import zipfile

import h5py
import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.train import recipe, teachers
from larq_nobn.train.config import IMAGENET, Config, ConfigError
from larq_nobn.zoo import torch_weights


def read_weights(donor: tf.keras.Model, path: str, what: str) -> list:
    """The model weights saved at `path`, checked against `donor`'s architecture.

    `path` is a `.keras` model, a `.weights.h5` file, a TF checkpoint or a PyTorch
    checkpoint of the reference or of ReActNet (`.pth`, `.pth.tar`, `.pt`, mapped by
    `zoo.torch_weights`); the others are read into `donor`, an uncompiled model of the same
    architecture: weights files of compiled models also hold optimizer state (iterations,
    slots), which must not leak into the new run's optimizer. A `.keras` file that is not
    one of `donor` alone (a distillation model, optimizer state) is read by `load_model`.
    Raises ConfigError saying why the weights do not fit.
    """
    try:
        if torch_weights.is_torch_file(path):
            weights = torch_weights.load_torch_weights(donor, path).get_weights()
        elif path.endswith(".keras"):
            weights = _read_into(donor, path)
            if weights is None:
                saved = tf.keras.models.load_model(
                    path, custom_objects=dict(teachers.CUSTOM_OBJECTS), compile=False
                )
                if isinstance(saved, recipe.Distillation):
                    saved = saved.student
                weights = saved.get_weights()
        else:
            status = donor.load_weights(path)
            if status is not None:
                status.expect_partial().assert_existing_objects_matched()
            weights = donor.get_weights()
        if [w.shape for w in weights] != [w.shape for w in donor.weights]:
            raise ValueError("its weights have other shapes")
        return weights
    except torch_weights.TorchFileError as error:
        raise ConfigError(f"{what} {error}") from None
    except (ValueError, AssertionError, tf.errors.OpError, OSError, ImportError) as error:
        reason = str(error).strip().splitlines()[0][:300]
        raise ConfigError(f"{what} {path} does not fit --model {donor.name}: {reason}") from None


def _read_into(donor: tf.keras.Model, path: str) -> list | None:
    """`donor`'s weights once the `.keras` model at `path` is loaded into it, or None.

    Saves building the model of the file's config, as `load_model` does. None (for
    `load_model`) unless the file holds as many variables as `donor` and each of `donor`'s
    layers takes its own: not for a distillation model, optimizer state or another model.
    """
    try:
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as file:
            with h5py.File(io.BytesIO(file.read()), "r") as h5:
                datasets = []
                h5.visititems(lambda _, item: datasets.append(isinstance(item, h5py.Dataset)))
        if sum(datasets) != len(donor.weights):
            return None
        donor.load_weights(path)
    except Exception:  # `load_model` says what does not fit
        return None
    return donor.get_weights()


class Models:
    """Builds the models of a run's stages in its strategy's scope.

    Args:
        config: the run's configuration.
        strategy: the run's strategy.
        info: the dataset's `data.DatasetInfo` (image shape, classes, normalization).
        steps_per_epoch: optimizer steps per epoch (the learning-rate schedule's length
            is `config.epochs` times this).
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, info, steps_per_epoch):
        self.config = config
        self.strategy = strategy
        self.info = info
        self.steps_per_epoch = steps_per_epoch
        self.teacher = self._load_teacher() if config.loss == "kd" else None

    def _load_teacher(self) -> tf.keras.Model:
        """--teacher: a Keras application with ImageNet weights, or a saved model.

        Either way the teacher takes the student's batch as it is; an application gets it
        through `teachers.ApplicationInput` (a saved application run by this program has
        that layer already).
        """
        name, info = self.config.teacher, self.info
        if teachers.is_application(name):
            if info.num_classes != teachers.IMAGENET_CLASSES:
                raise ConfigError(
                    f"--teacher {name} predicts the {teachers.IMAGENET_CLASSES} ImageNet "
                    f"classes, {self.config.dataset} has {info.num_classes}: train a teacher "
                    f"first (--model {name} --dataset {self.config.dataset}) and pass its "
                    "model.keras"
                )
            return self.application(name, weights=IMAGENET, what="--teacher")
        with self.strategy.scope():
            try:
                teacher = tf.keras.models.load_model(
                    name, custom_objects=dict(teachers.CUSTOM_OBJECTS), compile=False
                )
            except (OSError, ValueError, TypeError, tf.errors.OpError) as error:
                reason = str(error).strip().splitlines()[0][:200]
                raise ConfigError(f"--teacher {name}: {reason}") from None
        if teacher.output_shape[-1] != info.num_classes:
            raise ConfigError(
                f"--teacher predicts {teacher.output_shape[-1]} classes, "
                f"{self.config.dataset} has {info.num_classes}"
            )
        expected = tuple(teacher.input_shape[1:])
        if None not in expected and expected != tuple(info.image_shape):
            raise ConfigError(
                f"--teacher takes {expected} images, the student's are {info.image_shape} "
                "(see --image_size)"
            )
        return teacher

    def application(self, name: str, weights: str | None, what: str) -> tf.keras.Model:
        """A Keras application on this run's images (in the strategy's scope)."""
        info = self.info
        try:
            with self.strategy.scope():
                return teachers.build_application(
                    name,
                    num_classes=info.num_classes,
                    input_shape=info.image_shape,
                    mean=info.mean,
                    std=info.std,
                    weights=weights,
                )
        except (teachers.WeightsUnavailableError, ValueError) as error:
            raise ConfigError(f"{what} {name}: {error}") from None

    def student(self, stage: int) -> tf.keras.Model:
        """The model of a stage (zoo model, or application with a new head), uncompiled."""
        if self.config.is_application:
            return self.application(self.config.model, weights=None, what="--model")
        return zoo.get_model(
            self.config.model,
            stage=stage,
            input_shape=self.info.image_shape,
            num_classes=self.info.num_classes,
            **self.config.model_kwargs(),
        )

    def read_weights(self, stage: int, path: str, what: str) -> list:
        """The weights saved at `path` (see `read_weights`), checked against `stage`'s model."""
        return read_weights(self.student(stage), path, what)

    @staticmethod
    def save_student(student: tf.keras.Model, directory: str) -> None:
        """`model.keras` of the trained student, without optimizer.

        Saved from an uncompiled model of the student's layers (the same config and
        weights, nothing built): a compiled model's file also holds the optimizer state,
        three times the size and slow to load, and a later stage must not inherit its step
        count (the learning-rate schedule would start at its end).
        """
        uncompiled = tf.keras.Model(student.inputs, student.outputs, name=student.name)
        uncompiled.save(os.path.join(directory, "model.keras"))

    def build(self, stage: int) -> tuple[tf.keras.Model, tf.keras.Model]:
        """(trained model, student) of a stage, compiled inside the strategy scope."""
        config = self.config
        # The stage's initial weights depend on the seed and the stage only, not on what
        # this process built before (a rerun may start at stage 2).
        tf.keras.utils.set_random_seed(config.seed * len(zoo.STAGES) + stage)
        with self.strategy.scope():
            student = self.student(stage)
            model = student
            loss = recipe.loss(config.loss, self.info.num_classes)
            if self.teacher is not None:
                model, loss = recipe.Distillation(student, self.teacher), None
            model.compile(
                optimizer=self._optimizer(stage),
                loss=loss,
                metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=config.jit_compile,
            )
            # Slots created now, not inside the first step: a `tf.function` that creates
            # variables on its first call traces a second time, and a traced ReActNet step
            # costs tens of seconds of Python on a CPU.
            model.optimizer.build(model.trainable_variables)
        return model, student

    def _optimizer(self, stage: int) -> tf.keras.optimizers.Optimizer:
        """The stage's optimizer: the paper's for zoo models, SGD for applications."""
        config = self.config
        total_steps = config.epochs * self.steps_per_epoch
        weight_decay = config.weight_decay_for(stage)
        if config.is_application:
            return recipe.full_precision_optimizer(config.learning_rate, total_steps, weight_decay)
        return recipe.optimizer(
            config.learning_rate, total_steps, config.agc_clip, weight_decay=weight_decay
        )
