"""Per-layer views: sparsity bars, neuron collapse, layer density across compression ratios, and the
conservation of synaptic saliency (Tanaka et al. 2020, §4, Figs. 3-4)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from prunelab.reports.plots.style import (
    GUIDE,
    TAB,
    Curve,
    check_nonempty,
    colors,
    label_room,
    loglog_axes,
    new_figure,
    set_title,
)


def layer_sparsity_bars(layers: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Per-layer sparsity, grouped bars per layer with one bar per criterion, as in Frankle et al. 2021, App. J Fig. 15.

    ``layers``: criterion -> {layer name -> sparsity}; layers in input-to-output order (the union of
    the criteria's layers, in the order first seen).
    """
    check_nonempty(layers, "layers")
    names = list(dict.fromkeys(n for per in layers.values() for n in per))
    palette = colors(list(layers))
    width = 0.8 / len(layers)
    fig, axes = new_figure(width=max(5.0, 0.45 * len(names) * max(1, len(layers) / 2) + 1.5),
                           height=3.0 + label_room(names, 7, 60))
    ax = axes[0, 0]
    positions = np.arange(len(names))
    for k, (label, per) in enumerate(layers.items()):
        values = [100 * per.get(n, np.nan) for n in names]
        ax.bar(positions + (k - (len(layers) - 1) / 2) * width, values, width=width, label=label,
               color=palette[label])
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Layer sparsity (%)", fontsize=9)
    ax.set_ylim(0, 100)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(layers), 4), fontsize=7,
               frameon=False)
    set_title(fig, title)
    return fig


def neuron_collapse(curves: Mapping[str, Curve], title: str = "") -> Figure:
    """Percent of neurons (units, conv channels) whose incoming weights have sparsity >= s, against s,
    one line per criterion: Frankle et al. 2021, §5, Fig. 5 (neuron collapse of SynFlow).

    ``curves``: label -> Curve(x = thresholds s as fractions, y = fraction of neurons, err = std).
    """
    check_nonempty(curves, "curves")
    fig, axes = new_figure(width=4.6, height=3.4)
    ax = axes[0, 0]
    palette = colors(list(curves))
    for label, curve in curves.items():
        x, y, err = curve.arrays()
        ax.plot(100 * x, 100 * y, label=label, color=palette[label], linewidth=1.5)
        if err is not None:
            ax.fill_between(100 * x, 100 * (y - err), 100 * (y + err), color=palette[label], alpha=0.15, linewidth=0)
    ax.set_xlabel("Neuron sparsity threshold s (%)", fontsize=9)
    ax.set_ylabel("Neurons with sparsity ≥ s (%)", fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, frameon=False)
    set_title(fig, title)
    return fig


def layer_density_vs_compression(panels: Mapping[str, Sequence[tuple[float, Mapping[str, float]]]],
                                 title: str = "") -> Figure:
    """Fraction of weights remaining in each layer, one line per compression ratio, one panel per
    criterion: Tanaka et al. 2020, Fig. 2 ("where does layer collapse occur?").

    ``panels``: criterion -> [(compression ratio = total / kept, {layer -> density}), ...]. Higher
    compression is drawn lighter (never below 45% opacity, so that the highest ratio stays readable) and
    every ratio is named in the legend (the two extremes only past 8); a line with a fully pruned layer
    (layer collapse) is dashed, its empty layers drawn at the bottom edge with an x. The x-axis is
    labelled with the layer names (e.g. "conv1 (Conv2d)") in input-to-output order.
    """
    check_nonempty(panels, "panels")
    all_layers = {n for lines in panels.values() for _, per in lines for n in per}
    fig, axes = new_figure(ncols=len(panels), width=3.8, height=2.6 + label_room(all_layers, 6, 60), sharey=True)
    positive = [d for lines in panels.values() for _, per in lines for d in per.values() if d > 0]
    floor = min(positive) / 5 if positive else 1e-3
    for ax, (name, lines) in zip(axes[0], panels.items()):
        lines = sorted(lines, key=lambda item: item[0])
        ratios = [r for r, _ in lines]
        lo, hi = math.log10(max(min(ratios), 1.0)), math.log10(max(max(ratios), 1.0))
        layer_names = list(dict.fromkeys(n for _, per in lines for n in per))
        for ratio, per in lines:
            frac = 0.0 if hi == lo else (math.log10(max(ratio, 1.0)) - lo) / (hi - lo)
            density = np.array([per.get(n, np.nan) for n in layer_names], dtype=float)
            collapsed = np.nan_to_num(density, nan=1.0) <= 0
            shown = np.where(collapsed, floor, density)
            named = len(ratios) <= 8 or ratio in (ratios[0], ratios[-1])
            ax.plot(np.arange(len(layer_names)), shown, color=colors([name])[name], alpha=1.0 - 0.55 * frac,
                    linestyle="--" if collapsed.any() else "-", linewidth=1.6,
                    label=f"{ratio:.3g}x" if named else None)
            if collapsed.any():
                ax.plot(np.flatnonzero(collapsed), np.full(collapsed.sum(), floor), "x", color="black", markersize=5)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("Layer (input → output)", fontsize=8)
        ax.set_xticks(np.arange(len(layer_names)))
        ax.set_xticklabels(layer_names, fontsize=6, rotation=60, ha="right")
        ax.legend(fontsize=7, frameon=False, title="compression", title_fontsize=7)
    axes[0, 0].set_ylabel("Fraction of weights remaining", fontsize=9)
    set_title(fig, title)
    return fig


def conservation(neurons: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 layers: Mapping[str, tuple[int, float]], title: str = "") -> Figure:
    """Two panels of Tanaka et al. 2020, §4: (left, Fig. 3) each hidden neuron's total incoming score against its
    total outgoing score, with the identity as a dotted line (Theorem 1); (right, Fig. 4) each
    layer's average score against the inverse of its number of weights, with the line average =
    mean total / size as a dotted line (Theorem 2: every layer's total is the same).

    ``neurons``: layer -> (incoming totals, outgoing totals) of its neurons; ``layers``: layer ->
    (number of weights, total score of the layer).
    """
    check_nonempty(layers, "layers")
    fig, axes = new_figure(ncols=2, width=4.0, height=3.6)
    ax = axes[0, 0]
    palette = colors(list(neurons))
    values = []
    for name, (s_in, s_out) in neurons.items():
        s_in, s_out = np.abs(np.asarray(s_in, float)), np.abs(np.asarray(s_out, float))
        keep = (s_in > 0) & (s_out > 0)
        ax.scatter(s_in[keep], s_out[keep], s=6, alpha=0.6, color=palette[name], label=name, linewidths=0)
        values.extend(s_in[keep])
        values.extend(s_out[keep])
    if values:
        lo, hi = min(values), max(values)
        ax.plot([lo, hi], [lo, hi], ":", label="$S^{in} = S^{out}$ (Theorem 1)", **GUIDE)
        loglog_axes(ax)
    ax.set_xlabel("Incoming score  $S^{in}$", fontsize=9)
    ax.set_ylabel("Outgoing score  $S^{out}$", fontsize=9)
    ax.set_title("Neuron-wise conservation", fontsize=9)
    if neurons:
        ax.legend(fontsize=6, frameon=False, markerscale=2)

    ax = axes[0, 1]
    size = np.array([float(n) for n, _ in layers.values()])
    total = np.abs(np.array([float(t) for _, t in layers.values()]))
    inverse, average = 1 / size, total / size
    ax.scatter(inverse, average, s=18, color=TAB[0], zorder=2)
    if (total > 0).all():
        line_x = np.array([inverse.min(), inverse.max()])
        ax.plot(line_x, line_x * total.mean(), ":", label="equal layer totals (Theorem 2)", **GUIDE)
        loglog_axes(ax)
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel("1 / layer size", fontsize=9)
    ax.set_ylabel("Average score", fontsize=9)
    ax.set_title("Layer size vs average score", fontsize=9)
    set_title(fig, title)
    return fig
