"""Learning curves: each configuration's seeds as thin lines around their mean and its band."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from prunelab.reports.plots.style import (
    Curve,
    check_nonempty,
    colors,
    fixed_layout,
    lr_drop_lines,
    new_figure,
    set_title,
    shared_legend,
)


@dataclass(frozen=True)
class Replicates:
    """The curves of one configuration over its seeds: ``mean`` (x = step, y = mean, err = std over the
    seeds, NaN where one seed) and ``runs``, one Curve per seed."""

    mean: Curve
    runs: Sequence[Curve] = ()


def learning_curves(panels: Mapping[str, Mapping[str, Replicates]], lr_drops: Sequence[int] = (),
                    title: str = "", xlabel: str = "Training iteration") -> Figure:
    """Metrics against the training step, one panel per metric (e.g. test accuracy (%), test loss), one
    colour per configuration: each seed's run as a thin line, the mean over the seeds as a thick line with
    a ±1 standard deviation band (drawn only where there are two seeds or more). ``lr_drops``: iterations
    where the learning rate drops, drawn as dash-dotted guides.

    ``panels``: panel title (its y label) -> {configuration label -> :class:`Replicates`}.
    """
    check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    fig, axes = new_figure(ncols=len(panels), width=4.6, height=3.5, layout="none")  # fixed_layout below
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, rep in lines.items():
            if rep.runs:  # one collection for the seeds: a Line2D each costs several times more to draw
                ax.add_collection(LineCollection([np.column_stack(run.arrays()[:2]) for run in rep.runs],
                                                 colors=palette[label], linewidths=0.7, alpha=0.35, zorder=2))
            x, y, err = rep.mean.arrays()
            ax.plot(x, y, color=palette[label], linewidth=1.8, label=label, zorder=3,
                    marker="o" if x.size == 1 else None, markersize=3)
            if err is not None and np.any(err > 0):
                ax.fill_between(x, y - err, y + err, color=palette[label], alpha=0.18, linewidth=0, zorder=1)
        lr_drop_lines(ax, lr_drops)
        ax.set_ylabel(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    rows = shared_legend(fig, axes.flat, max_columns=4)
    set_title(fig, title)
    fixed_layout(fig, axes[0], legend_rows=rows)  # no constrained layout: a fifth of the drawing's time
    return fig
