"""Stage-2 BN-free zoo models convert to larq-compute-engine binary convolutions."""

import numpy as np
import pytest

import zoo
from larq_nobn import export

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
