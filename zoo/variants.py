"""The zoo's variants by name: norms, stages, paddings, stems, designs (no TensorFlow imported).

`norm` selects the variant of "BNN - BN = ?" (see `blocks`); `stage` 1 has real weights,
2 binary weights; `padding` pads as Keras or as PyTorch; `stem` is the first layer, for
ImageNet-sized or CIFAR-sized images; `design` is whose BN-free block the `nobn` models use.
"""

import dataclasses

NORMS = ("bn", "nobn", "none")
STAGES = (1, 2)
PADDINGS = ("keras", "torch")
STEMS = ("imagenet", "cifar")
# The backbones whose residual blocks `zoo.signal_propagation_layers` names.
SPP_BACKBONES = ("reactnet18", "reactnet_a")


@dataclasses.dataclass(frozen=True)
class Design:
    """Whose BN-free residual block a `nobn` model is built of.

    Args:
        name: the design's name (`DESIGNS`).
        alpha: the default residual branch scale.
        activation_quantizer: the sign before every binary convolution (a larq quantizer
            name).
        quantized_prelu: whether RPReLU's slopes are powers of two (`QuantizedPReLU`)
            rather than free (`PReLU`, torch's initial 0.25).
        scaled_shortcut: whether a downsampling shortcut takes the beta-scaled block
            input (the paper's reference) or the block input itself (A&B BNN; beta then
            scales only what enters a sign, and folds into the bias before it).
    """

    name: str
    alpha: float
    activation_quantizer: str
    quantized_prelu: bool
    scaled_shortcut: bool


DESIGNS = {
    # "BNN - BN = ?" (Chen et al. 2021), VITA-Group/BNN_NoBN `models/*_bf.py`.
    "reference": Design(
        "reference",
        alpha=0.2,
        activation_quantizer="approx_sign",
        quantized_prelu=False,
        scaled_shortcut=True,
    ),
    # A&B BNN (Ma et al. 2024), Ruichen0424/AB-BNN `Network/*_Qaw.py`: alpha 0.25, a sign
    # with a sigmoid's gradient (steepness 3), quantized RPReLU.
    "ab": Design(
        "ab",
        alpha=0.25,
        activation_quantizer="sigmoid_sign",
        quantized_prelu=True,
        scaled_shortcut=False,
    ),
}
