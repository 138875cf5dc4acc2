"""The resolved configuration of a training run, validated before anything is written."""

import dataclasses
import os

from larq_nobn import zoo
from larq_nobn.train import data, recipe

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


class ConfigError(ValueError):
    """A bad flag or flag combination (one user-facing line)."""


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = "reactnet_nobn"
    dataset: str = "digits"
    model_dir: str | None = None
    data_dir: str | None = None
    stages: tuple[int, ...] = (1, 2)
    epochs: int | None = None  # per stage
    batch_size: int | None = None  # global
    learning_rate: float = recipe.LEARNING_RATE
    weight_decay: float | None = None  # None: the paper's value per stage
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

    def resolved(self) -> "Config":
        """Fills in per-dataset defaults and checks every value; raises ConfigError."""
        if self.model not in zoo.MODEL_NAMES:
            raise ConfigError(
                f"unknown --model {self.model!r}; valid: {', '.join(zoo.MODEL_NAMES)}"
            )
        if self.dataset not in data.DATASET_NAMES:
            raise ConfigError(
                f"unknown --dataset {self.dataset!r}; valid: {', '.join(data.DATASET_NAMES)}"
            )
        defaults = DATASET_DEFAULTS[self.dataset]
        config = dataclasses.replace(
            self,
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
        if self.loss not in recipe.LOSSES:
            raise ConfigError(f"unknown --loss {self.loss!r}; valid: {', '.join(recipe.LOSSES)}")
        if self.loss == "kd" and not self.teacher:
            raise ConfigError("--loss kd needs --teacher (a saved Keras model)")
        for name in ("teacher", "init_from"):
            path = getattr(self, name)
            if path and not _checkpoint_exists(path):
                raise ConfigError(f"--{name} {path} does not exist")
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
        return recipe.WEIGHT_DECAY[stage] if self.weight_decay is None else self.weight_decay

    def model_kwargs(self) -> dict:
        kwargs = {}
        if zoo.backbone(self.model) == "reactnet18":
            kwargs["stem"] = self.stem
        return kwargs


def _checkpoint_exists(path: str) -> bool:
    """A file, a directory, or a TF checkpoint prefix (`ckpt-3` for `ckpt-3.index`)."""
    return os.path.exists(path) or os.path.exists(path + ".index")
