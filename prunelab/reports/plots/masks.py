"""Masks and masked weights: first-layer masks as images, convolution kernels, Jaccard distance across
pruning iterations and weight trajectories (Paganini & Forde 2020, §4-5)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from prunelab.reports.plots.style import (
    TAB,
    Curve,
    check_nonempty,
    colors,
    errorbar_curves,
    new_figure,
    set_title,
    shared_legend,
)


def jaccard_vs_iteration(panels: Mapping[str, Mapping[str, Curve]], reference: str = "",
                         title: str = "") -> Figure:
    """Jaccard distance (1 - IoU) between the masks of a reference pruning method and others, against
    the pruning iteration, one panel per layer: Paganini & Forde 2020, §4, Figs. 3-4.

    ``panels``: layer -> {compared method -> Curve(iteration, distance, std over seeds)}.
    """
    check_nonempty(panels, "panels")
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colors(labels)
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=3.2, height=2.8, sharey=True)
    for ax, (layer, lines) in zip(axes.flat, panels.items()):
        errorbar_curves(ax, lines, palette=palette)
        ax.set_title(layer, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Pruning iteration", fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("Jaccard distance", fontsize=8)
    shared_legend(fig, axes.flat, max_columns=5, title=f"compared with {reference}" if reference else None)
    set_title(fig, title)
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
    check_nonempty(grid, "grid")
    cols = list(dict.fromkeys(c for row in grid.values() for c in row))
    # at least ~3.6 inches wide in all, so that the figure title fits over a single column
    fig, axes = new_figure(ncols=len(cols), nrows=len(grid), width=max(1.7, 3.6 / len(cols)), height=1.9)
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
    set_title(fig, title)
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
    check_nonempty(grid, "grid")
    cols = list(dict.fromkeys(c for row in grid.values() for c in row))
    images = {(r, c): kernel_grid(*grid[r][c], rows=rows) for r in grid for c in grid[r]}
    finite = [np.abs(im[np.isfinite(im)]) for im in images.values()]
    scale = max((float(f.max()) for f in finite if f.size), default=1.0) or 1.0
    any_image = next(iter(images.values()))
    aspect = any_image.shape[0] / any_image.shape[1]
    fig, axes = new_figure(ncols=len(cols), nrows=len(grid), width=3.4, height=max(1.2, 3.4 * aspect) + 0.4)
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
    set_title(fig, title)
    return fig


def weight_trajectories(panels: Mapping[str, tuple[Sequence[float], np.ndarray]], title: str = "",
                        xlabel: str = "Sparsity (%)") -> Figure:
    """Trained weight values at consecutive pruning levels, one line per weight, ending when the weight
    is pruned: Paganini & Forde 2020, §5, Figs. 6-7.

    ``panels``: layer -> (x: one value per level, e.g. sparsity in %, values: (levels, weights) with
    NaN where the weight is pruned).
    """
    check_nonempty(panels, "panels")
    fig, axes = new_figure(ncols=len(panels), width=4.2, height=3.4)
    for ax, (name, (x, values)) in zip(axes[0], panels.items()):
        values = np.asarray(values, dtype=float)
        x = np.asarray(x, dtype=float)
        if values.ndim != 2 or values.shape[0] != x.size:
            raise ValueError(f"weight trajectories need (levels, weights) values with {x.size} levels, "
                             f"got {values.shape}")
        palette = [TAB[k % len(TAB)] for k in range(values.shape[1])]
        for k in range(values.shape[1]):
            ax.plot(x, values[:, k], color=palette[k], linewidth=0.9, alpha=0.8, marker=".", markersize=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:.3g}" for v in x], rotation=45, fontsize=7)
    axes[0, 0].set_ylabel("Weight value after training", fontsize=9)
    set_title(fig, title)
    return fig
