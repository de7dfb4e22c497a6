"""Accuracy against sparsity on a log-density axis (Frankle et al. 2021, Figs. 3, 4, 8, 9) and against the
pruning step (§6, Fig. 6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from prunelab.reports.plots.style import (
    Curve,
    check_nonempty,
    colors,
    dense_line,
    errorbar_curves,
    lr_drop_lines,
    new_figure,
    percent_label,
    set_title,
    shared_legend,
)

_MIN_DENSITY = 1e-6
_LEGEND_INSIDE = 6  # more entries than this go below the axes
_PANELS_PER_ROW = 4  # ablation panels: eleven criteria in one row made a figure 40 inches wide


def _sparsity_axis(ax, sparsities: Sequence[float]) -> None:
    """x = density on a log scale, reversed, labelled in sparsity %: the axis of Frankle et al. 2021, Figs. 3 and 8.

    Equal steps on it are equal compression factors, so sparsities such as 50%, 75%, 87.5%, ...
    (each a further halving of the weights, Frankle et al. 2021, App. C) are evenly spaced.
    """
    ticks = sorted({round(float(s), 6) for s in sparsities if np.isfinite(s)})
    if len(ticks) > 2:  # drop ticks whose labels would overlap (closer than 1/12 of the axis)
        logs = np.log10(np.maximum(1 - np.array(ticks), _MIN_DENSITY))
        gap = (logs.max() - logs.min()) / 12
        kept = [0]
        for i in range(1, len(ticks)):
            if abs(logs[i] - logs[kept[-1]]) >= gap and (i == len(ticks) - 1 or abs(logs[-1] - logs[i]) >= gap):
                kept.append(i)
        if kept[-1] != len(ticks) - 1:
            kept.append(len(ticks) - 1)
        ticks = [ticks[i] for i in kept]
    densities = [max(1 - s, _MIN_DENSITY) for s in ticks]
    if densities:  # limits before the scale: autoscaling one point to a log axis would warn of a zero range
        low, high = min(densities), max(densities)
        ax.set_xlim(high * 1.25, low / 1.25) if high > low else ax.set_xlim(high * 2, low / 2)
    ax.set_xscale("log")
    if densities:
        ax.set_xticks(densities)
        ax.set_xticklabels([percent_label(s) for s in ticks], rotation=45, ha="right")
        ax.minorticks_off()
    else:
        ax.invert_xaxis()
    ax.set_xlabel("Sparsity (%)  [log density scale]", fontsize=8)


def accuracy_vs_sparsity(curves: Mapping[str, Curve], dense: tuple[float, float | None] | None = None,
                         title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy against sparsity, one line per criterion, as in Frankle et al. 2021, Figs. 3 and 8.

    ``curves``: label -> Curve(x = sparsity (fraction pruned), y = mean accuracy, err = std over
    seeds). ``dense``: (mean, std) of the unpruned network, drawn as a gray dashed line with a
    ±std band. Labels such as "magnitude after training", "snip", "synflow" get the paper's colours.
    """
    check_nonempty(curves, "curves")
    fig, axes = new_figure(width=5.4, height=3.8)
    ax = axes[0, 0]
    errorbar_curves(ax, curves, transform=lambda x: np.maximum(1 - x, _MIN_DENSITY))
    dense_line(ax, dense)
    _sparsity_axis(ax, [s for c in curves.values() for s in c.arrays()[0]])
    ax.set_ylabel(ylabel, fontsize=9)
    if len(ax.get_legend_handles_labels()[1]) > _LEGEND_INSIDE:
        shared_legend(fig, [ax], max_columns=3)  # below the axes, the figure grown for it: inside it hid the lines
    else:
        ax.legend(fontsize=7, frameon=False)
    set_title(fig, title)
    return fig


def ablation_panels(panels: Mapping[str, Mapping[str, Curve]], dense: tuple[float, float | None] | None = None,
                    title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """One panel per criterion, one line per ablation, as in Frankle et al. 2021,
    Figs. 4 (at init.) and 9 (after training).

    ``panels``: criterion -> {ablation label -> Curve(sparsity, accuracy, std)}; the labels
    "unmodified", "shuffle", "reinit", "invert", "fixed_variance" take the paper's colours.
    """
    check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    ncols = min(len(panels), _PANELS_PER_ROW)
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=3.6, height=3.4, sharey=True)
    for ax, (name, lines) in zip(axes.flat, panels.items()):
        errorbar_curves(ax, lines, transform=lambda x: np.maximum(1 - x, _MIN_DENSITY), palette=palette)
        dense_line(ax, dense)
        _sparsity_axis(ax, [s for c in lines.values() for s in c.arrays()[0]])
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(ylabel, fontsize=9)
    shared_legend(fig, list(axes.flat)[:len(panels)], max_columns=6)
    set_title(fig, title)
    return fig


def accuracy_vs_step(curves: Mapping[str, Curve], dense: tuple[float, float | None] | None = None,
                     lr_drops: Sequence[int] = (), title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy when pruning at the iteration on the x-axis, one line per criterion, as in Frankle et al. 2021, Fig. 6.

    ``curves``: label -> Curve(x = pruning (or, for LTR, rewinding) iteration, accuracy, std). Vertical
    dash-dotted lines mark ``lr_drops``, the iterations where the learning rate drops (as in the paper).
    """
    check_nonempty(curves, "curves")
    fig, axes = new_figure(width=5.4, height=3.8)
    ax = axes[0, 0]
    errorbar_curves(ax, curves)
    dense_line(ax, dense)
    lr_drop_lines(ax, lr_drops)
    ax.set_xlabel("Pruning iteration", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    set_title(fig, title)
    return fig
