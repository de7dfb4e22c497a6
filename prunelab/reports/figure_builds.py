"""The report's figures, drawn only when what they show changed, by a pool of worker processes.

Two digests decide, so that a report of an unchanged store draws nothing and one changed run redraws only
the figures that show it:

1. **Per builder and setting** (:mod:`.figure_inputs`): everything the builder may read (its setting's rows
   of the runs and layers tables, those runs' files), its name, the code that draws, the formats and the
   resolution. When it equals the one recorded by the last report in ``figures/builds.json`` and the files
   it recorded are still there, the builder does not even run: its figures' titles, captions, hyperparameters
   and notes come from the record, their files stay as they are.
2. **Per figure**: the digest of what it draws (the plot function and its arguments: the data on the page,
   :class:`~prunelab.reports.figures.Plot`), written beside its files as ``figures/<name>.inputs.sha256``
   after them. A builder that runs again (a run of its setting changed) redraws only the figures whose data
   changed, and of a figure whose data did not change, only the formats it lacks (a report asked for PDFs
   after one that wrote PNGs draws the PDFs alone).

Every figure is written as PNG, which the page embeds; PDF and SVG (vector files for a paper) when asked
(``formats``, ``prunelab report --formats png,pdf,svg``): they triple the time of a first report, which should
take a minute on a store of a thousand runs on a laptop (``bench/report_speed.py``). A figure's files of
formats not asked for are removed, so the folder holds the formats of the last report only.

Builders run in worker processes, not threads (matplotlib is not thread-safe), forked where the system can
(a worker starts with the parent's imports instead of importing torch and matplotlib again: the parent imports
what the builders need before the first fork), one torch thread each. Every file is a function of its figure
alone (:mod:`prunelab.reports.plots.style`: no dates, a fixed SVG salt), so a parallel report writes the bytes of
a serial one, and a reused file those of a redrawn one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prunelab.io import atomic_write_bytes, atomic_write_text
from prunelab.reports import plots
from prunelab.reports.digests import code_version, data_digest
from prunelab.reports.figure_inputs import RunFiles, setting_digest
from prunelab.reports.figures import (
    BUILDERS,
    SKIPPED_ERRORS,
    Context,
    builder_named,
    contexts,
    run_builder,
    skip_note,
)
from prunelab.validate import check_name

# What the last report drew: per builder and setting, its inputs' digest, figures and notes; the run files
# found sound. Relative to the report's folder.
BUILDS = "figures/builds.json"
_BUILDS_FORMAT = 1
# Beside each figure's files: the digest of what it draws.
DIGEST_SUFFIX = ".inputs.sha256"


@dataclass
class BuiltFigure:
    """A figure whose files are written: what the page and ``figures.json`` say of it (``hparams`` as JSON
    values), its ``files`` (format -> path relative to the report's folder) and the ``digest`` of what it draws."""

    name: str
    title: str
    caption: str
    hparams: dict[str, Any]
    runs: list[str]
    files: dict[str, str]
    digest: str


@dataclass
class BuiltFigures:
    """The figures of a report in page order, the notes on those that could not be drawn, and how many were
    ``drawn`` now (the others were reused from the last report)."""

    figures: list[BuiltFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drawn: int = 0

    @property
    def reused(self) -> int:
        return len(self.figures) - self.drawn


@dataclass
class _Task:
    """A builder to run on one setting: ``key`` ("<setting>/<builder>"), the digest of its ``inputs``."""

    key: str
    inputs: str
    builder: str
    ctx: Context


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """``formats`` in :data:`plots.FORMATS` order, PNG first; a ValueError (one line) for an unknown format or
    a list without PNG (the page embeds it)."""
    for fmt in formats:
        check_name("figure format", fmt, plots.FORMATS)
    if "png" not in formats:
        raise ValueError(f"figure formats {','.join(formats)} lack png, which the report's page shows: "
                         f"give png and any of {', '.join(f for f in plots.FORMATS if f != 'png')}")
    return tuple(f for f in plots.FORMATS if f in formats)


def build_figures(root: str | os.PathLike, out: str | os.PathLike, runs: pd.DataFrame, layers: pd.DataFrame,
                  dpi: int = 110, formats: Sequence[str] = plots.DEFAULT_FORMATS, jobs: int | None = None,
                  rebuild: bool = False) -> BuiltFigures:
    """Write the files of every figure the store at ``root`` supports into ``out/figures`` in ``formats``
    (see :func:`check_formats`), drawing only those whose inputs changed since the last report into ``out``
    (all of them with ``rebuild``) and the formats a figure lacks, with ``jobs`` worker processes (default:
    one per available CPU; 1: in this process). Files of figures the last report drew and this one does not,
    and of formats not asked for, are removed."""
    out, formats = Path(out), check_formats(formats)
    previous = _read_builds(out)
    files = RunFiles(root, [] if rebuild else previous.get("sound", []))
    settings = contexts(root, runs, layers)
    keys = [f"{ctx.setting}/{build.__name__}" for ctx in settings for build in BUILDERS]  # the page's order
    planned: dict[str, dict[str, Any] | Future] = {}
    with _Workers(jobs, out, formats, dpi, rebuild) as workers:
        # The settings with the most runs first: their builders take longest, so they start first instead of
        # ending the report alone; workers draw while the files of the next settings are hashed and checked.
        for ctx in sorted(settings, key=lambda c: -len(c.runs)):
            inputs = setting_digest(ctx, files, formats, dpi)
            for build in BUILDERS:
                key, digest = f"{ctx.setting}/{build.__name__}", data_digest(inputs, build.__name__)
                record = previous.get("builds", {}).get(key)
                reusable = not rebuild and record is not None and record["inputs"] == digest and all(
                    _on_disk(out, BuiltFigure(**f)) for f in record["figures"])
                planned[key] = record if reusable else workers.submit(_Task(key, digest, build.__name__, ctx))
        done = {key: p.result() if isinstance(p, Future) else (p, 0) for key, p in planned.items()}

    result, builds = BuiltFigures(), {}
    for key in keys:
        record, drawn = done[key]
        builds[key] = record
        result.figures += [BuiltFigure(**f) for f in record["figures"]]
        result.notes += record["notes"]
        result.drawn += drawn
    removed = _remove_stale(out, previous, result.figures)
    if removed:
        counts = " and ".join(f"{n} {fmt.upper()}" for fmt, n in sorted(removed.items()))
        result.notes.append(f"removed {counts} files of the figures, a format this report was not asked for "
                            "(--formats png,pdf,svg keeps them)")
    atomic_write_text(out / BUILDS, json.dumps({"format": _BUILDS_FORMAT, "builds": builds,
                                                "sound": sorted(files.sound & files.seen)}, indent=1))
    return result


def _read_builds(out: Path) -> dict[str, Any]:
    """The record of the last report; none (draw everything) when there is none or it is of another format.
    The record is the report's own cache, so an unreadable one is redrawn over, not reported."""
    try:
        record = json.loads((out / BUILDS).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("format") == _BUILDS_FORMAT else {}


def _digest_path(out: Path, name: str) -> Path:
    return out / "figures" / f"{name}{DIGEST_SUFFIX}"


def _missing(out: Path, fig: BuiltFigure) -> list[str]:
    """The formats of ``fig`` to draw: all when the files on disk were drawn from other data (or there are
    none), else those whose file is missing."""
    try:
        drawn_from = _digest_path(out, fig.name).read_text().strip()
    except OSError:
        drawn_from = None
    if drawn_from != fig.digest:
        return list(fig.files)
    return [fmt for fmt, path in fig.files.items() if not (out / path).is_file()]


def _on_disk(out: Path, fig: BuiltFigure) -> bool:
    """Whether the files of ``fig`` are all there, drawn from what its digest says."""
    return not _missing(out, fig)


class _Workers:
    """Where builders run: ``jobs`` worker processes, started at the first task (none when every figure is
    reused), or this process when ``jobs`` is 1 (default: one per available CPU)."""

    def __init__(self, jobs: int | None, out: Path, formats: tuple[str, ...], dpi: int, rebuild: bool):
        from prunelab.training.runtime import available_cpus

        self.jobs = available_cpus() if jobs is None else jobs
        self.options = (out, formats, dpi, rebuild)
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, task: _Task) -> Future:
        if self.jobs <= 1:
            future: Future = Future()
            future.set_result(_build(task, *self.options))
            return future
        if self.pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "fork":
                _import_for_workers()
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context(method),
                                            initializer=_one_thread)
        return self.pool.submit(_build, task, *self.options)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=exc[0] is not None)


def _import_for_workers() -> None:
    """Import here, once, the modules that builders import (the models, datasets and analyses, with torch and
    torchvision: about 2.5 s of CPU each time): forked workers start with them instead of each importing them."""
    import torch  # noqa: F401

    from prunelab import analysis, data, masks, models  # noqa: F401
    from prunelab.training import checkpoints  # noqa: F401


def _one_thread() -> None:
    """A worker computes with one torch thread: the workers already share the CPUs out."""
    import torch

    torch.set_num_threads(1)


def _build(task: _Task, out: Path, formats: tuple[str, ...], dpi: int, rebuild: bool) -> tuple[dict[str, Any], int]:
    """Run one builder; draw and write each of its figures in the formats whose files do not already show
    the same data."""
    build = builder_named(task.builder)
    figures, notes = run_builder(build, task.ctx, draw=False)
    built, drawn = [], 0
    for fig in figures:
        files = {fmt: f"figures/{fig.name}.{fmt}" for fmt in formats}
        done = BuiltFigure(fig.name, fig.title, fig.caption, jsonable(fig.hparams), list(fig.runs), files,
                           data_digest(code_version(), dpi, fig.plot.function, fig.plot.args, fig.plot.kwargs))
        missing = list(formats) if rebuild else _missing(out, done)
        if missing:
            try:
                figure = fig.figure
            except SKIPPED_ERRORS as e:
                notes.append(skip_note(build, task.ctx, e))  # as when the builder itself fails: later figures too
                break
            digest = _digest_path(out, fig.name)
            if len(missing) == len(formats):  # new data: no file may claim the old digest while these are written
                digest.unlink(missing_ok=True)
            rendered = plots.render(figure, missing, dpi=dpi)
            for fmt in missing:
                atomic_write_bytes(out / files[fmt], rendered[fmt])
            atomic_write_text(digest, done.digest + "\n")  # last: the files are complete
            drawn += 1
        built.append(dataclasses.asdict(done))
    return {"inputs": task.inputs, "figures": built, "notes": notes}, drawn


def _remove_stale(out: Path, previous: dict[str, Any], current: list[BuiltFigure]) -> Counter[str]:
    """Remove the files of the figures the last report drew and this one does not (a setting whose runs were
    deleted), and those of formats this report was not asked for: the folder then holds this report's files
    only. Files the last report did not record are left alone. Returns how many files of figures still shown
    were removed, per format (the report says so: a PDF drawn for a paper does not vanish without a word)."""
    kept = {(fig.name, path) for fig in current for path in fig.files.values()}
    names = {fig.name for fig in current}
    removed: Counter[str] = Counter()
    for record in previous.get("builds", {}).values():
        for fig in record["figures"]:
            for fmt, path in fig["files"].items():
                if (fig["name"], path) not in kept and (out / path).is_file():
                    (out / path).unlink()
                    if fig["name"] in names:
                        removed[fmt] += 1
            if fig["name"] not in names:
                _digest_path(out, fig["name"]).unlink(missing_ok=True)
    return removed


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and a float NaN as None, for JSON."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
