"""`--init_from` takes a PyTorch checkpoint of the reference (mapped by zoo.torch_weights)."""

import os

import numpy as np
import pytest

from larq_nobn import zoo
from tests.train.program import run_main
from tests.zoo.optional_torch import torch, torch_models

pytestmark = pytest.mark.torch  # see tests/zoo/optional_torch.py

MODEL = ["--model=reactnet18_nobn", "--stem=cifar", "--dataset=digits", "--stages=1"]
MODEL += ["--epochs=1", "--batch_size=32", "--train_subset=64", "--image_size=8"]
MODEL += ["--verbose=0"]


@pytest.mark.slow(35)
def test_training_starts_from_a_torch_checkpoint(tmp_path):
    """One stage at lr 1e-6 from a reference checkpoint: the run pads as PyTorch does, and
    its weights start from the file's (within two tiny Adam steps of them)."""
    net = torch_models.randomize(torch_models.ReActNet18("nobn", 1, 10, stem="cifar"), 0)
    path = str(tmp_path / "checkpoint.pth.tar")
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    model_dir = str(tmp_path / "run")

    flags = [*MODEL, "--learning_rate=1e-6", f"--init_from={path}", f"--model_dir={model_dir}"]
    assert run_main(*flags) == 0

    import tensorflow as tf

    trained = tf.keras.models.load_model(
        os.path.join(model_dir, "stage1", "model.keras"), compile=False
    )
    assert "block5_conv3x3_subsample" in {layer.name for layer in trained.layers}
    start = zoo.from_torch(path, stage=1, input_shape=(8, 8, 3)).get_weights()
    diffs = [np.abs(a - b).max() for a, b in zip(start, trained.get_weights(), strict=True)]
    assert 0 < max(diffs) < 1e-5


def test_a_torch_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    net = torch_models.randomize(torch_models.ReActNet18("bn", 1, 10, stem="cifar"), 0)
    path = str(tmp_path / "bn.pth")
    torch.save(net.state_dict(), path)
    capsys.readouterr()

    code = run_main(*MODEL, f"--init_from={path}", f"--model_dir={tmp_path / 'run'}")

    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert "--init_from" in lines[0] and "does not fit --model reactnet18_nobn" in lines[0]
    assert "lacks tensor conv1.gain" in lines[0]
