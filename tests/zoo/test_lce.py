"""Stage-2 BN-free zoo models convert to larq-compute-engine binary convolutions."""

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from larq_nobn import export, zoo

pytest.importorskip("larq_compute_engine")


def test_reactnet18_nobn_converts_to_16_binary_convolutions():
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(32, 32, 3), num_classes=10
    )
    flatbuffer = export.convert(model)
    counts = export.op_counts(flatbuffer)
    # 16 binary 3x3 convolutions; the stem and the 3 downsample 1x1 (real inputs) stay float.
    assert counts["LceBconv2d"] == 16
    assert counts["CONV_2D"] == 4
    x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
    assert export.top1_agreement(model, flatbuffer, x) == 1.0


def test_reactnet_a_nobn_converts_to_31_binary_convolutions():
    model = zoo.get_model("reactnet_a_nobn", stage=2, input_shape=(32, 32, 3), num_classes=10)
    counts = export.op_counts(export.convert(model))
    # 13 binary 3x3 + 8 single and 5 pairs of binary 1x1 convolutions; the first stays float.
    assert counts["LceBconv2d"] == 31
    assert counts["CONV_2D"] == 1


def test_rescalings_seen_only_by_signs_are_folded_into_the_biases():
    """`export.fold_scales_before_signs`: same outputs, fewer multiplications."""
    model = zoo.get_model(
        "reactnet18_nobn", stage=2, stem="cifar", input_shape=(16, 16, 3), num_classes=10
    )
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, larq_nobn.LearnableBias):  # zeros at init: make them matter
            layer.set_weights([rng.normal(0, 0.5, size=w.shape) for w in layer.get_weights()])
    folded = export.fold_scales_before_signs(export.fold_weight_standardization(model))

    def rescalings(m):
        return {layer.name for layer in m.layers if isinstance(layer, tf.keras.layers.Rescaling)}

    betas = {name for name in rescalings(model) if name.endswith("_beta")}
    downsampling = {f"block{i}_beta" for i in (5, 9, 13)}  # they also feed a pooled shortcut
    assert betas > downsampling
    assert rescalings(folded) == rescalings(model) - betas | downsampling
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    counts = export.op_counts(export.convert(model))
    assert counts["MUL"] == 3 and counts["LceBconv2d"] == 16


def test_exported_graph_does_not_depend_on_the_gradients():
    # Inference has no gradients: the same operators compute the same outputs. (The bn
    # variant, whose convolutions reach the converter as they are; the nobn variant's are
    # folded into larq's QuantConv2D first.)
    model = zoo.get_model(
        "reactnet18_bn", stage=2, stem="cifar", input_shape=(16, 16, 3), num_classes=10
    )
    images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype("float32")
    flatbuffers = {}
    for mode in ("forward", "tensorflow"):
        with larq_nobn.conv_gradients(mode):
            flatbuffers[mode] = export.convert(model)
    counts = export.op_counts(flatbuffers["forward"])
    assert counts == export.op_counts(flatbuffers["tensorflow"])
    assert counts["LceBconv2d"] == 16 and "IDENTITY" not in counts
    np.testing.assert_array_equal(
        export.predict(flatbuffers["forward"], images),
        export.predict(flatbuffers["tensorflow"], images),
    )
