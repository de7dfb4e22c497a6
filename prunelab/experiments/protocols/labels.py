"""How the runs of a protocol are told apart in a figure's legend, from their rows of the runs table
(:func:`prunelab.reports.tables.runs_table`: one column per setting, named by the protocol's ``columns``).

Each protocol labels its own runs (:meth:`Protocol.label`); this module holds the one rule they share:
a base name plus the settings that vary among the runs of that name. It works on the pandas DataFrame
it is given and imports no pandas itself, so the protocols stay importable without the plots extra.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any


def is_missing(value: Any) -> bool:
    """None, pandas' NA or a float NaN: an empty cell of the runs table."""
    return value is None or type(value).__name__ == "NAType" or (isinstance(value, float) and math.isnan(value))


def varies(column) -> bool:
    """Whether a column of the runs table takes more than one value, an empty cell counting as one (a setting
    some runs leave unset, ``distribution`` or ``like``, tells them apart from the runs that set it)."""
    return len({"" if is_missing(v) else str(v) for v in column}) > 1


def variant_labels(rows, base: str, extra: Iterable[str], relevant: Callable[[Any, str], bool] | None = None):
    """``base`` (e.g. the method), plus the ``extra`` settings that take several values among the rows of that
    base ("synflow iterations=10" vs "synflow iterations=100"); ``relevant(value, column)`` says which extra
    columns can tell runs of base ``value`` apart (all of them by default). A pandas Series on ``rows``' index."""
    extra = [c for c in extra if c in rows.columns]
    labels = rows[base].astype(str).copy()
    for value, part in rows.groupby(base, sort=False):
        columns = [c for c in extra if relevant is None or relevant(value, c)]
        varying = [c for c in columns if varies(part[c])]
        for idx, row in part.iterrows():
            bits = [f"{c}={row[c]}" for c in varying if not is_missing(row[c])]
            labels[idx] = " ".join([str(value), *bits])
    return labels
