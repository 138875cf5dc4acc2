"""Runs the configured stages: strategy, data, model, optimizer, fit, outputs."""

import json
import os
import shutil
import tempfile
import time

import larq as lq
import tensorflow as tf

from larq_nobn import zoo
from larq_nobn.train import data, options, outputs, recipe, teachers
from larq_nobn.train.config import IMAGENET, Config, ConfigError
from larq_nobn.zoo import torch_weights


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (one line)."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for --strategy."""
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
        # On CPUs, reduce through one device: the default collective all-reduce has
        # process-wide instance keys that collide between strategies built in one process.
        cross_device_ops = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(
            [d.name for d in devices], cross_device_ops=cross_device_ops
        )
    return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _read_weights(donor: tf.keras.Model, path: str, what: str) -> list:
    """The model weights saved at `path`, checked against `donor`'s architecture.

    `path` is a `.keras` model, a `.weights.h5` file, a TF checkpoint or a PyTorch
    checkpoint of the reference or of ReActNet (`.pth`, `.pth.tar`, `.pt`, mapped by
    `zoo.torch_weights`); the others are read into `donor`, an uncompiled model of the same
    architecture: weights files of compiled models also hold optimizer state (iterations,
    slots), which must not leak into the new run's optimizer. Raises ConfigError saying
    why the weights do not fit.
    """
    try:
        if torch_weights.is_torch_file(path):
            weights = torch_weights.load_torch_weights(donor, path).get_weights()
        elif path.endswith(".keras"):
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
    except (ValueError, AssertionError, tf.errors.OpError, OSError, ImportError) as error:
        reason = str(error).strip().splitlines()[0][:300]
        raise ConfigError(f"{what} {path} does not fit --model {donor.name}: {reason}") from None


TEST_FAULT_ENV = "LARQ_NOBN_TEST_FAULT"


class _TestFault(tf.keras.callbacks.Callback):
    """Test-only: `LARQ_NOBN_TEST_FAULT=nan_at_epoch:K` turns the weights NaN at the start of
    epoch K (1-based), as a diverging run would, so the NaN handling can be tested."""

    def __init__(self, spec: str):
        super().__init__()
        kind, _, value = spec.partition(":")
        if kind != "nan_at_epoch" or not value.isdigit():
            raise ConfigError(f"{TEST_FAULT_ENV} must be nan_at_epoch:<epoch>, got {spec!r}")
        self.nan_epoch = int(value)

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.nan_epoch:
            variable = self.model.trainable_variables[0]
            variable.assign(tf.fill(variable.shape, float("nan")))


class Run:
    """One invocation of the training program (one or two stages)."""

    def __init__(self, config: Config):
        self.config = config
        self.strategy = make_strategy(config.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(
                f"--batch_size {config.batch_size} does not divide across {replicas} replicas"
            )
        if config.mixed_precision != "float32":
            tf.keras.mixed_precision.set_global_policy(config.mixed_precision)
        self.chief = is_chief(self.strategy)
        _, self.test_ds, self.info = self.load_data(stream=0, first_epoch=0)
        self.steps_per_epoch = self.info.train_examples // config.batch_size
        self.teacher = None
        self.init_weights: list | None = None  # --init_from, read by preflight
        if config.loss == "kd":
            self.teacher = self._load_teacher()

    def load_data(self, stream: int, first_epoch: int, epochs: int = 1):
        """`data.load` for this run: (train, test, info), auto-sharded by data."""
        config = self.config
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
        )
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return train_ds.with_options(options), test_ds.with_options(options), info

    def train_data(self, stage: int, first_epoch: int) -> tf.data.Dataset:
        """The batches of `stage`'s epochs from `first_epoch` (0-based) to the last.

        Each epoch's batches depend on the seed, the stage and the epoch only (see
        `data.load`), so a resumed stage, a stage run after a skipped one and a restarted
        worker see the batches of an uninterrupted run.
        """
        train_ds, _, _ = self.load_data(stage, first_epoch, self.config.epochs - first_epoch)
        return train_ds

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

    def export_tflite(self, student: tf.keras.Model, path: str) -> None:
        """The final model as a larq-compute-engine flatbuffer (WS folded into the kernels)."""
        from larq_nobn import export

        flatbuffer = export.convert(student)
        with open(path, "wb") as f:
            f.write(flatbuffer)
        counts = export.op_counts(flatbuffer)
        print(f"TFLite model: {path} ({counts['LceBconv2d']} binary convolutions)")

    def save_student(self, student: tf.keras.Model, stage: int, directory: str) -> None:
        """`model.keras` of the trained student, without optimizer.

        Saved from an uncompiled copy: a compiled model's file also holds the optimizer
        state, three times the size and slow to load, and a later stage must not inherit
        its step count (the learning-rate schedule would start at its end).
        """
        copy = self.student(stage)
        copy.set_weights(student.get_weights())
        copy.save(os.path.join(directory, "model.keras"))

    def read_weights(self, stage: int, path: str, what: str) -> list:
        return _read_weights(self.student(stage), path, what)

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
            total_steps = config.epochs * self.steps_per_epoch
            weight_decay = config.weight_decay_for(stage)
            if config.is_application:
                optimizer = recipe.full_precision_optimizer(
                    config.learning_rate, total_steps, weight_decay
                )
            else:
                optimizer = recipe.optimizer(
                    config.learning_rate, total_steps, config.agc_clip, weight_decay=weight_decay
                )
            model.compile(
                optimizer=optimizer,
                loss=loss,
                metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                jit_compile=config.jit_compile,
            )
        return model, student

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

    def stage_dir(self, stage: int) -> str:
        return os.path.join(self.config.model_dir, f"stage{stage}")

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
        config = self.config
        self.preflight()
        start = time.time()
        print("Configuration:")
        for key, value in self.config_json().items():
            print(f"  {key:16} {value}")
        print(f"  {'replicas':16} {self.strategy.num_replicas_in_sync}")
        if self.chief:
            os.makedirs(config.model_dir, exist_ok=True)
            outputs.write_json(os.path.join(config.model_dir, "config.json"), self.config_json())
        results, histories, student = {}, {}, None
        init_from = config.init_from
        for stage in config.stages:
            results[stage], histories[stage], student = self.run_stage(stage, init_from)
            init_from = os.path.join(self.stage_dir(stage), "model.keras")
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
                self.export_tflite(student, os.path.join(config.model_dir, "model.tflite"))
            outputs.write_json(os.path.join(config.model_dir, "metrics.json"), metrics)
            print(f"\ntest_accuracy {final['test_accuracy']:.4f}")
            print(f"Everything is in {config.model_dir}:")
            for name in ("metrics.json", "config.json", "curves.png", "model.keras"):
                print(f"  {os.path.join(config.model_dir, name)}")
            for stage in config.stages:
                print(f"  {self.stage_dir(stage)}/  (model.keras, history.csv, metrics.json, logs)")
        return metrics

    def run_stage(self, stage: int, init_from: str | None):
        config = self.config
        stage_dir = self.stage_dir(stage)
        done = outputs.read_json(os.path.join(stage_dir, "metrics.json"))
        if done is not None:  # finished before a crash in a later stage
            if self.chief:  # a kill may have come between the stage's end and this removal
                outputs.remove_checkpoints(stage_dir)
            state = outputs.TrainingState(stage_dir, write=False)
            student = self.student(stage)
            path = os.path.join(stage_dir, "model.keras")
            student.set_weights(self.read_weights(stage, path, "stage"))
            print(f"\nStage {stage} finished earlier: test_accuracy {done['test_accuracy']:.4f}")
            return done, state.history(), student

        model, student = self.build(stage)
        if config.is_application:
            print(f"\nStage {stage}: full precision {config.model}")
        else:
            print(
                f"\nStage {stage}: {'binary weights and' if stage == 2 else 'real weights,'} "
                "binary activations"
            )
        lq.models.summary(student)
        # Non-chief workers save to a scratch directory (saving is collective, writing is
        # the chief's) and resume from the chief's checkpoints.
        scratch = None if self.chief else tempfile.mkdtemp()
        state = outputs.TrainingState(
            scratch or stage_dir, write=self.chief, restore_from=stage_dir
        )
        initial_epoch = state.attach(model)
        self.check_workers_agree(initial_epoch)
        if initial_epoch == 0 and init_from:
            if stage == config.stages[0] and self.init_weights is not None:
                student.set_weights(self.init_weights)
                self.init_weights = None
            else:
                student.set_weights(self.read_weights(stage, init_from, "stage weights"))
        elif initial_epoch:
            print(f"Resuming stage {stage} after epoch {initial_epoch} from {state.restored}")
        callbacks = [state, tf.keras.callbacks.TerminateOnNaN()]
        fault = os.environ.get(TEST_FAULT_ENV)
        if fault:
            callbacks.insert(0, _TestFault(fault))
        if self.chief:
            callbacks.append(
                tf.keras.callbacks.TensorBoard(os.path.join(stage_dir, "logs"), profile_batch=0)
            )
        if initial_epoch < config.epochs:
            model.fit(
                self.train_data(stage, initial_epoch),
                epochs=config.epochs,
                steps_per_epoch=self.steps_per_epoch,
                initial_epoch=initial_epoch,
                validation_data=self.test_ds,
                callbacks=callbacks,
                verbose=config.verbose,
            )
        if state.nan_epoch is not None:
            raise TrainingError(
                f"the loss became NaN or infinite in stage {stage}, epoch {state.nan_epoch}; "
                f"the last good checkpoint is {state.latest_checkpoint}"
            )
        evaluation = model.evaluate(self.test_ds, verbose=0, return_dict=True)
        history = state.history()
        result = {
            "test_accuracy": float(evaluation["accuracy"]),
            "test_loss": float(evaluation["loss"]),
            "train_accuracy": history[-1].get("accuracy") if history else None,
            "epochs": config.epochs,
            "steps": int(model.optimizer.iterations.numpy()),
        }
        if self.chief:
            self.save_student(student, stage, stage_dir)
            outputs.write_json(os.path.join(stage_dir, "metrics.json"), result)
            # A finished stage is never resumed: its model is what later stages read.
            outputs.remove_checkpoints(stage_dir)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"Stage {stage}: test_accuracy {result['test_accuracy']:.4f}")
        return result, history, student
