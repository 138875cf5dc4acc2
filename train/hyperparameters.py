"""The numbers of the paper's recipe (no TensorFlow imported: the flags' defaults, help and
checks use them before it is).

From the reference scripts of "BNN - BN = ?" (VITA-Group/BNN_NoBN, `train.py` and
`script/*.sh`); `recipe` applies them.
"""

LEARNING_RATE = 5e-4
ADAM_EPSILON = 1e-8  # torch's default (Keras' is 1e-7)
WEIGHT_DECAY = {1: 1e-5, 2: 0.0}  # per stage
AGC_CLIP = 0.02
AGC_EPS = 1e-3
AGC_EXCLUDE = r"^fc/"  # the final classifier is never clipped
# AGC's unit per parameter follows the reference's PyTorch layout, which differs from the
# Keras one for two kinds: a gain is (C, 1, 1, 1) there (each channel clipped on its own),
# a PReLU slope (C,) (one vector). Kernels (per output channel), LearnableBias and BN
# vectors (whole) get the same units from the default rule.
AGC_UNITS = {r"/gain:\d+$": "element", r"/alpha:\d+$": "tensor"}
# The reference decays every parameter that is 4-D in its layout (conv kernels, gains,
# LearnableBias shifts), not PReLU slopes, BN's gamma and beta, nor the classifier.
DECAY_EXCLUDE = (r"/alpha:\d+$", r"/gamma:\d+$", r"/beta:\d+$", r"^fc/")
# Full-precision Keras applications (teachers): a standard ImageNet-style SGD recipe.
FULL_PRECISION_LEARNING_RATE = 0.1  # from scratch, for batch 256 (scaled linearly)
FINE_TUNE_LEARNING_RATE = 0.01  # from ImageNet weights (--init_from imagenet), batch 256
FULL_PRECISION_MOMENTUM = 0.9  # Nesterov
FULL_PRECISION_WEIGHT_DECAY = 1e-4
FULL_PRECISION_DECAY_EXCLUDE = (r"/gamma:\d+$", r"/beta:\d+$", r"/bias:\d+$")  # BN, biases
LABEL_SMOOTHING = 0.1
BATCH_SIZE = 256
LOSSES = ("ce", "ls", "kd")
