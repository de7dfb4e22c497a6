"""Which figures a run store can support, and the data behind each: from tidy tables to :mod:`plots`.

Every figure is drawn per *setting* (one model, dataset and training recipe; see
:func:`prunelab.reports.tables.setting_of`) and only when the store holds the runs it needs: no
ablation panel without ablation runs, no mask image without a fully-connected first layer. Each
:class:`ReportFigure` carries the hyperparameters common to all the runs it shows, so a reader
knows what was held fixed, and a caption written from what the figure shows: a baseline, an
error bar or a guide line is mentioned only when the store has it. Accuracy is in percent throughout,
and layers are named by their module and its type ("conv1 (Conv2d)").

One module per kind of figure: :mod:`.accuracy`, :mod:`.layers`, :mod:`.masks`, :mod:`.cost`,
:mod:`.curves`; what they share is in :mod:`.context` (the runs of a setting, file readers) and
:mod:`.captions`. The runs of each protocol are selected by the protocol's name and labelled by the
protocol itself (:func:`prunelab.reports.tables.protocol_labels`), never by matching kind strings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from prunelab.experiments.protocols.labels import variant_labels
from prunelab.reports.figures.accuracy import ablations, accuracy_vs_sparsity, accuracy_vs_step, lottery_accuracy
from prunelab.reports.figures.captions import common_hparams
from prunelab.reports.figures.context import Context, Plot, ReportFigure
from prunelab.reports.figures.cost import (
    accuracy_vs_training_cost,
    curve_area,
    curve_end,
    training_cost_over_time,
)
from prunelab.reports.figures.curves import learning_curves
from prunelab.reports.figures.layers import (
    conservation,
    density_vs_compression,
    layer_sparsity,
    neuron_collapse,
)
from prunelab.reports.figures.masks import conv_masks, first_layer_masks, jaccard, weight_trajectories
from prunelab.reports.tables import layers_table, runs_table

__all__ = ["BUILDERS", "SKIPPED_ERRORS", "Context", "Plot", "ReportFigure", "builder_named", "common_hparams",
           "contexts", "curve_area", "curve_end", "report_figures", "run_builder", "skip_note", "variant_labels"]

BUILDERS: list[Callable[[Context], Iterable[ReportFigure]]] = [
    accuracy_vs_sparsity, ablations, accuracy_vs_step, layer_sparsity, neuron_collapse,
    density_vs_compression, conservation, first_layer_masks, lottery_accuracy, jaccard, conv_masks,
    weight_trajectories, training_cost_over_time, accuracy_vs_training_cost, learning_curves,
]


def report_figures(root: str | os.PathLike, runs: pd.DataFrame | None = None,
                   layers: pd.DataFrame | None = None) -> tuple[list[ReportFigure], list[str]]:
    """Every figure the store at ``root`` has data for, and notes on figures that could not be drawn.

    A figure whose files are missing or unreadable (a deleted checkpoint, a mask from another model)
    is skipped with a note rather than failing the whole report.
    """
    figures: list[ReportFigure] = []
    notes: list[str] = []
    for ctx in contexts(root, runs, layers):
        for build in BUILDERS:
            built, note = run_builder(build, ctx)
            figures.extend(built)
            notes.extend(note)
    return figures, notes


def contexts(root: str | os.PathLike, runs: pd.DataFrame | None = None,
             layers: pd.DataFrame | None = None) -> list[Context]:
    """The finished runs of the store, one :class:`Context` per setting (sorted): what every builder starts from."""
    root = Path(root)
    runs = runs_table(root) if runs is None else runs
    layers = layers_table(root) if layers is None else layers
    done = runs[runs["status"] == "done"]
    return [Context(root, str(setting), part.reset_index(drop=True), layers[layers["id"].isin(part["id"])])
            for setting, part in done.groupby("setting", sort=True)]


def builder_named(name: str) -> Callable[[Context], Iterable[ReportFigure]]:
    """The builder of :data:`BUILDERS` called ``name`` (how a worker process is told which one to run)."""
    for build in BUILDERS:
        if build.__name__ == name:
            return build
    raise ValueError(f"no figure builder {name!r}; builders are {', '.join(b.__name__ for b in BUILDERS)}")


def run_builder(build: Callable[[Context], Iterable[ReportFigure]], ctx: Context,
                draw: bool = True) -> tuple[list[ReportFigure], list[str]]:
    """The figures ``build`` describes for ``ctx`` (drawn, with ``draw``), and a note on why it stopped early
    if it did (a file missing or unreadable, data that does not fit): a figure that cannot be drawn never fails
    the whole report. The figures it described before it stopped are kept."""
    figures: list[ReportFigure] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fig in build(ctx):
                if draw:
                    fig.figure  # noqa: B018 - drawn now, so that a plot that cannot be drawn is a note here
                figures.append(fig)
    except SKIPPED_ERRORS as e:
        return figures, [skip_note(build, ctx, e)]
    return figures, []


# What a figure that cannot be drawn raises (a missing or damaged file, data that does not fit its plot).
SKIPPED_ERRORS = (FileNotFoundError, KeyError, ValueError, RuntimeError, OSError)


def skip_note(build: Callable[[Context], Iterable[ReportFigure]], ctx: Context, error: Exception) -> str:
    """The note of the report on a builder that stopped on ``error``."""
    what = build.__name__.strip("_").replace("_", " ")
    return f"{ctx.label} ({ctx.setting}): {what} skipped: {' '.join(str(error).split())}"
