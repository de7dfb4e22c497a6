"""The sentences of the figures' captions that depend on the runs shown (seeds, error bars, the dense line) and
the hyperparameters a figure lists as held fixed (:func:`common_hparams`)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from prunelab.reports.figures.context import Context
from prunelab.reports.tables import RESULT_ONLY


def seeds_text(rows: pd.DataFrame) -> str:
    """"3 seeds (0, 1, 2)" or "seed 0": what the error bars of a figure are computed over."""
    seeds = sorted(int(s) for s in rows["seed"].dropna().unique())
    listed = ", ".join(str(s) for s in seeds)
    return f"{len(seeds)} seeds ({listed})" if len(seeds) > 1 else f"seed {listed}"


def spread_text(rows: pd.DataFrame, what: str = "error bars") -> str:
    """How the spread over seeds is drawn: a sentence true of ``rows`` (no error bars from one seed)."""
    per_point = rows.groupby([c for c in config_columns(rows) if c != "id"], dropna=False)["seed"].nunique() \
        if len(rows) else pd.Series(dtype=int)
    if per_point.empty or per_point.max() < 2:
        return f"points are single runs ({seeds_text(rows)}), so there are no {what}"
    return f"points are means over {seeds_text(rows)}; {what} are the sample standard deviation over the seeds"


def dense_text(ctx: Context) -> str:
    """The sentence on the gray dense line, only when the store has the dense accuracy."""
    if not ctx.has_dense_line():
        return ""
    dense = ctx.dense()
    band = " with a ±1 std band" if dense[1] is not None else ""
    return f" The dashed gray line is the dense network ({100 * dense[0]:.2f}%{band})."


def config_columns(rows: pd.DataFrame) -> list[str]:
    """The hyperparameter columns of ``rows`` (everything but results and the seed) that hold a value."""
    skip = set(RESULT_ONLY) | {"seed", "label", "accuracy_percent"}
    return [c for c in rows.columns if c not in skip and rows[c].notna().any()]


def listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def common_hparams(rows: pd.DataFrame) -> dict[str, Any]:
    """The hyperparameters every run in ``rows`` shares (columns with one value), plus the seeds; results
    (accuracies, FLOPs, ...) are not hyperparameters and are left out."""
    skip = set(RESULT_ONLY) | {"id", "seed", "kind", "label"}
    out: dict[str, Any] = {}
    for col in rows.columns:
        if col in skip or rows[col].isna().any():  # the cheap test first: most columns miss a value somewhere
            continue
        values = rows[col].unique()
        if len(values) == 1:
            value = values[0]
            out[col] = value.item() if hasattr(value, "item") else value
    kinds = sorted(rows["kind"].dropna().unique())
    out["kinds"] = ", ".join(kinds)
    out["seeds"] = ", ".join(str(s) for s in sorted(rows["seed"].dropna().unique()))
    out["runs"] = len(rows)
    return out


def percent(s: float) -> str:
    return f"{100 * s:.4g}%"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
