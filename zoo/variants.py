"""The zoo's variants by name: norms, stages, paddings, stems (no TensorFlow imported).

`norm` selects the variant of "BNN - BN = ?" (see `blocks`); `stage` 1 has real weights,
2 binary weights; `padding` pads as Keras or as PyTorch; `stem` is ReActNet-18's first
layer, for ImageNet-sized or CIFAR-sized images.
"""

NORMS = ("bn", "nobn", "none")
STAGES = (1, 2)
PADDINGS = ("keras", "torch")
STEMS = ("imagenet", "cifar")  # ReActNet-18's
# The backbones whose residual blocks `zoo.signal_propagation_layers` names.
SPP_BACKBONES = ("reactnet18", "reactnet_a")
