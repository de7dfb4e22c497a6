"""Learning curves: test accuracy and loss against the step from every run's metrics file, one figure per
sparsity target, each configuration's seeds around their mean."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from prunelab.reports import plots
from prunelab.reports.figures.captions import (
    common_hparams,
    config_columns,
    listing,
    percent,
    seeds_text,
    slug,
)
from prunelab.reports.figures.context import (
    Context,
    Plot,
    ReportFigure,
    at_target,
    lr_drops,
    sparsity_targets,
)
from prunelab.reports.tables import (
    is_reference,
    of_protocol,
    protocol_labels,
)

_CURVE_METRICS = {"test_accuracy": ("Test accuracy (%)", 100.0), "test_loss": ("Test loss", 1.0)}


def _curve_labels(rows: pd.DataFrame) -> pd.Series:
    """One label per configuration (the runs that differ only by their seed share it): the protocol's label,
    the ablation when there is one; configurations that would share a label are numbered."""
    labels = protocol_labels(rows)
    ablated = rows["ablation"].notna()
    labels[ablated] = labels[ablated] + " " + rows.loc[ablated, "ablation"].astype(str)
    config = [c for c in config_columns(rows) if c != "id"]
    keys = pd.Series(["|".join(map(repr, values)) for values in zip(*(rows[c] for c in config))] if config else "",
                     index=rows.index, dtype=object)
    named: dict[str, str] = {}
    for key, label in zip(keys, labels):
        if key not in named:
            taken = sum(1 for v in named.values() if v == label or v.startswith(label + " #"))
            named[key] = label if taken == 0 else f"{label} #{taken + 1}"
    return keys.map(named)


def _replicates(ctx: Context, run_ids: list[str], metric: str, scale: float) -> plots.Replicates:
    """Each run's curve of ``metric`` from its metrics.jsonl, and their mean and std per step."""
    runs, steps, values = [], [], []
    for run_id in run_ids:
        entries = [m for m in ctx.metrics(run_id) if isinstance(m.get(metric), (int, float))]
        x = [int(m["step"]) for m in entries]
        y = [scale * float(m[metric]) for m in entries]
        if x:
            runs.append(plots.Curve(x, y))
            steps += x
            values += y
    if not steps:
        raise ValueError(f"no {metric} in the metrics.jsonl of runs {', '.join(run_ids)}")
    # Mean and sample std per step over the runs' values that are numbers (NaN where none, std NaN where one), as
    # pandas' groupby computes them, with numpy: a groupby per configuration and metric cost more than the reading
    step, at = np.unique(np.asarray(steps, dtype=float), return_inverse=True)
    y = np.asarray(values, dtype=float)
    valid = ~np.isnan(y)
    count = np.bincount(at, weights=valid, minlength=step.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(at, weights=np.where(valid, y, 0.0), minlength=step.size) / count
        squares = np.bincount(at, weights=np.where(valid, y - mean[at], 0.0) ** 2, minlength=step.size)
        std = np.where(count > 1, np.sqrt(squares / (count - 1)), np.nan)
    return plots.Replicates(plots.Curve(step, mean, std), runs)


def learning_curves(ctx: Context) -> Iterable[ReportFigure]:
    """Test accuracy and loss against the step from every run's metrics.jsonl, one figure per sparsity target
    (the dense runs in each), the seeds of a configuration as thin lines around their mean and its band."""
    dense, sparse = ctx.reference(), ctx.runs[~is_reference(ctx.runs)]
    groups = [(t, pd.concat([dense, at_target(sparse, t)])) for t in sparsity_targets(sparse)] or [(None, dense)]
    for target, rows in groups:
        if rows.empty:
            continue
        rows = rows.assign(label=_curve_labels(rows))
        order = sorted(rows["label"].unique(), key=lambda lab: (lab != "dense", lab))
        ids = rows.groupby("label")["id"].agg(list)  # not rows[rows["label"] == label]: a copy of every column
        panels = {title: {label: _replicates(ctx, ids[label], metric, scale) for label in order}
                  for metric, (title, scale) in _CURVE_METRICS.items()}
        drops = lr_drops(rows)
        seeds = rows.groupby("label")["seed"].nunique()
        what = f"sparsity {percent(target)}" if target is not None else "the dense network"
        bands = ("thin lines are single runs, thick lines the mean over the seeds of a configuration "
                 f"({seeds_text(rows)}) with a ±1 standard deviation band") if seeds.max() > 1 else \
            f"one run per configuration ({seeds_text(rows)}), so no band"
        rewound = rows[of_protocol(rows, "lottery") & rows["rewind_step"].fillna(0).gt(0)]
        yield ReportFigure(
            f"learning-curves-{slug(percent(target)) if target is not None else 'dense'}-{ctx.setting}",
            f"Learning curves, {what} — {ctx.label}",
            f"Test accuracy (%) and test loss against the training iteration, at each evaluation of the metrics "
            f"files, for {listing(order)}"
            + (" (the dense network for reference)" if target is not None and not dense.empty else "")
            + f"; {bands}."
            + (" A rewound lottery ticket trains from its rewinding step." if not rewound.empty else "")
            + (" Dash-dotted vertical lines mark the learning-rate drops." if drops else ""),
            Plot(plots.learning_curves, panels, lr_drops=drops, title=f"{ctx.label}, {what}"), common_hparams(rows),
            list(rows["id"]))
