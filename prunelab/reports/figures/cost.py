"""Training-cost figures: density over the protocol's steps and accuracy against total training FLOPs
(Frankle et al. 2021, Fig. 1; Evci et al. 2020, App. H)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from prunelab.experiments import runfiles
from prunelab.reports import plots
from prunelab.reports.figures.captions import (
    common_hparams,
    percent,
    spread_text,
)
from prunelab.reports.figures.context import (
    Context,
    Plot,
    ReportFigure,
    at_target,
    no_ablation,
    sparsity_targets,
)
from prunelab.reports.tables import (
    is_missing,
    is_reference,
    protocol_labels,
)

_FLOPS_CONVENTION = (
    "A training step costs 3 × the forward FLOPs of its batch at the step's layer densities (backward = 2 × "
    "forward; RigL adds its dense-gradient passes; Evci et al. 2020, App. H), and totals include the dense "
    "training a protocol needs first (the dense steps to the pruning step, the dense run and earlier levels "
    "of iterative pruning).")


_COST_COLUMNS = ["train_flops", "total_train_flops", "density_auc", "forward_flops", "dense_forward_flops",
                 "mask_updates", "accuracy_percent"]


def _cost_hparams(rows: pd.DataFrame) -> dict[str, Any]:
    """:func:`common_hparams` without the cost results (shared FLOPs are a result, not a setting)."""
    return common_hparams(rows.drop(columns=_COST_COLUMNS, errors="ignore"))


def _read_result(ctx: Context, run_id: str) -> dict[str, Any]:
    return runfiles.read(ctx.folder(run_id) / runfiles.RESULT_JSON) or {}


def _read_result_field(row: pd.Series, key: str):
    value = row.get(key)
    return None if is_missing(value) else value


def curve_area(curve: list, end: float) -> float:
    """Mean density of a ``density_curve`` held from its last breakpoint until ``end`` (its ``density_auc``)."""
    steps = [float(s) for s, _ in curve] + [float(end)]
    area = sum(float(d) * (b - a) for (_, d), a, b in zip(curve, steps, steps[1:]))
    return area / steps[-1] if steps[-1] > 0 else 1.0


def curve_end(curve: list, row: pd.Series) -> int:
    """The cumulative step at which a run's ``density_curve`` ends (its recorded ``protocol_steps``)."""
    end = _read_result_field(row, "protocol_steps")
    if end is None or int(end) <= int(curve[-1][0]):
        raise ValueError(f"run {row['id']}: its result has no protocol_steps past its density curve")
    return int(end)


def training_cost_over_time(ctx: Context) -> Iterable[ReportFigure]:
    runs = no_ablation(ctx.runs)
    runs = runs[runs["steps"].notna()]
    sparse = runs[~is_reference(runs)]
    if sparse.empty or "density_auc" not in runs.columns or sparse["density_auc"].isna().all():
        return
    runs = runs[runs["density_auc"].notna()].assign(label=lambda d: protocol_labels(d, methods=False))
    reference = set(runs.loc[is_reference(runs), "id"])  # the dense runs: in every panel
    first = runs.sort_values(["seed", "method", "id"], na_position="last", kind="stable")
    lines_of: dict[float | None, dict[str, tuple]] = {}
    used = []
    for (label, target), part in first.groupby(["label", "sparsity_target"], sort=True, dropna=False):
        row = part.iloc[0]  # the first seed (and the first criterion: all prune the same weights' share)
        result = _read_result(ctx, row["id"])
        curve = result.get("density_curve")
        if not curve or result.get("protocol_steps") is None:
            continue
        row = row.copy()
        row["protocol_steps"] = result["protocol_steps"]
        key = None if row["id"] in reference or is_missing(target) else round(float(target), 6)  # every panel
        lines_of.setdefault(key, {})[label] = ([s for s, _ in curve], [d for _, d in curve], curve_end(curve, row))
        used.append(part.iloc[:1])
    dense_lines = lines_of.pop(None, {})
    if not lines_of:
        return
    panels = {f"sparsity {percent(t)}": {**dense_lines, **lines} for t, lines in sorted(lines_of.items())}
    rows = pd.concat(used)
    seeds = ", ".join(str(int(s)) for s in sorted(rows["seed"].unique()))
    yield ReportFigure(
        f"training-cost-over-time-{ctx.setting}", f"Training cost over time — {ctx.label}",
        "Overall density (fraction of the prunable weights kept) against the training step, counted over the "
        "whole protocol including the dense training it needs first, one step function per protocol and one "
        "panel per sparsity target" + (", the dense run in every panel" if dense_lines else "")
        + "; each line is one run of seed " + seeds + " (the "
        "first seed; for pruning at a step, the first criterion: all reach the same density) drawn from its "
        "density_curve, whose last density holds to the end of the protocol's training (protocol_steps) "
        "(Frankle et al. 2021, Fig. 1).",
        Plot(plots.density_over_time, panels, title=ctx.label), _cost_hparams(rows), list(rows["id"]))


def accuracy_vs_training_cost(ctx: Context) -> Iterable[ReportFigure]:
    runs = no_ablation(ctx.runs)
    if "total_train_flops" not in runs.columns:
        return
    runs = runs[pd.to_numeric(runs["total_train_flops"], errors="coerce").notna() & runs["test_accuracy"].notna()]
    if is_reference(runs).all():
        return
    runs = runs.assign(label=protocol_labels(runs), total_train_flops=runs["total_train_flops"].astype(float),
                       accuracy_percent=100 * runs["test_accuracy"])
    dense, sparse = runs[is_reference(runs)], runs[~is_reference(runs)]

    def point(rows: pd.DataFrame) -> plots.Curve:
        x = rows["total_train_flops"].to_numpy(float)
        y = rows["accuracy_percent"].to_numpy(float)
        return plots.Curve([x.mean()], [y.mean()], [y.std(ddof=1) if y.size > 1 else np.nan])

    panels: dict[str, dict[str, plots.Curve]] = {}
    for target in sparsity_targets(sparse):
        at = at_target(sparse, target)
        lines = {"dense": point(dense)} if not dense.empty else {}
        lines.update({label: point(part) for label, part in at.groupby("label", sort=True)})
        panels[f"sparsity {percent(target)}"] = lines
    rows = pd.concat([dense, sparse[sparse["sparsity_target"].notna()]])
    yield ReportFigure(
        f"accuracy-vs-training-cost-{ctx.setting}", f"Accuracy vs training cost — {ctx.label}",
        "Test accuracy (%) against the total training FLOPs (log scale) of each protocol, one panel per sparsity "
        f"target{', the dense network in every panel' if not dense.empty else ''}; {spread_text(rows)}. "
        f"{_FLOPS_CONVENTION}",
        Plot(plots.accuracy_vs_cost, panels, title=ctx.label), _cost_hparams(rows), list(rows["id"]))
