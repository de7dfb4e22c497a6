"""The run store: one folder per run, named by the hash of its hyperparameters (OpenLTH's idea).

``<root>/<hash>/`` holds ``hparams.json`` (written first), ``provenance.json``, ``metrics.jsonl``,
``mask.pt``, ``checkpoints/`` and, last, ``result.json``. A run whose ``result.json`` says ``done`` or
``diverged`` is finished and is never computed again; any other state is resumed from its checkpoints.

Every JSON file is read through :mod:`prunelab.experiments.runfiles`. Whoever computes a run (under its
lock) sets a damaged file aside and rewrites it; a lister (:meth:`RunStore.runs`) skips a run with a
damaged file, with one :class:`SkippedRunWarning` naming the file, and reads the rest of the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunelab.experiments import provenance, runfiles
from prunelab.experiments.runfiles import DamagedRunFile
from prunelab.io import DamagedFileWarning, atomic_write_json, atomic_write_text, set_aside


def _distributed():
    """:mod:`prunelab.training.distributed`, imported where a run is written: it imports torch, which the
    commands that only read a store (``ls``, ``show``, ``export``) never do."""
    from prunelab.training import distributed

    return distributed


def _is_main() -> bool:
    """Rank 0 of a process group, or no group at all (always so while torch is not even imported)."""
    return "torch" not in sys.modules or _distributed().is_main()

FINISHED = ("done", "diverged")
# States of a run as ``ls`` shows them: its result's status, else whether a process computes it now.
STATES = ("done", "diverged", "failed", "running", "interrupted")

# Room the deepest file of a run folder needs below the root:
# "/<16 hex>/checkpoints/.step_<step>.pt.<random>.tmp", and "/.submitit/<job id>/..." for Slurm.
_DEEPEST_RUN_PATH = 128


class SkippedRunWarning(DamagedFileWarning):
    """A run was left out of a listing because one of its files is damaged (named in the message)."""

# Locks this process holds: path -> [file object, depth]. flock is per open file, so a second open in
# the same process would deadlock; nested protocol calls (a pruned run needing its dense run) re-enter.
_HELD: dict[str, list] = {}
# Provenance sessions this process opened: run folder -> index in its provenance.json. A process that
# comes back to a run (weights at step t first, then the rest of the training) goes on with its session.
_SESSIONS: dict[str, int] = {}
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

        A damaged ``result.json`` is set aside with a warning (rank 0 only) and the run counts as unfinished,
        so it is computed again.
        """
        result = self._read_or_set_aside(self.folder(run_id) / runfiles.RESULT_JSON)
        return result if result is not None and result["status"] in FINISHED else None

    @staticmethod
    def _read_or_set_aside(path: Path) -> dict[str, Any] | None:
        try:
            return runfiles.read(path)
        except DamagedRunFile as e:
            if _is_main() and path.is_file():
                set_aside(path, str(e))
            return None

    def hparams(self, run_id: str) -> dict[str, Any]:
        """The run's validated hyperparameters; DamagedRunFile or FileNotFoundError name the file."""
        path = self.folder(run_id) / runfiles.HPARAMS_JSON
        hp = runfiles.read(path)
        if hp is None:
            raise FileNotFoundError(f"run {run_id} has no hparams.json in {self.folder(run_id)}")
        return hp

    def check_root(self) -> None:
        """Refuse, before anything is written, a root under which the run files would not fit the file
        system's limits on the length of a name or a path."""
        root = self.root.absolute()
        existing = root
        while not _exists(existing) and existing != existing.parent:
            existing = existing.parent
        name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
        for part in root.parts:
            if len(os.fsencode(part)) > name_max:
                raise ValueError(f"run root {_short(self.root)}: the folder name {_short(part)} is longer than the "
                                 f"{name_max} bytes this file system allows")
        if len(os.fsencode(str(root))) + _DEEPEST_RUN_PATH > path_max:
            raise ValueError(f"run root {_short(self.root)} is too long: its run files would pass the "
                             f"{path_max}-byte path limit of this file system; choose a shorter --root")

    def begin(self, run_id: str, hparams: dict[str, Any], session: dict[str, Any] | None = None) -> Path:
        """Create the run folder and write its hyperparameters (once; a damaged file is set aside and
        rewritten, since the id fixes them), and open this process's ``session`` record in
        ``provenance.json``. Called under the run's lock; a clear error if the root is not writable."""
        folder = self.folder(run_id)
        if not _is_main():
            _distributed().barrier()
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._ensure_hparams(run_id, hparams)
        except PermissionError:
            raise PermissionError(f"run root {self.root} is not writable") from None
        except OSError as e:
            raise OSError(e.errno, f"cannot write to run root {self.root}: {e.strerror}", e.filename) from None
        if session is not None:
            self._open_session(folder, session)
        _distributed().barrier()
        return folder

    def _ensure_hparams(self, run_id: str, hparams: dict[str, Any]) -> None:
        """Write ``hparams.json`` unless a good one is there; a damaged one is set aside first."""
        path = self.folder(run_id) / runfiles.HPARAMS_JSON
        if self._read_or_set_aside(path) is None:
            atomic_write_json(path, {"id": run_id, **hparams})

    def _hparams_ok(self, run_id: str) -> bool:
        try:
            return runfiles.read(self.folder(run_id) / runfiles.HPARAMS_JSON) is not None
        except (DamagedRunFile, OSError):
            return False

    # ---- provenance: one record per session that computes part of a run ----------------------------
    def provenance(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``provenance.json`` (validated; DamagedRunFile names it), or None for a run without one."""
        return runfiles.read(self.folder(run_id) / runfiles.PROVENANCE_JSON)

    def _open_session(self, folder: Path, session: dict[str, Any]) -> None:
        held = _HELD.get(str(folder.resolve()))
        if held is None or held[2] is not None:  # not under the lock, or already opened by this process
            return
        path = folder / runfiles.PROVENANCE_JSON
        record = self._read_or_set_aside(path) or {"sessions": []}
        sessions, key = record["sessions"], str(folder.resolve())
        index = _SESSIONS.get(key)
        if index is not None and index < len(sessions) and sessions[index].get("pid") == session.get("pid"):
            for name in ("ended_at", "outcome"):
                sessions[index].pop(name, None)
        else:
            sessions.append({**session, "started_at": provenance.now()})
            index = _SESSIONS[key] = len(sessions) - 1
        atomic_write_json(path, record)
        held[2] = index

    def _close_session(self, folder: Path, index: int, outcome: str | None) -> None:
        path = folder / runfiles.PROVENANCE_JSON
        if outcome is None:
            result = self._read_or_set_aside(folder / runfiles.RESULT_JSON)
            outcome = result["status"] if result is not None else "no result"
        try:
            record = runfiles.read(path)
            if record is None or index >= len(record["sessions"]):
                return
            record["sessions"][index].update(ended_at=provenance.now(), outcome=outcome)
            atomic_write_json(path, record)
        except (DamagedRunFile, OSError) as e:  # never hides the outcome of the run itself
            warnings.warn(f"could not record the end of this session in {path}: {e}", DamagedFileWarning,
                          stacklevel=4)

    def finish(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        result = {"id": run_id, **result}
        if _is_main():
            atomic_write_json(self.folder(run_id) / runfiles.RESULT_JSON, result)
            # a retried run that failed before: its old error would read as this result's
            (self.folder(run_id) / runfiles.ERROR).unlink(missing_ok=True)
        _distributed().barrier()
        return result

    @contextlib.contextmanager
    def lock(self, run_id: str):
        """Exclusive use of a run by one process at a time, across processes and machines sharing the
        folder. An ``flock`` on ``<run>/.lock``: the kernel releases it when its holder dies, so a run left
        half-done by a killed worker is taken (and resumed) by the next one. Re-entrant within a process.
        """
        folder = self.folder(run_id)
        if not _is_main():  # rank 0 holds the lock for the whole group
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
            f = open(folder / runfiles.LOCK, "a+")  # noqa: SIM115 - held across the context
            fcntl.flock(f, fcntl.LOCK_EX)
            with _HELD_GUARD:
                _HELD[key] = held = [f, 1, None]  # file, depth, index of this process's provenance session
            _remove_temporaries(folder)
        outcome = None
        try:
            yield
        except KeyboardInterrupt as e:  # SIGINT, or SIGTERM through the CLI's handler
            outcome = "interrupted"
            if not hasattr(e, "prunelab_run"):
                e.prunelab_run = folder  # the innermost run, for the CLI's message on what a rerun resumes
            raise
        except BaseException as e:
            outcome = f"failed: {type(e).__name__}"
            raise
        finally:
            with _HELD_GUARD:
                held[1] -= 1
                last = held[1] == 0
                if last:
                    del _HELD[key]
            if last:
                try:
                    if held[2] is not None:
                        self._close_session(folder, held[2], outcome)
                finally:
                    fcntl.flock(held[0], fcntl.LOCK_UN)
                    held[0].close()

    def running(self, run_id: str) -> bool:
        """Whether some process (this one included) holds the run's lock now, i.e. is computing it."""
        folder = self.folder(run_id)
        if str(folder.resolve()) in _HELD:
            return True
        try:
            fd = os.open(folder / runfiles.LOCK, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def state(self, run_id: str, result: dict[str, Any] | None) -> str:
        """One of :data:`STATES`: a finished run's status, else ``running`` while some process holds its lock
        (a failed run may be retried now), else ``failed`` or ``interrupted`` (no result: its process died)."""
        if result is not None and result["status"] in FINISHED:
            return result["status"]
        if self.running(run_id):
            return "running"
        return result["status"] if result is not None else "interrupted"

    def once(self, run_id: str, compute, hparams: dict[str, Any]) -> dict[str, Any]:
        """The stored result of a finished run, else ``compute()`` under the run's lock (checked again inside).

        A finished run whose ``hparams.json`` is damaged gets it back from ``hparams`` (the damaged one set
        aside), so that listings see it again. Under torch.distributed rank 0 reads and decides, so every
        rank takes the same path.
        """
        main = _is_main()
        done = _distributed().broadcast_object(self.result(run_id) if main else None)
        if done is not None and _distributed().broadcast_object(self._hparams_ok(run_id) if main else None):
            return done
        with self.lock(run_id):
            done = _distributed().broadcast_object(self.result(run_id) if main else None)
            if done is None:
                return compute()
            if main:
                self._ensure_hparams(run_id, hparams)
            return done

    def record_failure(self, run_id: str, error: BaseException) -> bool:
        """Keep a failed run's error in its folder (result.json with status "failed", error.txt); it is retried.

        Under the run's lock, and never over a finished result (another worker may have finished it);
        ``hparams.json`` is left to the run itself. Returns whether the failure was recorded.
        """
        import traceback

        if not _is_main():
            return False
        with self.lock(run_id):
            if self.result(run_id) is not None:
                return False
            folder = self.folder(run_id)
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            atomic_write_json(folder / runfiles.RESULT_JSON, {"id": run_id, "status": "failed",
                                                       "error": f"{type(error).__name__}: {error}"})
            atomic_write_text(folder / runfiles.ERROR, text)
        return True

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / runfiles.HPARAMS_JSON).is_file())

    def runs(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any] | None]]:
        """(id, hparams, result or None) of every readable run. A run with a damaged or unreadable
        ``hparams.json`` or ``result.json`` is skipped with one :class:`SkippedRunWarning` naming the file
        (nothing is moved: listing never changes the store)."""
        for run_id in self.ids():
            try:
                hp = self.hparams(run_id)
                result = runfiles.read(self.folder(run_id) / runfiles.RESULT_JSON)
            except (DamagedRunFile, OSError) as e:
                warnings.warn(f"skipped run {run_id}: {e}", SkippedRunWarning, stacklevel=2)
                continue
            yield run_id, hp, result

    def resolve(self, ref: str) -> str:
        """A run id of this store from a full id or a unique prefix (see :func:`open_run` for folders)."""
        matches = [i for i in self.ids() if i.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ValueError(f"no run {ref!r} in {self.root}")
        raise ValueError(f"run prefix {ref!r} is ambiguous in {self.root}: {', '.join(matches[:5])}")


def open_run(ref: str, root: str | os.PathLike = "runs") -> tuple[RunStore, str]:
    """(store, run id) for a run given as a folder path (of any store) or as an id or unique prefix in ``root``."""
    path = Path(ref)
    if (path / runfiles.HPARAMS_JSON).is_file():
        path = path.resolve()
        return RunStore(path.parent), path.name
    if os.sep in ref:
        raise FileNotFoundError(f"no run folder {ref} (a run folder holds hparams.json)")
    store = RunStore(root)
    if not store.root.is_dir():
        raise FileNotFoundError(f"no run {ref!r}: run store {store.root} does not exist (give --root the folder the "
                                "runs were written to, or a run folder)")
    return store, store.resolve(ref)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long to look up
        return False


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def _short(text: str | os.PathLike) -> str:
    text = str(text)
    return text if len(text) <= 60 else f"{text[:28]}...{text[-28:]}"
