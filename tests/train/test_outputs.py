"""Tests for train/outputs.py's curves plot."""

import matplotlib
from matplotlib import image

from larq_nobn.train import outputs


def test_plot_curves_writes_a_png_without_touching_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    rows = [{"epoch": e, "loss": 1 / e, "accuracy": e / 4, "val_loss": 1.2 / e} for e in (1, 2)]
    path = tmp_path / "curves.png"
    outputs.plot_curves({1: rows, 2: rows}, str(path))
    assert image.imread(path).shape[:2] == (400, 1100)
    assert matplotlib.get_backend() == backend
