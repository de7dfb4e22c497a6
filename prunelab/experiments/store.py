"""The run store: one folder per run, named by the hash of its hyperparameters (OpenLTH's idea).

``<root>/<hash>/`` holds ``hparams.json`` (written first), ``metrics.jsonl``, ``mask.pt``,
``checkpoints/`` and, last, ``result.json``. A run whose ``result.json`` says ``done`` or ``diverged``
is finished and is never computed again; any other state is resumed from its checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunelab.io import atomic_write_json

FINISHED = ("done", "diverged")


class RunStore:
    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def result(self, run_id: str) -> dict[str, Any] | None:
        """The stored result of a finished run, else None (a failed run is retried, so it is not finished)."""
        path = self.folder(run_id) / "result.json"
        try:
            result = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return result if result.get("status") in FINISHED else None

    def hparams(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.folder(run_id) / "hparams.json").read_text())

    def begin(self, run_id: str, hparams: dict[str, Any]) -> Path:
        """Create the run folder and write its hyperparameters (once); a clear error if the root is not writable."""
        folder = self.folder(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "hparams.json").is_file():
                atomic_write_json(folder / "hparams.json", {"id": run_id, **hparams})
        except PermissionError:
            raise PermissionError(f"run root {self.root} is not writable") from None
        except OSError as e:
            raise OSError(f"cannot write to run root {self.root}: {e.strerror}") from None
        return folder

    def finish(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        result = {"id": run_id, **result}
        atomic_write_json(self.folder(run_id) / "result.json", result)
        return result

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "hparams.json").is_file())

    def runs(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        for run_id in self.ids():
            try:
                hp = self.hparams(run_id)
            except (OSError, json.JSONDecodeError):
                continue
            path = self.folder(run_id) / "result.json"
            try:
                result = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                result = None
            yield run_id, hp, result

    def resolve(self, ref: str) -> str:
        """A run id from a full id, a unique prefix, or a run folder path."""
        path = Path(ref)
        if (path / "hparams.json").is_file():
            return path.name
        matches = [i for i in self.ids() if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ValueError(f"no run {ref!r} in {self.root}")
        raise ValueError(f"run prefix {ref!r} is ambiguous in {self.root}: {', '.join(matches[:5])}")
