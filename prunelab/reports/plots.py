"""Figures in the style of the papers, with matplotlib; every function takes plain data, returns a Figure.

Figures are built on ``matplotlib.figure.Figure`` and drawn with the Agg canvas, never through
``pyplot``: no display is needed, no global figure list grows in a long report, and a notebook's
own backend is left alone. :func:`to_png` and :func:`save` render one.

Colours follow Frankle et al. (2021, §4, Fig. 3): magnitude after training blue,
random orange, magnitude green, SNIP red, GraSP purple, SynFlow brown, the dense network gray; the
ablations of Fig. 4 are unmodified blue, shuffle orange, reinitialize green, invert red, fixed
variance purple.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm, to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


@dataclass(frozen=True)
class Curve:
    """One line: ``x``, mean ``y`` and optional error bars ``err`` (std over seeds; NaN = none)."""

    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        x = np.asarray(self.x, dtype=float)
        y = np.asarray(self.y, dtype=float)
        if x.shape != y.shape:
            raise ValueError(f"a curve needs as many x as y values, got {x.shape} and {y.shape}")
        err = None
        if self.err is not None:
            err = np.asarray(self.err, dtype=float)
            if err.shape != y.shape:
                raise ValueError(f"a curve needs one error per point, got {err.shape} for {y.shape}")
            err = np.where(np.isnan(err), 0.0, err)
        order = np.argsort(x, kind="stable")
        return x[order], y[order], None if err is None else err[order]


# ---- style ---------------------------------------------------------------------------------------

_TAB = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
        "#17becf"]
_NAMED = {
    "magnitude after training": _TAB[0], "lottery": _TAB[0], "ltr": _TAB[0],
    "random": _TAB[1], "magnitude": _TAB[2], "snip": _TAB[3], "grasp": _TAB[4], "synflow": _TAB[5],
    "dense": _TAB[7],
    "unmodified": _TAB[0], "shuffle": _TAB[1], "reinit": _TAB[2], "invert": _TAB[3], "fixed_variance": _TAB[4],
    "sign": _TAB[5], "sigma_sign": _TAB[6],
}
_SPARE = [_TAB[6], _TAB[8], _TAB[9], "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label: the papers' colour for a known method or ablation, distinct spares otherwise
    (colours repeat only once every distinct one is taken, e.g. for the 15 layers of VGG-16)."""
    out, used, spare = {}, set(), iter(_SPARE + _TAB * 3)
    extra = iter([to_hex(c) for c in colormaps["tab20"].colors] * (len(labels) + 1))
    for label in labels:
        key = str(label).lower()
        color = _NAMED.get(key)
        if color is None:
            color = next((c for k, c in _NAMED.items() if key.startswith(k + " ") or key.startswith(k + "_")), None)
        if color is None or color in used:
            color = next((c for c in spare if c not in used), None) or next(extra)
        used.add(color)
        out[label] = color
    return out


def _figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2, **kwargs):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.flat:
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=8)
    return fig, axes


def _title(fig: Figure, title: str) -> None:
    """The figure's title, wrapped to the figure's width (a one-panel figure is narrower than a long title)."""
    if title:
        per_line = max(20, int(fig.get_figwidth() * 12))  # characters of 10-point text per line
        fig.suptitle(textwrap.fill(title, per_line), fontsize=10)


def _shared_legend(fig: Figure, axes, max_columns: int, title: str | None = None) -> None:
    """One legend below the panels with every label of every panel once (a label may be missing from
    some panels, e.g. an fc-only variant from the convolution panels)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(n, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=max(1, min(len(handles), max_columns)), fontsize=7, frameon=False, title=title, title_fontsize=7)


def _check_nonempty(data, what: str) -> None:
    if not data:
        raise ValueError(f"nothing to plot: {what} is empty")


# The formats a report writes every figure in: PNG for the page, PDF and SVG (vector) for a paper.
FORMATS = ("png", "pdf", "svg")


# Vector files as papers want them: TrueType fonts in PDFs (venues reject Type 3 fonts), text as text in SVGs
# (editable, and smaller than glyph outlines).
_VECTOR_STYLE = {"pdf.fonttype": 42, "svg.fonttype": "none"}


def to_bytes(fig: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure as a ``fmt`` file (png, pdf, svg; anything matplotlib writes), drawn by the Agg canvas
    (PDF and SVG keep lines and text as vectors; ``dpi`` sets the resolution of their embedded images)."""
    import matplotlib

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    metadata = {"Creator": "prunelab"} if fmt in ("pdf", "svg") else None
    with matplotlib.rc_context(_VECTOR_STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, drawn by the Agg canvas."""
    return to_bytes(fig, "png", dpi)


def render(fig: Figure, formats: Sequence[str] = FORMATS, dpi: int = 110) -> dict[str, bytes]:
    """The figure in each of ``formats``. The constrained layout is solved once, by the first render, then
    frozen: the others show the same layout and cost about a third less."""
    out = {}
    for fmt in formats:
        out[fmt] = to_bytes(fig, fmt, dpi)
        if fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")
    return out


def save(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(fig, dpi))
    return path


# ---- accuracy against sparsity -------------------------------------------------------------------

_MIN_DENSITY = 1e-6


def _sparsity_axis(ax, sparsities: Sequence[float]) -> None:
    """x = density on a log scale, reversed, labelled in sparsity %: the axis of Frankle et al. 2021, Figs. 3 and 8.

    Equal steps on it are equal compression factors, so sparsities such as 50%, 75%, 87.5%, ...
    (each a further halving of the weights, Frankle et al. 2021, App. C) are evenly spaced.
    """
    ax.set_xscale("log")
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
    if ticks:
        densities = [max(1 - s, _MIN_DENSITY) for s in ticks]
        ax.set_xticks(densities)
        ax.set_xticklabels([_percent(s) for s in ticks], rotation=45, ha="right")
        ax.minorticks_off()
        low, high = min(densities), max(densities)
        ax.set_xlim(high * 1.25, low / 1.25) if high > low else ax.set_xlim(high * 2, low / 2)
    else:
        ax.invert_xaxis()
    ax.set_xlabel("Sparsity (%)  [log density scale]", fontsize=8)


def _percent(s: float) -> str:
    p = 100 * s
    if abs(p - round(p)) < 0.05 and p < 99.5:
        return f"{p:.0f}"
    return f"{p:.1f}" if p < 99.5 else f"{p:.2f}".rstrip("0").rstrip(".")


# Reference lines (the dense accuracy, learning-rate drops, the identities of Tanaka et al. 2020, Figs. 3-4) share
# one style, dark and wide enough to read in print next to the data's coloured lines.
GUIDE = {"color": "#404040", "linewidth": 1.4, "zorder": 1}


def _dense_line(ax, dense: tuple[float, float | None] | None, label: str = "dense") -> None:
    if dense is None:
        return
    mean, std = dense
    if mean is None or not np.isfinite(mean):
        return
    ax.axhline(mean, linestyle="--", label=label, **GUIDE)
    if std is not None and np.isfinite(std) and std > 0:
        ax.axhspan(mean - std, mean + std, color=_NAMED["dense"], alpha=0.2, linewidth=0, zorder=0)


def _lr_drop_lines(ax, steps: Sequence[int]) -> None:
    """Dash-dotted vertical lines at the learning-rate drops, one legend entry for all."""
    for k, step in enumerate(steps):
        ax.axvline(step, linestyle="-.", label="learning-rate drop" if k == 0 else None, **GUIDE)


def _errorbar_curves(ax, curves: Mapping[str, Curve], transform=lambda x: x, palette=None) -> None:
    palette = palette or colors(list(curves))
    for label, curve in curves.items():
        x, y, err = curve.arrays()
        ax.errorbar(transform(x), y, yerr=err, label=label, color=palette[label], marker="o", markersize=3.5,
                    linewidth=1.4, capsize=2.5, elinewidth=0.9)


def accuracy_vs_sparsity(curves: Mapping[str, Curve], dense: tuple[float, float | None] | None = None,
                         title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy against sparsity, one line per criterion, as in Frankle et al. 2021, Figs. 3 and 8.

    ``curves``: label -> Curve(x = sparsity (fraction pruned), y = mean accuracy, err = std over
    seeds). ``dense``: (mean, std) of the unpruned network, drawn as a gray dashed line with a
    ±std band. Labels such as "magnitude after training", "snip", "synflow" get the paper's colours.
    """
    _check_nonempty(curves, "curves")
    fig, axes = _figure(width=5.4, height=3.8)
    ax = axes[0, 0]
    _errorbar_curves(ax, curves, transform=lambda x: np.maximum(1 - x, _MIN_DENSITY))
    _dense_line(ax, dense)
    _sparsity_axis(ax, [s for c in curves.values() for s in c.arrays()[0]])
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    _title(fig, title)
    return fig


def ablation_panels(panels: Mapping[str, Mapping[str, Curve]], dense: tuple[float, float | None] | None = None,
                    title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """One panel per criterion, one line per ablation, as in Frankle et al. 2021,
    Figs. 4 (at init.) and 9 (after training).

    ``panels``: criterion -> {ablation label -> Curve(sparsity, accuracy, std)}; the labels
    "unmodified", "shuffle", "reinit", "invert", "fixed_variance" take the paper's colours.
    """
    _check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    fig, axes = _figure(ncols=len(panels), width=3.6, height=3.4, sharey=True)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        _errorbar_curves(ax, lines, transform=lambda x: np.maximum(1 - x, _MIN_DENSITY), palette=palette)
        _dense_line(ax, dense)
        _sparsity_axis(ax, [s for c in lines.values() for s in c.arrays()[0]])
        ax.set_title(name, fontsize=9)
    axes[0, 0].set_ylabel(ylabel, fontsize=9)
    _shared_legend(fig, axes.flat, max_columns=6)
    _title(fig, title)
    return fig


def accuracy_vs_step(curves: Mapping[str, Curve], dense: tuple[float, float | None] | None = None,
                     lr_drops: Sequence[int] = (), title: str = "", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy when pruning at the iteration on the x-axis, one line per criterion, as in Frankle et al. 2021, Fig. 6.

    ``curves``: label -> Curve(x = pruning (or, for LTR, rewinding) iteration, accuracy, std). Vertical
    dash-dotted lines mark ``lr_drops``, the iterations where the learning rate drops (as in the paper).
    """
    _check_nonempty(curves, "curves")
    fig, axes = _figure(width=5.4, height=3.8)
    ax = axes[0, 0]
    _errorbar_curves(ax, curves)
    _dense_line(ax, dense)
    _lr_drop_lines(ax, lr_drops)
    ax.set_xlabel("Pruning iteration", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    _title(fig, title)
    return fig


# ---- training curves ----------------------------------------------------------------------------

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
    _check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    fig, axes = _figure(ncols=len(panels), width=4.6, height=3.5)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, rep in lines.items():
            for run in rep.runs:
                x, y, _ = run.arrays()
                ax.plot(x, y, color=palette[label], linewidth=0.7, alpha=0.35, zorder=2)
            x, y, err = rep.mean.arrays()
            ax.plot(x, y, color=palette[label], linewidth=1.8, label=label, zorder=3,
                    marker="o" if x.size == 1 else None, markersize=3)
            if err is not None and np.any(err > 0):
                ax.fill_between(x, y - err, y + err, color=palette[label], alpha=0.18, linewidth=0, zorder=1)
        _lr_drop_lines(ax, lr_drops)
        ax.set_ylabel(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    _shared_legend(fig, axes.flat, max_columns=4)
    _title(fig, title)
    return fig


# ---- per-layer views -----------------------------------------------------------------------------

def layer_sparsity_bars(layers: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Per-layer sparsity, grouped bars per layer with one bar per criterion, as in Frankle et al. 2021, App. J Fig. 15.

    ``layers``: criterion -> {layer name -> sparsity}; layers in input-to-output order (the union of
    the criteria's layers, in the order first seen).
    """
    _check_nonempty(layers, "layers")
    names = list(dict.fromkeys(n for per in layers.values() for n in per))
    palette = colors(list(layers))
    width = 0.8 / len(layers)
    fig, axes = _figure(width=max(5.0, 0.45 * len(names) * max(1, len(layers) / 2) + 1.5), height=4.0)
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
    _title(fig, title)
    return fig


def neuron_collapse(curves: Mapping[str, Curve], title: str = "") -> Figure:
    """Percent of neurons (units, conv channels) whose incoming weights have sparsity >= s, against s,
    one line per criterion: Frankle et al. 2021, §5, Fig. 5 (neuron collapse of SynFlow).

    ``curves``: label -> Curve(x = thresholds s as fractions, y = fraction of neurons, err = std).
    """
    _check_nonempty(curves, "curves")
    fig, axes = _figure(width=4.6, height=3.4)
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
    _title(fig, title)
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
    _check_nonempty(panels, "panels")
    fig, axes = _figure(ncols=len(panels), width=3.8, height=3.4, sharey=True)
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
    _title(fig, title)
    return fig


# ---- conservation of synaptic saliency -----------------------------------------------------------

def conservation(neurons: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                 layers: Mapping[str, tuple[int, float]], title: str = "") -> Figure:
    """Two panels of Tanaka et al. 2020, §4: (left, Fig. 3) each hidden neuron's total incoming score against its
    total outgoing score, with the identity as a dotted line (Theorem 1); (right, Fig. 4) each
    layer's average score against the inverse of its number of weights, with the line average =
    mean total / size as a dotted line (Theorem 2: every layer's total is the same).

    ``neurons``: layer -> (incoming totals, outgoing totals) of its neurons; ``layers``: layer ->
    (number of weights, total score of the layer).
    """
    _check_nonempty(layers, "layers")
    fig, axes = _figure(ncols=2, width=4.0, height=3.6)
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
        _loglog(ax)
    ax.set_xlabel("Incoming score  $S^{in}$", fontsize=9)
    ax.set_ylabel("Outgoing score  $S^{out}$", fontsize=9)
    ax.set_title("Neuron-wise conservation", fontsize=9)
    if neurons:
        ax.legend(fontsize=6, frameon=False, markerscale=2)

    ax = axes[0, 1]
    size = np.array([float(n) for n, _ in layers.values()])
    total = np.abs(np.array([float(t) for _, t in layers.values()]))
    inverse, average = 1 / size, total / size
    ax.scatter(inverse, average, s=18, color=_TAB[0], zorder=2)
    if (total > 0).all():
        line_x = np.array([inverse.min(), inverse.max()])
        ax.plot(line_x, line_x * total.mean(), ":", label="equal layer totals (Theorem 2)", **GUIDE)
        _loglog(ax)
        ax.legend(fontsize=7, frameon=False)
    ax.set_xlabel("1 / layer size", fontsize=9)
    ax.set_ylabel("Average score", fontsize=9)
    ax.set_title("Layer size vs average score", fontsize=9)
    _title(fig, title)
    return fig


def _loglog(ax) -> None:
    """Log axes labelled at powers of ten only (minor labels overlap on short ranges)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())


# ---- mask similarity and weight evolution (Paganini & Forde 2020) --------------------------------------------

def jaccard_vs_iteration(panels: Mapping[str, Mapping[str, Curve]], reference: str = "",
                         title: str = "") -> Figure:
    """Jaccard distance (1 - IoU) between the masks of a reference pruning method and others, against
    the pruning iteration, one panel per layer: Paganini & Forde 2020, §4, Figs. 3-4.

    ``panels``: layer -> {compared method -> Curve(iteration, distance, std over seeds)}.
    """
    _check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(ncols=ncols, nrows=nrows, width=3.2, height=2.8, sharey=True)
    for ax, (layer, lines) in zip(axes.flat, panels.items()):
        _errorbar_curves(ax, lines, palette=palette)
        ax.set_title(layer, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Pruning iteration", fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("Jaccard distance", fontsize=8)
    _shared_legend(fig, axes.flat, max_columns=5, title=f"compared with {reference}" if reference else None)
    _title(fig, title)
    return fig


def first_layer_image(mask, input_shape: Sequence[int]) -> np.ndarray:
    """A first fully-connected layer's mask (units x inputs) averaged over units and reshaped to the
    input image (channels averaged): the fraction of units still connected to each pixel (Lee et al. 2019, Fig. 2)."""
    array = np.asarray(mask, dtype=float)
    c, h, w = (list(input_shape) + [1, 1])[:3] if len(input_shape) == 3 else (1, *input_shape)
    if array.ndim != 2 or array.shape[1] != c * h * w:
        raise ValueError(f"a first-layer mask must be (units, {c * h * w}) for inputs {tuple(input_shape)}, "
                         f"got {array.shape}")
    return array.mean(axis=0).reshape(c, h, w).mean(axis=0)


def mask_images(grid: Mapping[str, Mapping[str, np.ndarray]], title: str = "", normalize: bool = True) -> Figure:
    """A grid of images with values in [0, 1], rows and columns labelled: Lee et al. 2019, Fig. 2, where each image
    is the LeNet-300-100 first-layer mask averaged over units (bright = the pixel's weights survived).

    ``grid``: row label (e.g. sparsity) -> {column label (e.g. criterion) -> 2-D array}.
    ``normalize``: scale each image to its own maximum (printed under it), so that the pattern stays
    visible at high sparsity where few connections remain; else one 0-1 scale with a colour bar.
    """
    _check_nonempty(grid, "grid")
    cols = list(dict.fromkeys(c for row in grid.values() for c in row))
    # at least ~3.6 inches wide in all, so that the figure title fits over a single column
    fig, axes = _figure(ncols=len(cols), nrows=len(grid), width=max(1.7, 3.6 / len(cols)), height=1.9)
    image = None
    for i, (row_label, row) in enumerate(grid.items()):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            if col not in row:
                ax.set_visible(False)
                continue
            data = np.asarray(row[col], float)
            top = float(np.nanmax(data)) if normalize and data.size else 1.0
            image = ax.imshow(data, cmap="gray", vmin=0, vmax=top if top > 0 else 1.0, interpolation="nearest")
            if normalize:
                ax.set_xlabel(f"max {top:.2g}", fontsize=6)
            if i == 0:
                ax.set_title(col, fontsize=8)
            if j == 0:
                ax.set_ylabel(row_label, fontsize=8)
    if image is not None and not normalize:
        fig.colorbar(image, ax=axes, shrink=0.7, label="fraction of units connected")
    _title(fig, title)
    return fig


def kernel_grid(weight, mask, rows: str = "input", max_channels: int = 32) -> np.ndarray:
    """The (out, in, kh, kw) weights of a convolution laid out as a grid of kernels with one-pixel
    gaps: pruned weights are NaN (drawn gray), gaps -inf (drawn white). ``rows="input"`` puts
    input channels in rows and output channels in columns, as Paganini & Forde 2020, Fig. 5 does (an input channel that
    unstructured pruning removed entirely is then a gray row); ``rows="output"`` transposes it.
    At most ``max_channels`` of each axis are shown."""
    w = np.asarray(weight, dtype=float)
    m = np.asarray(mask, dtype=bool)
    if w.ndim != 4 or w.shape != m.shape:
        raise ValueError(f"kernel_grid needs (out, in, kh, kw) weight and mask of one shape, got {w.shape}, {m.shape}")
    if rows not in ("input", "output"):
        raise ValueError(f"rows must be 'input' or 'output', got {rows!r}")
    w = np.where(m, w, np.nan)[:max_channels, :max_channels]
    if rows == "input":
        w = w.transpose(1, 0, 2, 3)
    n_rows, n_cols, kh, kw = w.shape
    out = np.full((n_rows * (kh + 1) - 1, n_cols * (kw + 1) - 1), -np.inf)
    for r in range(n_rows):
        for c in range(n_cols):
            out[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = w[r, c]
    return out


def conv_masks(grid: Mapping[str, Mapping[str, tuple]], rows: str = "input", title: str = "") -> Figure:
    """Masked convolution weights as kernel grids (see :func:`kernel_grid`): pruned weights gray,
    kept positive weights red, negative blue, as in Paganini & Forde 2020, Fig. 5.

    ``grid``: row label (e.g. pruning iteration) -> {column label (e.g. pruning method) -> (weight,
    mask)} with (out, in, kh, kw) arrays.
    """
    _check_nonempty(grid, "grid")
    cols = list(dict.fromkeys(c for row in grid.values() for c in row))
    images = {(r, c): kernel_grid(*grid[r][c], rows=rows) for r in grid for c in grid[r]}
    finite = [np.abs(im[np.isfinite(im)]) for im in images.values()]
    scale = max((float(f.max()) for f in finite if f.size), default=1.0) or 1.0
    any_image = next(iter(images.values()))
    aspect = any_image.shape[0] / any_image.shape[1]
    fig, axes = _figure(ncols=len(cols), nrows=len(grid), width=3.4, height=max(1.2, 3.4 * aspect) + 0.4)
    import matplotlib as mpl

    cmap = mpl.colormaps["bwr"].with_extremes(bad="#9a9a9a", under="white")
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    shown = None
    for i, row_label in enumerate(grid):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.grid(False)
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if (row_label, col) not in images:
                ax.set_visible(False)
                continue
            image = images[(row_label, col)]
            data = np.where(np.isneginf(image), -2 * scale, image)  # gaps fall below the range: white
            shown = ax.imshow(data, cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(f"{col} — {row_label}", fontsize=8)
            if j == 0:
                ax.set_ylabel("input channel" if rows == "input" else "output channel", fontsize=7)
            if i == len(grid) - 1:
                ax.set_xlabel("output channel" if rows == "input" else "input channel", fontsize=7)
    if shown is not None:
        fig.colorbar(shown, ax=axes, shrink=0.6, label="weight (gray = pruned)")
    _title(fig, title)
    return fig


def weight_trajectories(panels: Mapping[str, tuple[Sequence[float], np.ndarray]], title: str = "",
                        xlabel: str = "Sparsity (%)") -> Figure:
    """Trained weight values at consecutive pruning levels, one line per weight, ending when the weight
    is pruned: Paganini & Forde 2020, §5, Figs. 6-7.

    ``panels``: layer -> (x: one value per level, e.g. sparsity in %, values: (levels, weights) with
    NaN where the weight is pruned).
    """
    _check_nonempty(panels, "panels")
    fig, axes = _figure(ncols=len(panels), width=4.2, height=3.4)
    for ax, (name, (x, values)) in zip(axes[0], panels.items()):
        values = np.asarray(values, dtype=float)
        x = np.asarray(x, dtype=float)
        if values.ndim != 2 or values.shape[0] != x.size:
            raise ValueError(f"weight trajectories need (levels, weights) values with {x.size} levels, "
                             f"got {values.shape}")
        palette = [_TAB[k % len(_TAB)] for k in range(values.shape[1])]
        for k in range(values.shape[1]):
            ax.plot(x, values[:, k], color=palette[k], linewidth=0.9, alpha=0.8, marker=".", markersize=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:.3g}" for v in x], rotation=45, fontsize=7)
    axes[0, 0].set_ylabel("Weight value after training", fontsize=9)
    _title(fig, title)
    return fig


# ---- training cost (Frankle et al. 2021, Fig. 1; Evci et al. 2020) ----------------------------------

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
_LINESTYLES = ["-", (0, (5, 1.5)), "-.", (0, (1, 1))]


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


def _panel_grid(n: int, width: float, height: float, max_columns: int = 3, **kwargs):
    ncols = min(n, max_columns)
    fig, axes = _figure(ncols=ncols, nrows=math.ceil(n / ncols), width=width, height=height, **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def density_over_time(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float], float]]],
                      title: str = "") -> Figure:
    """Overall density against the cumulative training step, one step function per protocol, one panel
    per sparsity target: Frankle et al. 2021, Fig. 1 (what each way of pruning costs over training).

    ``panels``: panel title -> {label -> (steps, densities, end)}: the density from each listed step on
    (a run's ``density_curve``) and the step at which its training ends; the last density holds until
    ``end``. Each line is drawn through the points (steps..., end) with a "steps-post" draw style.
    """
    _check_nonempty(panels, "panels")
    labels = [n for n in dict.fromkeys(label for lines in panels.values() for label in lines) if n != "dense"]
    palette = colors(["dense", *labels])
    fig, axes = _panel_grid(len(panels), width=4.4, height=3.2, sharey=True)
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
            style = "--" if dense else _LINESTYLES[labels.index(label) % len(_LINESTYLES)]
            ax.step(np.append(x, end), np.append(y, y[-1]), where="post", label=label, color=palette[label],
                    linestyle=style, linewidth=1.2 if dense else 1.6, alpha=0.9, zorder=3 if dense else 2)
        ax.set_ylim(0, 1.05)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("Training step (cumulative, dense pre-training included)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Density (fraction of weights kept)", fontsize=8)
    _shared_legend(fig, axes.flat, max_columns=4)
    _title(fig, title)
    return fig


def accuracy_vs_cost(panels: Mapping[str, Mapping[str, Curve]], title: str = "",
                     xlabel: str = "Total training FLOPs", ylabel: str = "Test accuracy (%)") -> Figure:
    """Accuracy against training cost on a log x-axis, one colour and marker per protocol (the same in
    every panel), one panel per sparsity target (Evci et al. 2020, Fig. 2 left; Frankle et al. 2021, §7).

    ``panels``: panel title -> {label -> Curve(x = training FLOPs, y = mean accuracy, err = std over seeds)}.
    """
    _check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    markers = {label: _MARKERS[k % len(_MARKERS)] for k, label in enumerate(labels)}
    fig, axes = _panel_grid(len(panels), width=4.2, height=3.4, sharey=True)
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
    _shared_legend(fig, axes.flat, max_columns=4)
    _title(fig, title)
    return fig
