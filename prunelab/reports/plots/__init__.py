"""Figures in the style of the papers, with matplotlib; every function takes plain data, returns a Figure.

Figures are built on ``matplotlib.figure.Figure`` and drawn with the Agg canvas, never through
``pyplot``: no display is needed, no global figure list grows in a long report, and a notebook's
own backend is left alone. :func:`to_png` and :func:`save` render one.

One module per kind of plot (:mod:`.accuracy`, :mod:`.curves`, :mod:`.layers`, :mod:`.masks`, :mod:`.cost`),
and :mod:`.style` for what they share; every public name is importable from here.

Colours follow Frankle et al. (2021, §4, Fig. 3): magnitude after training blue,
random orange, magnitude green, SNIP red, GraSP purple, SynFlow brown, the dense network gray; the
ablations of Fig. 4 are unmodified blue, shuffle orange, reinitialize green, invert red, fixed
variance purple.
"""

from __future__ import annotations

from prunelab.reports.plots.accuracy import ablation_panels, accuracy_vs_sparsity, accuracy_vs_step
from prunelab.reports.plots.cost import accuracy_vs_cost, density_over_time
from prunelab.reports.plots.curves import Replicates, learning_curves
from prunelab.reports.plots.layers import (
    conservation,
    layer_density_vs_compression,
    layer_sparsity_bars,
    neuron_collapse,
)
from prunelab.reports.plots.masks import (
    conv_masks,
    first_layer_image,
    jaccard_vs_iteration,
    kernel_grid,
    mask_images,
    weight_trajectories,
)
from prunelab.reports.plots.style import (
    DEFAULT_FORMATS,
    FORMATS,
    GUIDE,
    Curve,
    colors,
    render,
    save,
    to_bytes,
    to_png,
)

__all__ = ["Curve", "DEFAULT_FORMATS", "FORMATS", "GUIDE", "Replicates", "ablation_panels", "accuracy_vs_cost",
           "accuracy_vs_sparsity", "accuracy_vs_step", "colors", "conservation", "conv_masks", "density_over_time",
           "first_layer_image", "jaccard_vs_iteration", "kernel_grid", "layer_density_vs_compression",
           "layer_sparsity_bars", "learning_curves", "mask_images", "neuron_collapse", "render", "save", "to_bytes",
           "to_png", "weight_trajectories"]
