"""Training cost (Frankle et al. 2021, Fig. 1; Evci et al. 2020, App. H): density over the protocol's steps
and accuracy against total training FLOPs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from prunelab.reports.plots.style import (
    LINESTYLES,
    MARKERS,
    Curve,
    check_nonempty,
    colors,
    panel_grid,
    set_title,
    shared_legend,
)


def _log_cost_axis(ax, values: Sequence[float]) -> None:
    """A log x-axis around ``values``, labelled at powers of ten, or at three values where the range
    holds none (a few tiny runs): matplotlib's minor labels overlap on such short ranges."""
    ax.set_xscale("log")
    x = np.asarray([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    if x.size == 0:
        return
    low, high = x.min() / 1.35, x.max() * 1.35
    ax.set_xlim(low, high)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if math.floor(math.log10(high)) == math.floor(math.log10(low)):
        ticks = np.geomspace(x.min(), x.max(), 3) if x.max() > x.min() else x[:1]
        ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])


def density_over_time(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], float]]],
                      title: str = "") -> Figure:
    """Overall density against the cumulative training step, one step function per protocol, one panel
    per sparsity target: Frankle et al. 2021, Fig. 1 (what each way of pruning costs over training).

    ``panels``: panel title -> {label -> (steps, densities, end)}: the density from each listed step on
    (a run's ``density_curve``) and the step at which its training ends; the last density holds until
    ``end``. Each line is drawn through the points (steps..., end) with a "steps-post" draw style.
    """
    check_nonempty(panels, "panels")
    labels = [n for n in dict.fromkeys(label for lines in panels.values() for label in lines) if n != "dense"]
    palette = colors(["dense", *labels])
    fig, axes = panel_grid(len(panels), width=4.4, height=3.2, sharey=True)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, (steps, densities, end) in lines.items():
            x = np.asarray(steps, dtype=float)
            y = np.asarray(densities, dtype=float)
            if x.shape != y.shape or x.size == 0:
                raise ValueError(f"a density curve needs as many steps as densities (at least one), got "
                                 f"{x.shape} and {y.shape}")
            if end < x[-1]:
                raise ValueError(f"a density curve ends at step {end}, before its last breakpoint {x[-1]:g}")
            dense = label == "dense"  # gray dashed on top, as elsewhere; the styles cycle so overlaps show
            style = "--" if dense else LINESTYLES[labels.index(label) % len(LINESTYLES)]
            ax.step(np.append(x, end), np.append(y, y[-1]), where="post", label=label, color=palette[label],
                    linestyle=style, linewidth=1.2 if dense else 1.6, alpha=0.9, zorder=3 if dense else 2)
        ax.set_ylim(0, 1.05)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("Training step (cumulative, dense pre-training included)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Density (fraction of weights kept)", fontsize=8)
    shared_legend(fig, axes.flat, max_columns=4)
    set_title(fig, title)
    return fig


def accuracy_vs_cost(panels: Mapping[str, Mapping[str, Curve]], title: str = "",
                     xlabel: str = "Total training FLOPs", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy against training cost on a log x-axis, one colour and marker per protocol (the same in
    every panel), one panel per sparsity target (Evci et al. 2020, Fig. 2 left; Frankle et al. 2021, §7).

    ``panels``: panel title -> {label -> Curve(x = training FLOPs, y = mean accuracy, err = std over seeds)}.
    """
    check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    markers = {label: MARKERS[k % len(MARKERS)] for k, label in enumerate(labels)}
    fig, axes = panel_grid(len(panels), width=4.2, height=3.4, sharey=True)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        for label, curve in lines.items():
            x, y, err = curve.arrays()
            ax.errorbar(x, y, yerr=err, label=label, color=palette[label], marker=markers[label], markersize=6,
                        linestyle="-" if x.size > 1 else "none", linewidth=1.0, capsize=2.5, elinewidth=0.9)
        _log_cost_axis(ax, [v for curve in lines.values() for v in curve.arrays()[0]])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=9)
    shared_legend(fig, axes.flat, max_columns=4)
    set_title(fig, title)
    return fig
