"""Tests for train/outputs.py's curves plot."""

import math

import matplotlib
import numpy as np
from matplotlib import image

from larq_nobn.train import outputs


def test_plot_curves_draws_every_stage_without_touching_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    rows = {
        1: [{"epoch": e, "loss": 1 / e, "accuracy": e / 4, "val_loss": 1.2 / e} for e in (1, 2)],
        2: [{"epoch": e, "loss": 0.4 / e, "accuracy": 0.6, "val_accuracy": 0.5} for e in (1, 2, 3)],
    }
    path = tmp_path / "curves.png"
    figure = outputs.plot_curves(rows, str(path))
    assert image.imread(path).shape[:2] == (400, 1100)
    assert matplotlib.get_backend() == backend
    loss, accuracy = figure.axes
    for ax, metric in ((loss, "loss"), (accuracy, "accuracy")):
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", metric)
        lines = {line.get_label(): line for line in ax.get_lines() if line.get_label()[0] != "_"}
        assert set(lines) == {f"stage {s} {split}" for s in (1, 2) for split in ("train", "test")}
        for stage, offset in ((1, 0), (2, 2)):  # stage 2's epochs continue stage 1's
            for prefix, split, style in (("", "train", "-"), ("val_", "test", "--")):
                line = lines[f"stage {stage} {split}"]
                assert line.get_linestyle() == style
                np.testing.assert_array_equal(
                    line.get_xdata(), [offset + row["epoch"] for row in rows[stage]]
                )
                expected = [row.get(prefix + metric, math.nan) for row in rows[stage]]
                np.testing.assert_array_equal(line.get_ydata(), expected)  # NaN: not logged
        # The boundary between the stages: a vertical line after stage 1's last epoch.
        boundaries = [line for line in ax.get_lines() if line.get_label()[0] == "_"]
        assert {line.get_xdata()[0] for line in boundaries} >= {2}
