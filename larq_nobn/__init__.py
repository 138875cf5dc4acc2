"""larq-nobn: binary neural networks without batch normalization, for larq and Keras.

Implements the three tools of "BNN - BN = ?: Training Binary Neural Networks without
Batch Normalization" (Chen et al., CVPR-W 2021, https://arxiv.org/abs/2104.08215):
scaled weight standardization, adaptive gradient clipping and the alpha/beta residual
scaling (the latter lives in the `larq_nobn.zoo` models).
"""

import os
import sys

from larq_nobn import _support

_support.check()  # Python and TensorFlow in the supported ranges, before TensorFlow loads

# larq needs Keras 2. Since TensorFlow 2.16 `tf.keras` means Keras 3 unless this is set
# before TensorFlow resolves `tf.keras`; set it here so `import larq_nobn` just works.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _check_keras_2() -> None:
    if "tensorflow" not in sys.modules:
        return
    import tensorflow as tf
    import tensorflow.keras as tf_dot_keras  # bound when TensorFlow was first imported
    import tf_keras

    layer = tf_keras.layers.Layer
    if tf.keras.layers.Layer is not layer or tf_dot_keras.layers.Layer is not layer:
        raise ImportError(
            "larq_nobn needs Keras 2 (tf-keras), but TensorFlow was already imported with "
            "Keras 3 behind `tf.keras`. Set the environment variable TF_USE_LEGACY_KERAS=1 "
            "before TensorFlow is imported (for example `export TF_USE_LEGACY_KERAS=1`, or "
            "`os.environ['TF_USE_LEGACY_KERAS'] = '1'` at the top of your script), or import "
            "larq_nobn before tensorflow."
        )


_check_keras_2()

# The public names, imported on first use (PEP 562): `import larq_nobn` itself imports no
# TensorFlow, so that a program can check its input before paying for it.
_LAZY = {
    "WeightStandardization": "constraints",
    "QuantConv2D": "conv",
    "conv2d": "conv",
    "conv_gradients": "conv",
    "set_conv_gradients": "conv",
    "LearnableBias": "layers",
    "ScaledWSConv2D": "layers",
    "ScaledWSQuantConv2D": "layers",
    "AGC": "optimizers",
    "AdaptiveGradientClipping": "optimizers",
    "TorchAdam": "optimizers",
    "MagnitudeAwareSteSign": "quantizers",
    "SigmoidSign": "quantizers",
    "QuantizedPReLU": "layers",
    "reuse_freed_memory": "memory",
    "BlockStatistics": "spp",
    "signal_propagation": "spp",
    "scaled_standardize": "unitwise",
    "scaled_ws_kernel": "unitwise",
    "standardize": "unitwise",
    "unitwise_norm": "unitwise",
}


_SUBMODULES = frozenset(
    ("constraints", "conv", "export", "layers", "memory", "optimizers", "quantizers", "quiet")
    + ("registry", "spp", "spp_plot", "unitwise")
)


def _load_public_names() -> None:
    """Imports every public name at once, as an eager import would: every Keras class (and
    alias such as "weight_standardization") is registered from then on."""
    import importlib

    if "tensorflow" not in sys.modules:
        from larq_nobn.quiet import tensorflow_noise_filtered

        with tensorflow_noise_filtered():  # CUDA plugin registration lines on CPU machines
            import tensorflow  # noqa: F401
    for public, module in _LAZY.items():
        globals()[public] = getattr(importlib.import_module(f"{__name__}.{module}"), public)


def __getattr__(name: str):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load_public_names()
    return globals()[name]


class _RegisterWhenTensorFlowLoads:
    """A one-shot import hook: once TensorFlow is imported, by whoever imports it, the
    public names are loaded, so that `import larq_nobn` followed by
    `tf.keras.models.load_model(path)` finds larq_nobn's classes registered, as it did when
    `import larq_nobn` imported them itself."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            sys.modules[fullname] = module  # as the import system would, before the names load
            try:
                _load_public_names()
            except Exception:  # noqa: BLE001 - raised again, with its message, on first use
                pass

        spec.loader.exec_module = exec_then_register
        return spec


if "tensorflow" in sys.modules:  # its cost is paid already: register now
    _load_public_names()
else:
    sys.meta_path.insert(0, _RegisterWhenTensorFlowLoads())


__version__ = "0.1.0"

__all__ = [
    "AGC",
    "AdaptiveGradientClipping",
    "BlockStatistics",
    "LearnableBias",
    "MagnitudeAwareSteSign",
    "QuantConv2D",
    "QuantizedPReLU",
    "ScaledWSConv2D",
    "ScaledWSQuantConv2D",
    "SigmoidSign",
    "TorchAdam",
    "WeightStandardization",
    "conv2d",
    "conv_gradients",
    "reuse_freed_memory",
    "scaled_standardize",
    "scaled_ws_kernel",
    "set_conv_gradients",
    "signal_propagation",
    "standardize",
    "unitwise_norm",
]
