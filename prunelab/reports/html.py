"""The HTML report: one self-contained page (figures embedded as base64 PNG data URIs, tables inline,
no external CSS, fonts or scripts) and, next to it, the tables as CSV files and every figure as PNG, and
as PDF and SVG (vector files to put in a paper) when asked (``formats``).

``out/`` receives ``index.html``, ``runs.csv`` (one row per run), ``summary.csv`` (mean, std and
count over seeds), ``settings.csv`` (what fixes each dense network), ``layers.csv`` (per-layer
sparsity of every run), ``figures/<name>.png`` (``.pdf``, ``.svg`` when asked) and ``figures.json``
(``{"figures": [...], "notes": [...]}``: each figure's name, files, title, caption, hyperparameters and run
ids; the figures that could not be drawn, and why). Accuracies are in percent in the page and its CSV files (columns
``test_accuracy (%)``, ``dense_accuracy (%)``, ``drop (%)`` = percentage points lost to pruning;
:func:`prunelab.reports.runs_table` and ``prunelab export`` keep fractions). Every file is written atomically.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.io import atomic_write_text
from prunelab.reports import plots
from prunelab.reports.figure_builds import BuiltFigure, BuiltFigures, build_figures, check_formats
from prunelab.reports.tables import aggregate, group_columns, layers_table, runs_table

_SETTING_PREFIXES = ("model.", "dataset.", "training.")

# Columns shown in percent (fractions in the tables of the library): the accuracies and the drop.
_PERCENT = ("test_accuracy", "dense_accuracy", "drop")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1.5em 0; padding: 1em; border: 1px solid #e3e3e3; border-radius: 4px; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: .92em; margin-top: .5em; }
table { border-collapse: collapse; font-size: .8em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
.scroll { overflow: auto; max-height: 32em; border: 1px solid #eee; }
table.hp td, table.hp th { text-align: left; }
.notes li { color: #8a4b00; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _format(value: Any) -> str:
    """A cell: empty for missing, up to 6 significant digits for floats (CSVs keep full precision)."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    return str(value)


def html_table(df: pd.DataFrame, table_id: str, css_class: str = "data") -> str:
    """``df`` as an HTML table with one ``<th>`` header row and ``<td>`` cells, values escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False, name=None):
        body.append("<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>")
    return (f'<table id="{html.escape(table_id)}" class="{css_class}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _hparam_table(hparams: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
                   for k, v in hparams.items())
    return f'<table class="hp">{rows}</table>'


def settings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: the model, dataset and training hyperparameters that define it, and the seeds."""
    cols = ["setting", "model", "dataset"] + [c for c in runs.columns if c.startswith(_SETTING_PREFIXES)]
    if runs.empty:
        return pd.DataFrame(columns=[*cols, "seeds", "runs"])
    rows = []
    for _, part in runs.groupby("setting", sort=True):
        row = {c: part.iloc[0][c] for c in cols}
        row["seeds"] = " ".join(str(s) for s in sorted(part["seed"].dropna().unique()))
        row["runs"] = len(part)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*cols, "seeds", "runs"])


def in_percent(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its accuracy columns (and their ``_mean``/``_std`` aggregates) times 100, named
    ``<column> (%)``."""
    renamed = {}
    out = df.copy()
    for col in df.columns:
        base = col.removesuffix("_mean").removesuffix("_std")
        if base in _PERCENT:
            out[col] = 100 * pd.to_numeric(df[col], errors="coerce")
            renamed[col] = f"{col} (%)"
    return out.rename(columns=renamed)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean/std/count over seeds per experiment point; the setting column stands for model/dataset/training."""
    by = [c for c in group_columns(runs) if not c.startswith(_SETTING_PREFIXES)]
    return aggregate(runs, by=by)


def _figure_html(fig: BuiltFigure, png: bytes, files: dict[str, str]) -> str:
    specific = {k: v for k, v in fig.hparams.items()
                if not str(k).startswith(_SETTING_PREFIXES) and k not in ("model", "dataset")}
    fixed = {k: v for k, v in fig.hparams.items() if str(k).startswith(_SETTING_PREFIXES)}
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{html.escape(fig.name)}"><h3>{html.escape(fig.title)}</h3>'
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(fig.title)}">'
        f"<figcaption><p>{html.escape(fig.caption)}</p>"
        f"<p class='files'>Files: {' · '.join(_link(f, fmt.upper()) for fmt, f in files.items())}</p>"
        f"<p><b>Hyperparameters shared by the {len(fig.runs)} run(s) shown</b></p>{_hparam_table(specific)}"
        f"<details><summary>model, dataset and training settings</summary>{_hparam_table(fixed)}</details>"
        f"</figcaption></figure>"
    )


def _vector_note(formats: Sequence[str]) -> str:
    vector = [f.upper() for f in formats if f != "png"]
    if vector:
        return f"PNG and {' and '.join(vector)}, for a paper"
    return ("PNG (for PDF and SVG files to put in a paper: <code>prunelab report --formats png,pdf,svg</code>, "
            "which draws only the files missing)")


def _link(path: str, text: str) -> str:
    return f'<a href="{html.escape(path)}">{html.escape(text)}</a>'


def write_report(root: str | os.PathLike = "runs", out: str | os.PathLike = "report", dpi: int = 110,
                 jobs: int | None = None, rebuild: bool = False,
                 formats: Sequence[str] = plots.DEFAULT_FORMATS) -> Path:
    """Write the report of the run store ``root`` into folder ``out``; returns the path of ``index.html``.

    Always contains the settings, summary and runs tables; figures only where the store has the runs
    they need (see :mod:`prunelab.reports.figures`). Figures whose data did not change since the last report
    into ``out`` are reused, the others drawn by ``jobs`` processes (:mod:`prunelab.reports.figure_builds`;
    ``rebuild``: draw all), in ``formats`` (png, which the page shows, and pdf or svg for a paper). Raises
    FileNotFoundError when ``root`` is not a folder, ValueError for an unknown format.
    """
    return build_report(root, out, dpi, jobs, rebuild, formats)[0]


def build_report(root: str | os.PathLike = "runs", out: str | os.PathLike = "report", dpi: int = 110,
                 jobs: int | None = None, rebuild: bool = False,
                 formats: Sequence[str] = plots.DEFAULT_FORMATS) -> tuple[Path, BuiltFigures]:
    """:func:`write_report`, and its figures (with how many were drawn and how many reused)."""
    root, out, formats = Path(root), Path(out), check_formats(formats)
    runs = runs_table(root)
    layers = layers_table(root)
    summary = in_percent(summary_table(runs))
    settings = settings_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    built = build_figures(root, out, runs, layers, dpi=dpi, formats=formats, jobs=jobs, rebuild=rebuild)
    figures, notes = built.figures, built.notes
    runs = in_percent(runs)
    for name, df in (("runs", runs), ("summary", summary), ("settings", settings), ("layers", layers)):
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))

    manifest = []
    sections: dict[str, list[str]] = {}
    for fig in figures:
        png = (out / fig.files["png"]).read_bytes()
        sections.setdefault(str(fig.hparams.get("setting", "")), []).append(_figure_html(fig, png, fig.files))
        manifest.append({"name": fig.name, "title": fig.title, "caption": fig.caption, "file": fig.files["png"],
                         "files": fig.files, "hparams": fig.hparams, "runs": fig.runs})
    atomic_write_text(out / "figures.json", json.dumps({"figures": manifest, "notes": notes}, indent=2))

    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>prunelab report — {html.escape(str(root))}</title><style>{_CSS}</style></head><body>",
        "<h1>prunelab report</h1>",
        f"<p>Run store <code>{html.escape(str(root.resolve()))}</code>: {len(runs)} runs ({html.escape(status)}); "
        f"{len(figures)} figures. Written {datetime.datetime.now().isoformat(timespec='seconds')}. "
        "Accuracies are in percent. Tables are also in <code>runs.csv</code>, <code>summary.csv</code>, "
        "<code>settings.csv</code> and <code>layers.csv</code> next to this page; every figure is also in "
        f"<code>figures/</code> as {_vector_note(formats)}.</p>",
        "<h2>Contents</h2><ul>",
        *[f'<li><a href="#{html.escape(f.name)}">{html.escape(f.title)}</a></li>' for f in figures],
        '<li><a href="#settings">Settings</a></li><li><a href="#summary">Summary over seeds</a></li>'
        '<li><a href="#runs">All runs</a></li></ul>',
    ]
    if notes:
        parts.append("<h2>Notes</h2><ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    labels = dict(zip(settings["setting"], settings["model"].astype(str) + " on " + settings["dataset"].astype(str)))
    for setting, blocks in sections.items():
        parts.append(f"<h2>{html.escape(labels.get(setting, setting))} <small>(setting {html.escape(setting)})"
                     f"</small></h2>")
        parts.extend(blocks)
    parts += [
        "<h2 id='settings-title'>Settings</h2><p>Each setting fixes the dense network up to its seed: model, "
        "dataset and training hyperparameters (<code>settings.csv</code>).</p>",
        f"<div class='scroll'>{html_table(settings, 'settings')}</div>",
        "<h2 id='summary-title'>Summary over seeds</h2><p>Finished runs grouped by every hyperparameter but the "
        "seed: mean, sample standard deviation and count (<code>summary.csv</code>).</p>",
        f"<div class='scroll'>{html_table(summary, 'summary')}</div>",
        "<h2 id='runs-title'>All runs</h2><p>One row per run, unfinished ones included (<code>runs.csv</code>); "
        "drop = dense accuracy - test accuracy, in percentage points.</p>",
        f"<div class='scroll'>{html_table(runs, 'runs')}</div>",
        "</body></html>",
    ]
    return atomic_write_text(out / "index.html", "\n".join(parts)), built
