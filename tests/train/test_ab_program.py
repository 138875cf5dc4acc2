"""`larq-nobn-train --model reactnet18_ab`: A&B BNN's ReActNet-18 trained by the program,
stage 1 then stage 2, with `model.fit` under A&B BNN's recipe (a tiny run on the digits)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import larq_nobn
from tests.train.program import run_main

FLAGS = ["--model=reactnet18_ab", "--stem=cifar", "--dataset=digits", "--epochs=1"]
FLAGS += ["--batch_size=32", "--train_subset=64", "--image_size=8", "--verbose=0"]


class OptimizerRecorder(tf.keras.callbacks.Callback):
    """What the compiled optimizer of a stage's fit is."""

    def __init__(self, stage: int, seen: dict):
        super().__init__()
        self.stage, self.seen = stage, seen

    def on_train_begin(self, logs=None):
        agc = self.model.optimizer
        adam = agc.inner_optimizer
        decays = {}  # by kind, of every layer but the classifier: {decayed or not}
        for w in self.model.trainable_weights:
            if not w.name.startswith("fc/"):
                kind = w.name.split("/")[-1].split(":")[0]
                decays.setdefault(kind, set()).add(adam.decays(w))
        self.seen[self.stage] = {
            "clip": agc.clip_factor,
            "weight_decay": adam.weight_decay,
            "learning_rate": adam._learning_rate.initial_learning_rate,
            "decays": decays,
        }


@pytest.mark.slow(120)
def test_reactnet18_ab_trains_both_stages_with_ab_bnns_recipe(tmp_path):
    seen = {}
    model_dir = str(tmp_path / "run")
    code = run_main(
        *FLAGS,
        f"--model_dir={model_dir}",
        callbacks=lambda stage: [OptimizerRecorder(stage, seen)],
    )
    assert code == 0
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    config = metrics["config"]
    assert (config["recipe"], config["learning_rate"], config["agc_clip"]) == ("ab", 1e-3, 1e-3)
    assert set(metrics["stages"]) == {"1", "2"}
    for stage in ("1", "2"):
        assert metrics["stages"][stage]["steps"] == 64 // 32
        assert np.isfinite(metrics["stages"][stage]["test_loss"])
    # Stage 1 decays (5e-6) kernels, gains and biases, never the PReLU exponents; stage 2
    # decays nothing; both clip at 0.001 and start at 1e-3.
    decays = {"kernel": {True}, "gain": {True}, "bias": {True}, "log2_slope": {False}}
    assert seen[1] == {
        "clip": 1e-3,
        "weight_decay": 5e-6,
        "learning_rate": 1e-3,
        "decays": decays,
    }
    assert seen[2]["weight_decay"] is None and seen[2]["clip"] == 1e-3

    for name in larq_nobn.__all__:  # registers the Keras classes before the files are read
        getattr(larq_nobn, name)
    stage1, stage2 = (
        tf.keras.models.load_model(os.path.join(model_dir, f"stage{stage}", "model.keras"))
        for stage in (1, 2)
    )
    assert stage1.name == stage2.name == "reactnet18_ab"
    conv1, conv2 = (model.get_layer("block2_conv3x3") for model in (stage1, stage2))
    assert isinstance(conv1.input_quantizer, larq_nobn.SigmoidSign)
    assert conv1.kernel_quantizer is None and conv2.kernel_quantizer is not None
    # The exponents (-3 at first) were trained by both stages.
    for model in (stage1, stage2):
        slopes = [layer for layer in model.layers if isinstance(layer, larq_nobn.QuantizedPReLU)]
        assert len(slopes) == 16
        exponents = np.concatenate([layer.log2_slope.numpy() for layer in slopes])
        assert np.any(exponents != -3.0)
    assert not np.array_equal(
        stage1.get_layer("block1_rprelu_prelu").log2_slope.numpy(),
        stage2.get_layer("block1_rprelu_prelu").log2_slope.numpy(),
    )
