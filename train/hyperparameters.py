"""The training recipes of the zoo's binary networks, each number beside its source (no
TensorFlow imported: the flags' defaults, help and checks use them before it is).

Two recipes train the same two stages (binary activations, then binary weights too,
initialized from stage 1) with Adam, a learning rate decayed linearly to 0 over each stage,
AGC and coupled L2 on the stage 1 weights:

- `PAPER`: "BNN - BN = ?" (VITA-Group/BNN_NoBN, `train.py` and `script/*.sh`);
- `AB`: A&B BNN (Ruichen0424/AB-BNN, `Train_Cifar_step1.ipynb`, `Train_Cifar_step2.ipynb`,
  `Train_ImageNet_step1.ipynb`, `Train_ImageNet_step2.ipynb`).

`recipe` applies them; `RECIPES` names them for `--recipe`, whose default follows the model
(`default_recipe`).
"""

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

ADAM_EPSILON = 1e-8  # torch's default (Keras' is 1e-7); both recipes use torch's Adam
AGC_EPS = 1e-3  # both recipes' `adaptive_clip_grad(eps=1e-3)`
AGC_EXCLUDE = r"^fc/"  # the final classifier is never clipped (both: names without "fc")
# AGC's unit per parameter follows the reference's PyTorch layout, which differs from the
# Keras one for two kinds: a gain is (C, 1, 1, 1) there (each channel clipped on its own),
# a PReLU slope (C,) (one vector). Kernels (per output channel), LearnableBias and BN
# vectors (whole), and A&B's quantized PReLU exponents (C,) (whole, as its `L_alpha`) get
# the same units from the default rule.
AGC_UNITS = {r"/gain:\d+$": "element", r"/alpha:\d+$": "tensor"}
# Both recipes decay every parameter that is 4-D in the PyTorch layout (conv kernels, gains,
# LearnableBias shifts) or has "conv" in its name: not PReLU slopes, A&B's quantized PReLU
# exponents (`L_alpha`, which its notebooks also exclude by name), BN's gamma and beta, nor
# the classifier.
DECAY_EXCLUDE = (r"/alpha:\d+$", r"/log2_slope:\d+$", r"/gamma:\d+$", r"/beta:\d+$", r"^fc/")
# Full-precision Keras applications (teachers): a standard ImageNet-style SGD recipe.
FULL_PRECISION_LEARNING_RATE = 0.1  # from scratch, for batch 256 (scaled linearly)
FINE_TUNE_LEARNING_RATE = 0.01  # from ImageNet weights (--init_from imagenet), batch 256
FULL_PRECISION_MOMENTUM = 0.9  # Nesterov
FULL_PRECISION_WEIGHT_DECAY = 1e-4
FULL_PRECISION_DECAY_EXCLUDE = (r"/gamma:\d+$", r"/beta:\d+$", r"/bias:\d+$")  # BN, biases
LABEL_SMOOTHING = 0.1
LOSSES = ("ce", "ls", "kd")
IMAGENET = "imagenet2012"  # the dataset whose recipe differs (--dataset)
NORMALIZATIONS = ("dataset", "imagenet")  # CIFAR's own mean and std, or ImageNet's
PADDINGS = ("constant", "reflect")  # how CIFAR's random crops pad: zeros, or mirrored


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A two-stage training recipe of the zoo's binary networks.

    Args:
        name: its `--recipe` name (`RECIPES`).
        source: where its numbers come from.
        learning_rate: Adam's initial learning rate, decayed linearly to 0 over each stage.
        weight_decay: coupled L2 of stage 1 and stage 2 on the decayed set
            (`DECAY_EXCLUDE` spares the rest), by stage.
        agc_clip: AGC's clip factor on small images (CIFAR; the program's digits and
            Fashion-MNIST too).
        imagenet_agc_clip: AGC's clip factor on ImageNet.
        epochs: epochs per stage on the real datasets.
        batch_size: the global batch.
        cifar_normalization: what CIFAR's images are normalized with: "dataset" (CIFAR's
            own per-channel mean and std) or "imagenet" (ImageNet's, `IMAGENET_MEAN` and
            `IMAGENET_STD` in `data`).
        cifar_padding: how CIFAR's 4-pixel random crops pad: "constant" (zeros) or
            "reflect".
        schedule: how the source steps its linear decay (the program decays per step).
        losses: the source's losses (the program's `--loss` default stays `ce`).
    """

    name: str
    source: str
    learning_rate: float
    weight_decay: Mapping[int, float]
    agc_clip: float
    imagenet_agc_clip: float
    epochs: int
    batch_size: int
    cifar_normalization: str
    cifar_padding: str
    schedule: str
    losses: str

    def __post_init__(self):
        if self.cifar_normalization not in NORMALIZATIONS:
            raise ValueError(f"`cifar_normalization` must be one of {NORMALIZATIONS}")
        if self.cifar_padding not in PADDINGS:
            raise ValueError(f"`cifar_padding` must be one of {PADDINGS}")
        object.__setattr__(self, "weight_decay", MappingProxyType(dict(self.weight_decay)))

    def agc_clip_for(self, dataset: str) -> float:
        """AGC's clip factor on `dataset` (a `--dataset` name)."""
        return self.imagenet_agc_clip if dataset == IMAGENET else self.agc_clip


PAPER = Recipe(
    name="paper",
    source="BNN - BN = ? (VITA-Group/BNN_NoBN, train.py and script/*.sh)",
    learning_rate=5e-4,
    weight_decay={1: 1e-5, 2: 0.0},
    agc_clip=0.02,
    imagenet_agc_clip=0.02,
    epochs=256,
    batch_size=256,
    cifar_normalization="dataset",
    cifar_padding="constant",
    schedule="LambdaLR(1 - epoch / epochs), stepped at the start of each epoch",
    losses="kd from timm's dm_nfnet_f0 (default), ce, ls",
)
AB = Recipe(
    name="ab",
    source=(
        "A&B BNN (Ruichen0424/AB-BNN, Train_Cifar_step1/2.ipynb, Train_ImageNet_step1/2.ipynb)"
    ),
    learning_rate=1e-3,
    # Stage 2 starts from stage 1's best weights.
    weight_decay={1: 5e-6, 2: 0.0},
    agc_clip=0.001,
    imagenet_agc_clip=0.02,
    epochs=256,
    batch_size=256,
    # Its CIFAR transforms: ImageNet's mean and std, Pad(4, reflect), flip, RandomCrop(32);
    # its released CIFAR weights expect these inputs. ImageNet: the paper's augmentation
    # and evaluation crop (resize 256, center 224).
    cifar_normalization="imagenet",
    cifar_padding="reflect",
    schedule="LambdaLR(1 - epoch / 256), stepped at the end of each epoch",
    # Its notebooks set AMP = False: float32 training (their GradScaler path is unused,
    # and AGC runs on that path only).
    losses="CIFAR: ce; ImageNet: kd from torchvision's ResNet-34 (IMAGENET1K_V1)",
)
RECIPES: Mapping[str, Recipe] = MappingProxyType({PAPER.name: PAPER, AB.name: AB})


def default_recipe(design: str | None) -> str:
    """The `--recipe` of a model of `design` (`zoo.DESIGNS`; None for an application):
    A&B BNN's for its design, the paper's for everything else."""
    return AB.name if design == "ab" else PAPER.name


# The paper's numbers by their former names (the program's and benchmarks' users).
LEARNING_RATE = PAPER.learning_rate
WEIGHT_DECAY = PAPER.weight_decay  # per stage
AGC_CLIP = PAPER.agc_clip
BATCH_SIZE = PAPER.batch_size
