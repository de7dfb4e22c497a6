"""What the figures of one setting are drawn from, as one digest, and the checks of the run files they read.

A builder sees the rows of its setting in the runs and layers tables, and may read, for each of those runs,
its ``mask.pt``, ``metrics.jsonl`` and ``result.json`` (hashed by content: small, and rewritten in place by a
rerun) and its checkpoints (large and written once under a new name: hashed by name, size and modification
time, which a rewrite changes). :func:`setting_digest` adds the code that draws, the output formats and the
resolution; a builder's own inputs are that digest and its name (:mod:`prunelab.reports.figure_builds`).

The masks and metrics files of the finished runs are checked as they are hashed, once per content (the
digests of files found sound are kept by the report for the next one): a damaged file is named in one
:class:`~prunelab.io.DamagedFileWarning` line, every report, instead of only failing the figures that read it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from prunelab.experiments import runfiles
from prunelab.io import DamagedFileWarning
from prunelab.reports.digests import code_version, data_digest, file_digest
from prunelab.reports.figures.context import Context
from prunelab.reports.tables import read_metrics

# The files of a run a figure may read, hashed by content.
READ_FILES = (runfiles.MASK, runfiles.METRICS, runfiles.RESULT_JSON)


def _check_mask(path: Path) -> None:
    from prunelab import Mask

    Mask.load(path)  # ValueError for anything but a prunelab mask: a malicious pickle is never unpickled


# The files checked before a report uses them: a damaged one raises ValueError (or OSError) naming it.
CHECKS: dict[str, Callable[[Path], object]] = {runfiles.MASK: _check_mask, runfiles.METRICS: read_metrics}


class RunFiles:
    """The digest of the files of each run a figure may read, each mask and metrics file checked once per content.

    ``sound``: the ``"<file name>:<digest>"`` of files found sound before (by an earlier report); it grows with
    every file found sound now. ``seen``: those of the files hashed now (what the next report needs to know).
    """

    def __init__(self, root: str | os.PathLike, sound: Iterable[str] = ()):
        self.root = Path(root)
        self.sound = set(sound)
        self.seen: set[str] = set()
        self.damaged: list[Path] = []

    def digest(self, run_id: str) -> str:
        folder = self.root / run_id
        contents = []
        for name in READ_FILES:
            digest = file_digest(folder / name)
            contents.append(digest)
            if name in CHECKS and digest != "absent":
                self._check(folder / name, digest)
        return data_digest(contents, _checkpoint_stats(folder / runfiles.CHECKPOINTS))

    def _check(self, path: Path, digest: str) -> None:
        key = f"{path.name}:{digest}"
        self.seen.add(key)
        if key in self.sound:
            return
        try:
            with warnings.catch_warnings():  # the one line below says it all (torch warns of odd pickles too)
                warnings.simplefilter("ignore")
                CHECKS[path.name](path)
        except (ValueError, OSError) as e:
            self.damaged.append(path)
            warnings.warn(f"the report skipped a damaged file: {' '.join(str(e).split())}", DamagedFileWarning,
                          stacklevel=2)
            return
        self.sound.add(key)


def _checkpoint_stats(folder: Path) -> list[tuple[str, int, int]]:
    stats = []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        stat = path.stat()
        stats.append((path.name, stat.st_size, stat.st_mtime_ns))
    return stats


def setting_digest(ctx: Context, files: RunFiles, formats: tuple[str, ...], dpi: int) -> str:
    """Everything the builders of ``ctx``'s setting may read, and how their figures are written. The store's
    folder, as given, is part of it because the notes on figures that cannot be drawn name files in it."""
    return data_digest(code_version(), list(formats), dpi, str(ctx.root), ctx.runs, ctx.layers,
                       [(run_id, files.digest(run_id)) for run_id in ctx.runs["id"]])
