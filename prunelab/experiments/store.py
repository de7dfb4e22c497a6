"""The run store: one folder per run, named by the hash of its hyperparameters (OpenLTH's idea).

``<root>/<hash>/`` holds ``hparams.json`` (written first), ``metrics.jsonl``, ``mask.pt``,
``checkpoints/`` and, last, ``result.json``. A run whose ``result.json`` says ``done`` or ``diverged``
is finished and is never computed again; any other state is resumed from its checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunelab.io import atomic_write_json, atomic_write_text
from prunelab.training import distributed

FINISHED = ("done", "diverged")

# Locks this process holds: path -> [file object, depth]. flock is per open file, so a second open in
# the same process would deadlock; nested protocol calls (a pruned run needing its dense run) re-enter.
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


def _remove_temporaries(folder: Path) -> None:
    """Half-written temporary files a killed writer left (only the lock holder writes into a run folder)."""
    for tmp in folder.rglob(".*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


class RunStore:
    """Under torch.distributed only rank 0 writes; the other ranks read what it wrote after a barrier."""

    def __init__(self, root: str | os.PathLike = "runs"):
        self.root = Path(root)

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def result(self, run_id: str) -> dict[str, Any] | None:
        """The stored result of a finished run, else None (a failed run is retried, so it is not finished).

        A damaged ``result.json`` is set aside with a warning (rank 0 only) and the run counts as unfinished.
        """
        result = self._read_result(self.folder(run_id) / "result.json")
        return result if result is not None and result.get("status") in FINISHED else None

    @staticmethod
    def _read_result(path: Path) -> dict[str, Any] | None:
        try:
            result = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            result = None
        if isinstance(result, dict):
            return result
        if distributed.is_main():
            from prunelab.training.checkpoints import set_aside

            set_aside(path, f"result {path} is unreadable")
        return None

    def hparams(self, run_id: str) -> dict[str, Any]:
        return json.loads((self.folder(run_id) / "hparams.json").read_text())

    def begin(self, run_id: str, hparams: dict[str, Any]) -> Path:
        """Create the run folder and write its hyperparameters (once); a clear error if the root is not writable."""
        folder = self.folder(run_id)
        if not distributed.is_main():
            distributed.barrier()
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "hparams.json").is_file():
                atomic_write_json(folder / "hparams.json", {"id": run_id, **hparams})
        except PermissionError:
            raise PermissionError(f"run root {self.root} is not writable") from None
        except OSError as e:
            raise OSError(f"cannot write to run root {self.root}: {e.strerror}") from None
        distributed.barrier()
        return folder

    def finish(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        result = {"id": run_id, **result}
        if distributed.is_main():
            atomic_write_json(self.folder(run_id) / "result.json", result)
        distributed.barrier()
        return result

    @contextlib.contextmanager
    def lock(self, run_id: str):
        """Exclusive use of a run by one process at a time, across processes and machines sharing the
        folder. An ``flock`` on ``<run>/.lock``: the kernel releases it when its holder dies, so a run left
        half-done by a killed worker is taken (and resumed) by the next one. Re-entrant within a process.
        """
        folder = self.folder(run_id)
        if not distributed.is_main():  # rank 0 holds the lock for the whole group
            yield
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise PermissionError(f"run root {self.root} is not writable") from None
        key = str(folder.resolve())
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held[1] += 1
        if held is None:
            f = open(folder / ".lock", "a+")  # noqa: SIM115 - held across the context
            fcntl.flock(f, fcntl.LOCK_EX)
            with _HELD_GUARD:
                _HELD[key] = held = [f, 1]
            _remove_temporaries(folder)
        try:
            yield
        finally:
            with _HELD_GUARD:
                held[1] -= 1
                if held[1] == 0:
                    del _HELD[key]
                    fcntl.flock(held[0], fcntl.LOCK_UN)
                    held[0].close()

    def once(self, run_id: str, compute) -> dict[str, Any]:
        """The stored result of a finished run, else ``compute()`` under the run's lock (checked again inside).

        Under torch.distributed rank 0 reads and decides, so every rank takes the same path.
        """
        done = distributed.broadcast_object(self.result(run_id) if distributed.is_main() else None)
        if done is not None:
            return done
        with self.lock(run_id):
            done = distributed.broadcast_object(self.result(run_id) if distributed.is_main() else None)
            return done if done is not None else compute()

    def record_failure(self, run_id: str, error: BaseException) -> bool:
        """Keep a failed run's error in its folder (result.json with status "failed", error.txt); it is retried.

        Under the run's lock, and never over a finished result (another worker may have finished it);
        ``hparams.json`` is left to the run itself. Returns whether the failure was recorded.
        """
        import traceback

        if not distributed.is_main():
            return False
        with self.lock(run_id):
            if self.result(run_id) is not None:
                return False
            folder = self.folder(run_id)
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            atomic_write_json(folder / "result.json", {"id": run_id, "status": "failed",
                                                       "error": f"{type(error).__name__}: {error}"})
            atomic_write_text(folder / "error.txt", text)
        return True

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
