"""The resolved configuration of a training run, validated before anything is written.

`Config` has one field per option of `options.OPTIONS` (its default that option's);
`Config.resolved` fills in the defaults that depend on other options and checks every
value. Nothing here imports TensorFlow.
"""

import dataclasses
import importlib.util
import os

from larq_nobn import acceleration, zoo
from larq_nobn.train import catalog, files, options
from larq_nobn.train import hyperparameters as hp
from larq_nobn.train.options import (  # noqa: F401  (config.X, as before)
    IMAGENET,
    MIXED_PRECISION,
    STRATEGIES,
    ConfigError,
)

# Per-dataset defaults for --epochs and --batch_size. The real datasets use the paper's
# recipe (256 epochs of batch 256, both stages); the embedded digits are sized so that the
# default command trains to about 97 % in minutes on 2 CPU cores: 5 epochs of batch 64
# (smaller batches take longer for no more accuracy, larger ones or fewer epochs fall
# short; BENCHMARKS.md, section 9, has the runs).
DATASET_DEFAULTS = {
    "digits": dict(epochs=5, batch_size=64),
    "fashion_mnist": dict(epochs=10, batch_size=256),
    "cifar10": dict(epochs=256, batch_size=hp.BATCH_SIZE),
    "cifar100": dict(epochs=256, batch_size=hp.BATCH_SIZE),
    "imagenet2012": dict(epochs=256, batch_size=hp.BATCH_SIZE),
    "synthetic": dict(epochs=1, batch_size=32),
}


class _Resolution:
    """What `Config` does beyond holding the options' values (see `options.OPTIONS`)."""

    @property
    def is_application(self) -> bool:
        """The model is a full-precision Keras application (a teacher), not a zoo BNN."""
        return self.model in catalog.APPLICATIONS

    @property
    def training_recipe(self) -> hp.Recipe:
        """The `--recipe`'s, or by default the model's (`hyperparameters.default_recipe`)."""
        if self.recipe is not None:
            return hp.RECIPES[self.recipe]
        return hp.RECIPES[
            hp.default_recipe(None if self.is_application else zoo.design(self.model))
        ]

    def resolved(self) -> "Config":
        """Fills in per-dataset defaults and checks every value; raises ConfigError."""
        self._check_options("model", "dataset", *(("recipe",) if self.recipe else ()))
        defaults = DATASET_DEFAULTS[self.dataset]
        application = self.is_application
        training = self.training_recipe
        if self.learning_rate is not None:
            learning_rate = self.learning_rate
        elif application:  # the linear scaling rule (Goyal et al. 2017)
            batch_size = self.batch_size or defaults["batch_size"]
            base = (
                hp.FINE_TUNE_LEARNING_RATE
                if self.init_from == IMAGENET
                else hp.FULL_PRECISION_LEARNING_RATE
            )
            learning_rate = base * batch_size / hp.BATCH_SIZE
        else:
            learning_rate = training.learning_rate
        agc_clip = training.agc_clip_for(self.dataset) if self.agc_clip is None else self.agc_clip
        config = dataclasses.replace(
            self,
            recipe=training.name,
            stages=self.stages if self.stages is not None else ((1,) if application else (1, 2)),
            learning_rate=learning_rate,
            agc_clip=agc_clip,
            epochs=self.epochs if self.epochs is not None else defaults["epochs"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            model_dir=self.model_dir or os.path.join("runs", f"{self.model}_{self.dataset}"),
        )
        config._check()
        return config

    def _check_options(self, *names: str) -> None:
        """Each option's own check (`options.Option.check`), of `names` or of all."""
        for option in options.OPTIONS:
            if names and option.name not in names:
                continue
            problem = option.problem(getattr(self, option.name))
            if problem:
                raise ConfigError(problem)

    def _check(self) -> None:
        self._check_options()
        if self.acceleration == acceleration.AUTO:
            try:  # auto takes the environment's setting, where it names one
                acceleration.from_environment()
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"--stages must be increasing, got {self.stages}")
        if self.is_application and self.stages != (1,):
            raise ConfigError(
                f"--model {self.model} is full precision and trains in one stage: --stages 1"
            )
        if self.is_application and self.recipe != hp.PAPER.name:
            raise ConfigError(
                f"--recipe {self.recipe} trains binary zoo models; --model {self.model} is "
                "full precision (SGD, see --learning_rate)"
            )
        if self.loss == "kd" and not self.teacher:
            raise ConfigError(
                "--loss kd needs --teacher (a saved Keras model or a Keras application name)"
            )
        if self.teacher and self.loss != "kd":
            raise ConfigError(f"--teacher is used by --loss kd only, got --loss {self.loss}")
        if self.teacher and not (
            self.teacher in catalog.APPLICATIONS or _checkpoint_exists(self.teacher)
        ):
            raise ConfigError(
                f"--teacher {self.teacher} is neither a saved model (no such file) nor a "
                f"Keras application: {', '.join(catalog.APPLICATIONS.names())}"
            )
        if self.init_from == IMAGENET:
            if not self.is_application:
                raise ConfigError(
                    f"--init_from {IMAGENET} is for Keras applications; --model {self.model} "
                    "has no published weights"
                )
        elif self.init_from and not _checkpoint_exists(self.init_from):
            raise ConfigError(f"--init_from {self.init_from} does not exist")

    def check_files(self) -> None:
        """The checks that read files but need no TensorFlow; raises ConfigError.

        --export_tflite needs larq-compute-engine; --model_dir must be a directory this
        process can write in (or make), and hold neither a finished run nor an unfinished
        one of other flags (`options.changed`); its JSON files must be readable.
        """
        if self.export_tflite and importlib.util.find_spec("larq_compute_engine") is None:
            raise ConfigError("--export_tflite needs larq-compute-engine: pip install -e '.[lce]'")
        files.check_writable_directory(self.model_dir, "--model_dir")
        finished = files.read_json(
            os.path.join(self.model_dir, "metrics.json"),
            f"it says that the run in {self.model_dir} finished: restore it, or choose "
            "another --model_dir",
        )
        if finished is not None:
            raise ConfigError(
                f"{self.model_dir} already holds a finished run (test_accuracy "
                f"{finished.get('test_accuracy')}); choose another --model_dir"
            )
        saved = files.read_json(
            os.path.join(self.model_dir, "config.json"),
            f"it holds the flags of the unfinished run in {self.model_dir}: restore it, or "
            "remove it to resume that run with this command's flags",
        )
        changed = [] if saved is None else options.changed(saved, self.keeping_recorded())
        if changed:
            raise ConfigError(
                f"{self.model_dir} holds an unfinished run with other flags "
                f"({', '.join(changed)}); rerun it with the same flags or choose another "
                "--model_dir"
            )

    def keeping_recorded(self) -> "Config":
        """This configuration, with `--acceleration auto` replaced by the setting that an
        unfinished run in --model_dir recorded: a resumed run keeps its math. A setting
        named by the flag stays (and `check_files` refuses it if the run recorded another).
        """
        if self.acceleration != acceleration.AUTO:
            return self
        path = os.path.join(self.model_dir, "config.json")
        saved = files.read_json(
            path,
            f"it holds the flags of the unfinished run in {self.model_dir}: restore it, or "
            "remove it to resume that run with this command's flags",
        )
        recorded = (saved or {}).get("acceleration", acceleration.AUTO)
        problem = options.BY_NAME["acceleration"].problem(recorded)
        if problem:
            raise ConfigError(f"{path}: {problem}")
        return dataclasses.replace(self, acceleration=recorded)

    def with_acceleration_resolved(self) -> "Config":
        """`keeping_recorded`, then auto resolved: the process's setting
        (`LARQ_NOBN_ACCELERATION` where it is set), else by the kind of device (see
        `larq_nobn.acceleration`). What config.json records; imports TensorFlow."""
        config = self.keeping_recorded()
        requested = config.acceleration
        if requested == acceleration.AUTO:
            requested = acceleration.get_acceleration()
        return dataclasses.replace(config, acceleration=acceleration.resolve(requested))

    def weight_decay_for(self, stage: int) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        if self.is_application:
            return hp.FULL_PRECISION_WEIGHT_DECAY
        return self.training_recipe.weight_decay[stage]

    def model_kwargs(self) -> dict:
        from larq_nobn.zoo import torch_weights  # imports TensorFlow

        kwargs = {}
        if not self.is_application:
            kwargs["stem"] = self.stem  # both backbones take it
        if not self.is_application and torch_weights.is_torch_file(self.init_from):
            # PyTorch weights (the reference's, ReActNet's) need PyTorch's padding.
            kwargs["padding"] = "torch"
        return kwargs


#: The resolved configuration of a run: one field per option of `options.OPTIONS`.
Config = dataclasses.make_dataclass(
    "Config", options.dataclass_fields(), bases=(_Resolution,), frozen=True
)
Config.__module__ = __name__


def _checkpoint_exists(path: str) -> bool:
    """A file, a directory, or a TF checkpoint prefix (`ckpt-3` for `ckpt-3.index`)."""
    return os.path.exists(path) or os.path.exists(path + ".index")
