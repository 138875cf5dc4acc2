"""The resolved configuration of a training run, validated before anything is written."""

import dataclasses
import os

from larq_nobn import zoo
from larq_nobn.train import data, recipe, teachers
from larq_nobn.zoo import torch_weights

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
MIXED_PRECISION = ("float32", "mixed_float16", "mixed_bfloat16")

# Per-dataset defaults for --epochs and --batch_size. The real datasets use the paper's
# recipe (256 epochs of batch 256, both stages); the embedded digits are sized so the
# default command trains to >= 97 % in a few minutes on 2 CPU cores.
DATASET_DEFAULTS = {
    "digits": dict(epochs=5, batch_size=32),
    "fashion_mnist": dict(epochs=10, batch_size=256),
    "cifar10": dict(epochs=256, batch_size=recipe.BATCH_SIZE),
    "cifar100": dict(epochs=256, batch_size=recipe.BATCH_SIZE),
    "imagenet2012": dict(epochs=256, batch_size=recipe.BATCH_SIZE),
    "synthetic": dict(epochs=1, batch_size=32),
}


# --init_from value that starts a Keras application from its published ImageNet weights.
IMAGENET = "imagenet"


class ConfigError(ValueError):
    """A bad flag or flag combination (one user-facing line)."""


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = "reactnet_nobn"
    dataset: str = "digits"
    model_dir: str | None = None
    data_dir: str | None = None
    stages: tuple[int, ...] | None = None  # None: both for a zoo model, 1 for an application
    epochs: int | None = None  # per stage
    batch_size: int | None = None  # global
    learning_rate: float | None = None  # None: the recipe's, per model kind
    weight_decay: float | None = None  # None: the recipe's, per model kind and stage
    agc_clip: float = recipe.AGC_CLIP
    loss: str = "ce"
    teacher: str | None = None
    init_from: str | None = None
    seed: int = 0
    train_subset: int | None = None
    image_size: int | None = None
    stem: str = "imagenet"
    strategy: str = "auto"
    mixed_precision: str = "float32"
    jit_compile: bool = False
    export_tflite: bool = False
    verbose: int = 1

    @property
    def is_application(self) -> bool:
        """The model is a full-precision Keras application (a teacher), not a zoo BNN."""
        return teachers.is_application(self.model)

    def resolved(self) -> "Config":
        """Fills in per-dataset defaults and checks every value; raises ConfigError."""
        if self.model not in zoo.MODEL_NAMES and not teachers.is_application(self.model):
            raise ConfigError(
                f"unknown --model {self.model!r}; valid: {', '.join(zoo.MODEL_NAMES)}, "
                f"or a Keras application: {', '.join(teachers.APPLICATION_NAMES)}"
            )
        if self.dataset not in data.DATASET_NAMES:
            raise ConfigError(
                f"unknown --dataset {self.dataset!r}; valid: {', '.join(data.DATASET_NAMES)}"
            )
        defaults = DATASET_DEFAULTS[self.dataset]
        application = teachers.is_application(self.model)
        if self.learning_rate is not None:
            learning_rate = self.learning_rate
        elif application:  # the linear scaling rule (Goyal et al. 2017)
            batch_size = self.batch_size or defaults["batch_size"]
            base = (
                recipe.FINE_TUNE_LEARNING_RATE
                if self.init_from == IMAGENET
                else recipe.FULL_PRECISION_LEARNING_RATE
            )
            learning_rate = base * batch_size / recipe.BATCH_SIZE
        else:
            learning_rate = recipe.LEARNING_RATE
        config = dataclasses.replace(
            self,
            stages=self.stages if self.stages is not None else ((1,) if application else (1, 2)),
            learning_rate=learning_rate,
            epochs=self.epochs if self.epochs is not None else defaults["epochs"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            model_dir=self.model_dir or os.path.join("runs", f"{self.model}_{self.dataset}"),
        )
        config._check()
        return config

    def _check(self) -> None:
        positive = dict(
            epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate
        )
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        for name in ("train_subset", "image_size"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if self.agc_clip < 0:
            raise ConfigError(f"--agc_clip must be >= 0 (0 disables AGC), got {self.agc_clip}")
        if not self.stages or any(s not in zoo.STAGES for s in self.stages):
            raise ConfigError(f"--stages must be 1, 2 or 1,2, got {self.stages}")
        if list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"--stages must be increasing, got {self.stages}")
        if self.is_application and self.stages != (1,):
            raise ConfigError(
                f"--model {self.model} is full precision and trains in one stage: --stages 1"
            )
        if self.loss not in recipe.LOSSES:
            raise ConfigError(f"unknown --loss {self.loss!r}; valid: {', '.join(recipe.LOSSES)}")
        if self.loss == "kd" and not self.teacher:
            raise ConfigError(
                "--loss kd needs --teacher (a saved Keras model or a Keras application name)"
            )
        if self.teacher and self.loss != "kd":
            raise ConfigError(f"--teacher is used by --loss kd only, got --loss {self.loss}")
        if self.teacher and not (
            teachers.is_application(self.teacher) or _checkpoint_exists(self.teacher)
        ):
            raise ConfigError(
                f"--teacher {self.teacher} is neither a saved model (no such file) nor a "
                f"Keras application: {', '.join(teachers.APPLICATION_NAMES)}"
            )
        if self.init_from == IMAGENET:
            if not self.is_application:
                raise ConfigError(
                    f"--init_from {IMAGENET} is for Keras applications; --model {self.model} "
                    "has no published weights"
                )
        elif self.init_from and not _checkpoint_exists(self.init_from):
            raise ConfigError(f"--init_from {self.init_from} does not exist")
        if self.stem not in ("imagenet", "cifar"):
            raise ConfigError(f"--stem must be imagenet or cifar, got {self.stem!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown --strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"unknown --mixed_precision {self.mixed_precision!r}; "
                f"valid: {', '.join(MIXED_PRECISION)}"
            )

    def weight_decay_for(self, stage: int) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        if self.is_application:
            return recipe.FULL_PRECISION_WEIGHT_DECAY
        return recipe.WEIGHT_DECAY[stage]

    def model_kwargs(self) -> dict:
        kwargs = {}
        if not self.is_application and zoo.backbone(self.model) == "reactnet18":
            kwargs["stem"] = self.stem
        if not self.is_application and torch_weights.is_torch_file(self.init_from):
            # PyTorch weights (the reference's, ReActNet's) need PyTorch's padding.
            kwargs["padding"] = "torch"
        return kwargs


def _checkpoint_exists(path: str) -> bool:
    """A file, a directory, or a TF checkpoint prefix (`ckpt-3` for `ckpt-3.index`)."""
    return os.path.exists(path) or os.path.exists(path + ".index")
