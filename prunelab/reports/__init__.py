"""Tables, figures and the HTML report of a run store.

- :mod:`~prunelab.reports.tables`: ``runs_table(root)`` (one tidy row per run), ``layers_table``,
  ``metrics_table(root)`` (every run's training curves, one row per run, step and metric),
  ``aggregate(df, by)`` (mean, std, count over seeds).
- :mod:`~prunelab.reports.plots`: the papers' figures as functions of plain data, each returning a
  matplotlib Figure (Agg canvas, no display).
- :mod:`~prunelab.reports.figures`: which figures a store supports, and their data.
- :mod:`~prunelab.reports.html`: ``write_report(root, out)``, a self-contained HTML page and CSVs.
- :mod:`~prunelab.reports.figure_builds`: the figures drawn only when their data changed, by worker processes;
  :mod:`~prunelab.reports.figure_inputs` (what a figure reads, and the checks of those files) and
  :mod:`~prunelab.reports.digests` (canonical digests of data, files and the drawing code) decide.
- :mod:`~prunelab.reports.commands`: the ``prunelab report``, ``export`` and ``analyze`` subcommands.

Names are imported on first use, so that ``import prunelab.reports`` does not load matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "runs_table": "tables", "layers_table": "tables", "metrics_table": "tables", "aggregate": "tables",
    "write_report": "html", "report_figures": "figures", "ReportFigure": "figures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"prunelab.reports.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'prunelab.reports' has no attribute {name!r}")
