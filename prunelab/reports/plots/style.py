"""What every plot shares: the :class:`Curve` they take, the papers' colours, the figure, title, legend and
guide-line helpers, and rendering to PNG, PDF and SVG (:func:`to_bytes`, :func:`render`, :func:`save`)."""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
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


TAB = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
       "#17becf"]
_NAMED = {
    "magnitude after training": TAB[0], "lottery": TAB[0], "ltr": TAB[0],
    "random": TAB[1], "magnitude": TAB[2], "snip": TAB[3], "grasp": TAB[4], "synflow": TAB[5],
    "dense": TAB[7],
    "unmodified": TAB[0], "shuffle": TAB[1], "reinit": TAB[2], "invert": TAB[3], "fixed_variance": TAB[4],
    "sign": TAB[5], "sigma_sign": TAB[6],
}
_SPARE = [TAB[6], TAB[8], TAB[9], "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def colors(labels: Sequence[str]) -> dict[str, str]:
    """A colour per label: the papers' colour for a known method or ablation, distinct spares otherwise
    (colours repeat only once every distinct one is taken, e.g. for the 15 layers of VGG-16)."""
    out, used, spare = {}, set(), iter(_SPARE + TAB * 3)
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


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2,
               layout: str | None = "constrained", **kwargs):
    """A figure of ``nrows`` x ``ncols`` panels of ``width`` x ``height`` inches in the papers' style, laid out by
    ``layout`` ("none": by the caller, e.g. with :func:`fixed_layout`)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout=layout)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.flat:
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.tick_params(labelsize=8)
    return fig, axes


def label_room(labels: Sequence[str], fontsize: float, degrees: float) -> float:
    """Inches below an axis that tick ``labels`` of ``fontsize`` points rotated by ``degrees`` take (an upper
    bound: 0.6 em per character, DejaVu Sans' mean width is about 0.55 em). Figures grow by it, so that long
    layer names (``encoder.layers.encoder_layer_11.self_attention (MultiheadAttention)``) never squeeze the
    panels to nothing."""
    longest = max((len(str(label)) for label in labels), default=0)
    angle = math.radians(degrees)
    return (longest * _EM_PER_CHAR * math.sin(angle) + math.cos(angle)) * fontsize / 72


# An upper bound of the width of a character of DejaVu Sans (mean about 0.55 em), for room planned before drawing.
_EM_PER_CHAR = 0.6
# A legend column beside its label: the handle, the pad after it and the spacing to the next column
# (matplotlib's handlelength 2, handletextpad 0.8 and columnspacing 2, in em).
_LEGEND_COLUMN_EM = 2.0 + 0.8 + 2.0
# A legend row (a line of text and matplotlib's labelspacing 0.5) and the border pads above and below, in em.
_LEGEND_ROW_EM = 1.6
_LEGEND_BORDER_EM = 0.4
TITLE_PT = 10  # the figure title's font size (set_title, fixed_layout)


def set_title(fig: Figure, title: str) -> None:
    """The figure's title, wrapped to the figure's width (a one-panel figure is narrower than a long title)."""
    if title:
        per_line = max(20, int(fig.get_figwidth() * 12))  # characters of TITLE_PT-point text per line
        fig.suptitle(textwrap.fill(title, per_line), fontsize=TITLE_PT)


def fixed_layout(fig: Figure, axes, legend_rows: int = 0, legend_fontsize: float = 7) -> None:
    """Place one row of ``axes`` (y labels left, x labels below, a shared legend of ``legend_rows`` rows below
    them, the title above) with margins computed from the sizes of their texts, instead of the constrained
    layout's measuring every text before drawing (a fifth of the drawing's time). Sizes are upper bounds from
    the fonts' metrics (:func:`text_width`, 1.2 em a line), so nothing is cut; tick labels are those the axes will
    draw, from their locators and formatters at their current limits. Call it once every artist is in, on a
    figure without a layout engine (``new_figure(..., layout="none")``)."""
    width, height = fig.get_figwidth(), fig.get_figheight()
    rc = matplotlib.rcParams
    ticks_x = (rc["xtick.major.size"] + rc["xtick.major.pad"]) / 72
    ticks_y = (rc["ytick.major.size"] + rc["ytick.major.pad"]) / 72
    labelpad, pad = rc["axes.labelpad"] / 72, _PAD
    y_room, x_below, x_overhang, offset_above = 0.0, 0.0, 0.0, False
    for ax in axes:
        ax.get_xlim(), ax.get_ylim()  # autoscale now, as the drawing will
        ylabels, yoffset = _tick_labels(ax.yaxis)
        xlabels, _ = _tick_labels(ax.xaxis)
        ysize, xsize = _tick_fontsize(ax.yaxis, "ytick"), _tick_fontsize(ax.xaxis, "xtick")
        ylabel = ax.yaxis.label.get_fontsize() * _LINE_EM / 72 + labelpad if ax.get_ylabel() else 0.0
        xlabel = ax.xaxis.label.get_fontsize() * _LINE_EM / 72 + labelpad if ax.get_xlabel() else 0.0
        y_room = max(y_room, max((text_width(t, ysize) for t in ylabels), default=0.0) + ticks_y + ylabel)
        x_below = max(x_below, xsize * _LINE_EM / 72 + ticks_x + xlabel)
        x_overhang = max(x_overhang, max((text_width(t, xsize) for t in xlabels), default=0.0) / 2)
        offset_above = offset_above or bool(yoffset)
    title = fig.get_suptitle()
    top = pad + (len(title.splitlines()) * TITLE_PT * _LINE_EM / 72 + pad if title else 0.0) \
        + (8 * _LINE_EM / 72 if offset_above else 0.0)
    legend = legend_height(legend_rows, legend_fontsize) + 0.5 * legend_fontsize / 72  # and its borderaxespad
    left, right, bottom = pad + y_room, pad + x_overhang, pad + legend + pad + x_below
    between = y_room + x_overhang + 2 * pad
    n = len(axes)
    panel = (width - left - right - (n - 1) * between) / n
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=between / panel if n > 1 else 0.0)
    if title:
        fig.suptitle(title, fontsize=TITLE_PT, y=1 - pad / height)  # as set_title() set it, moved to the pad


def _tick_labels(axis) -> tuple[list[str], str]:
    """The major tick labels ``axis`` draws at its current view limits, and its offset text ("1e-5", "+2.302")."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    locs = [v for v in axis.get_major_locator()() if lo - span <= v <= hi + span]
    formatter = axis.get_major_formatter()
    return formatter.format_ticks(locs), formatter.get_offset()


def _tick_fontsize(axis, rc: str) -> float:
    return FontProperties(size=axis.get_tick_params().get("labelsize", matplotlib.rcParams[f"{rc}.labelsize"])
                          ).get_size_in_points()


def text_width(text: str, fontsize: float) -> float:
    """Inches of a line of ``text`` in DejaVu Sans of ``fontsize`` points (an upper bound: its digits are 0.64 em,
    the period 0.32, the minus and plus signs 0.84, no letter wider than 1.0)."""
    return sum(_CHAR_EM.get(c, 1.0 if c.isupper() else 0.7) for c in text) * fontsize / 72


_CHAR_EM = {**dict.fromkeys("0123456789", 0.64), ".": 0.32, ",": 0.32, " ": 0.32, "\u2212": 0.84, "-": 0.37,
            "+": 0.84, "e": 0.62, "%": 0.95}
# A line of text, ascent and descent (DejaVu Sans: 1.16 em), and the pad at the figure's edges (constrained
# layout's 3 points, and one more).
_LINE_EM = 1.2
_PAD = 4 / 72


def shared_legend(fig: Figure, axes, max_columns: int, title: str | None = None) -> int:
    """One legend below the panels with every label of every panel once (a label may be missing from
    some panels, e.g. an fc-only variant from the convolution panels). Returns its rows (its title one)."""
    handles: dict[str, object] = {}
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(n, h)
    fontsize = 7
    column = (_LEGEND_COLUMN_EM + _EM_PER_CHAR * max((len(n) for n in handles), default=0)) * fontsize / 72
    fitting = int(fig.get_figwidth() // column)  # columns of long labels would run past the figure's edges
    ncols = max(1, min(len(handles), max_columns, fitting))
    # A legend takes up to a quarter of the planned height from the panels; the figure grows by the rest, so that a
    # long one leaves them room: the 103 configurations of a store's learning curves took 35 rows, more than the
    # whole figure, and matplotlib left the layout undone (a warning).
    rows = math.ceil(len(handles) / ncols) + (title is not None)
    fig.set_figheight(fig.get_figheight() + max(0.0, legend_height(rows, fontsize) - fig.get_figheight() / 4))
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=ncols, fontsize=fontsize,
               frameon=False, title=title, title_fontsize=fontsize)
    return rows


def legend_height(rows: int, fontsize: float) -> float:
    """Inches that a frameless legend of ``rows`` rows (its title one of them) of ``fontsize`` points takes (an
    upper bound: matplotlib draws 1.56 em a row, the line and the label spacing, and 0.3 em of border)."""
    return (_LEGEND_BORDER_EM + _LEGEND_ROW_EM * rows) * fontsize / 72 if rows else 0.0


def check_nonempty(data, what: str) -> None:
    if not data:
        raise ValueError(f"nothing to plot: {what} is empty")


# The formats a report can write a figure in: PNG for the page (always written: the page embeds it), PDF and SVG
# (vector) for a paper, on request: drawing them triples the time of a first report (bench/report_speed.py).
FORMATS = ("png", "pdf", "svg")
DEFAULT_FORMATS = ("png",)


# Vector files as papers want them: TrueType fonts in PDFs (venues reject Type 3 fonts), text as text in SVGs
# (editable, and smaller than glyph outlines). A fixed salt for the ids of SVG elements (random by default) and
# no dates in the metadata make every file a function of the figure alone: a figure drawn twice, or by another
# worker of a parallel report, is the same bytes, so a reused file cannot be told from a redrawn one.
_VECTOR_STYLE = {"pdf.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "prunelab"}
_METADATA = {"pdf": {"Creator": "prunelab", "CreationDate": None}, "svg": {"Creator": "prunelab", "Date": None}}


def to_bytes(fig: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure as a ``fmt`` file (png, pdf, svg; anything matplotlib writes), drawn by the Agg canvas
    (PDF and SVG keep lines and text as vectors; ``dpi`` sets the resolution of their embedded images)."""
    import matplotlib

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    metadata = _METADATA.get(fmt)
    with matplotlib.rc_context(_VECTOR_STYLE):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes, drawn by the Agg canvas."""
    return to_bytes(fig, "png", dpi)


def render(fig: Figure, formats: Sequence[str] = DEFAULT_FORMATS, dpi: int = 110) -> dict[str, bytes]:
    """The figure in each of ``formats``. The constrained layout is solved once, by the Agg canvas at ``dpi``
    (as for a PNG, whatever the formats: a PDF drawn alone is the bytes of one drawn after the PNG), then frozen:
    the other formats show the same layout and cost about a third less."""
    out = {}
    if fig.get_layout_engine() is not None and formats and formats[0] != "png":
        to_bytes(fig, "raw", dpi)  # the PNG's drawing without its encoding
        fig.set_layout_engine("none")
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


# Reference lines (the dense accuracy, learning-rate drops, the identities of Tanaka et al. 2020, Figs. 3-4) share
# one style, dark and wide enough to read in print next to the data's coloured lines.
GUIDE = {"color": "#404040", "linewidth": 1.4, "zorder": 1}


def dense_line(ax, dense: tuple[float, float | None] | None, label: str = "dense") -> None:
    if dense is None:
        return
    mean, std = dense
    if mean is None or not np.isfinite(mean):
        return
    ax.axhline(mean, linestyle="--", label=label, **GUIDE)
    if std is not None and np.isfinite(std) and std > 0:
        ax.axhspan(mean - std, mean + std, color=_NAMED["dense"], alpha=0.2, linewidth=0, zorder=0)


def lr_drop_lines(ax, steps: Sequence[int]) -> None:
    """Dash-dotted vertical lines at the learning-rate drops, one legend entry for all."""
    for k, step in enumerate(steps):
        ax.axvline(step, linestyle="-.", label="learning-rate drop" if k == 0 else None, **GUIDE)


def errorbar_curves(ax, curves: Mapping[str, Curve], transform=lambda x: x, palette=None) -> None:
    palette = palette or colors(list(curves))
    for label, curve in curves.items():
        x, y, err = curve.arrays()
        ax.errorbar(transform(x), y, yerr=err, label=label, color=palette[label], marker="o", markersize=3.5,
                    linewidth=1.4, capsize=2.5, elinewidth=0.9)


def percent_label(s: float) -> str:
    p = 100 * s
    if abs(p - round(p)) < 0.05 and p < 99.5:
        return f"{p:.0f}"
    return f"{p:.1f}" if p < 99.5 else f"{p:.2f}".rstrip("0").rstrip(".")


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]


LINESTYLES = ["-", (0, (5, 1.5)), "-.", (0, (1, 1))]


def panel_grid(n: int, width: float, height: float, max_columns: int = 3, **kwargs):
    ncols = min(n, max_columns)
    fig, axes = new_figure(ncols=ncols, nrows=math.ceil(n / ncols), width=width, height=height, **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def loglog_axes(ax) -> None:
    """Log axes labelled at powers of ten only (minor labels overlap on short ranges)."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
