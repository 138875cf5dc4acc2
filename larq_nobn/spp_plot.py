"""Signal propagation plots: several variants side by side, at initialization and trained.

```python
from larq_nobn import spp_plot
spp_plot.plot_signal_propagation({"bn": bn_stats, "nobn": nobn_stats}, "spp.png")
```
The statistics are `larq_nobn.signal_propagation`'s. matplotlib (the `plot` extra:
`pip install "larq-nobn[plot]"`) is imported when a plot is drawn, not before. The command
that plots the zoo's variants is the program's: `larq-nobn-spp` (`larq_nobn.train.spp`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from larq_nobn.spp import BlockStatistics, signal_propagation

if TYPE_CHECKING:
    import matplotlib.figure

STATISTICS = (
    ("squared_mean", "average channel squared mean"),
    ("variance", "average channel variance"),
    ("residual_variance", "residual branch: average channel variance"),
)
COLORS = {"bn": "tab:blue", "nobn": "tab:green", "none": "tab:red"}


def plot_signal_propagation(
    statistics: Mapping[str, Sequence[BlockStatistics]],
    path: str | os.PathLike,
    *,
    trained: Mapping[str, Sequence[BlockStatistics]] | None = None,
    title: str = "Signal propagation",
    transitions: Sequence[str] = (),
) -> matplotlib.figure.Figure:
    """Writes a PNG with one panel per statistic and one line per variant.

    Solid lines are `statistics` (e.g. at initialization), dashed lines `trained`. A panel's
    y axis is logarithmic when its values are positive and span more than a factor of 10.

    Args:
        statistics: per variant (e.g. "bn", "nobn", "none"; one or more), the output of
            `larq_nobn.signal_propagation`. All variants must have the same blocks.
        path: where to write the PNG.
        trained: optional statistics of trained models, keyed like `statistics`.
        title: the figure's title.
        transitions: names of blocks to mark with a vertical line (e.g. stride-2 blocks).

    Returns:
        The matplotlib `Figure` written (one `Axes` per statistic).

    Raises:
        ValueError: if there are no variants, or the variants' blocks differ, or `trained`
            has a variant `statistics` lacks.
    """
    Figure, FigureCanvasAgg = figure_classes()
    trained = dict(trained or {})
    if not statistics or set(trained) - set(statistics):
        raise ValueError(
            f"Need one or more variants and trained ones among them, got {list(statistics)} "
            f"and trained {list(trained)}."
        )
    names = [block.name for block in next(iter(statistics.values()))]
    for variant, stats in [*statistics.items(), *trained.items()]:
        if [block.name for block in stats] != names:
            raise ValueError(f"The blocks of {variant!r} differ from {names}.")
    x = np.arange(len(names))
    # Sides that are whole pixels in binary floating point too: a height of 4.6 inches
    # (459.99... pixels) gave 459 pixels with matplotlib 3.10 and 460 with 3.11.
    figure = Figure(figsize=(15, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(STATISTICS))
    for ax, (field, label) in zip(axes, STATISTICS, strict=True):
        values = []
        for line_style, runs in (("-", statistics), ("--", trained)):
            for variant, stats in runs.items():
                y = [getattr(block, field) for block in stats]
                values += y
                state = "init" if line_style == "-" else "trained"
                ax.plot(
                    x,
                    y,
                    line_style,
                    marker=".",
                    color=COLORS.get(variant),
                    label=f"{variant} ({state})",
                )
        for i, name in enumerate(transitions):
            ax.axvline(
                names.index(name),
                color="0.6",
                ls=":",
                label="stride 2 (beta reset)" if not i else None,
            )
        if min(values) > 0 and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("residual block")
        ax.set_xticks(x, names, rotation=90, fontsize=7)
        ax.grid(True, which="major", alpha=0.3)
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    figure.suptitle(title, fontsize=11)
    figure.savefig(path, dpi=100)
    return figure


def write_signal_propagation_plot(
    models: Mapping[str, tf.keras.Model],
    images: np.ndarray | tf.Tensor,
    path: str | os.PathLike,
    *,
    trained: Mapping[str, tf.keras.Model] | None = None,
    training: bool = True,
    title: str = "Signal propagation",
    transitions: Sequence[str] = (),
    layers_of: Callable[[tf.keras.Model], Mapping] | None = None,
    **layers,
) -> matplotlib.figure.Figure:
    """Measures `signal_propagation` of each model on `images` and plots the variants.

    For one trained zoo model: `write_signal_propagation_plot({"nobn": initial_twin}, images,
    path, trained={"nobn": model}, layers_of=zoo.signal_propagation_layers)`, the twin
    rebuilt as the model was before training.

    Args:
        models: per variant, a model (e.g. at initialization).
        images: one batch all models accept.
        path: where to write the PNG.
        trained: optional trained models, keyed like `models` (dashed lines).
        training: run the models in training mode, so batch norm uses the batch's
            statistics (at initialization its moving averages make it the identity).
        title: the figure's title.
        transitions: names of blocks to mark with a vertical line.
        layers_of: a model's `block_outputs` and `residual_outputs`, for models whose
            layers differ (e.g. `zoo.signal_propagation_layers`).
        **layers: `block_outputs` and `residual_outputs` of every model (without
            `layers_of`).

    Returns:
        The matplotlib `Figure` written (see `plot_signal_propagation`).
    """

    def measure(runs: Mapping[str, tf.keras.Model]) -> dict[str, list[BlockStatistics]]:
        return {
            variant: signal_propagation(
                model, images, training=training, **(layers_of(model) if layers_of else layers)
            )
            for variant, model in runs.items()
        }

    return plot_signal_propagation(
        measure(models),
        path,
        trained=measure(trained or {}),
        title=title,
        transitions=transitions,
    )


def figure_classes() -> tuple[type, type]:
    """matplotlib's `Figure` and `FigureCanvasAgg`: figures without pyplot's global state.

    Raises:
        ImportError: one line saying how to install matplotlib, if it is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'Plotting needs matplotlib: pip install "larq-nobn[plot]" (or matplotlib).'
        ) from error
    return Figure, FigureCanvasAgg
