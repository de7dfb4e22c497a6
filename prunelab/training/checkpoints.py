"""Checkpoints with a checksum, written crash-safely, and a folder that keeps only what protocols need.

File layout: a magic line, the SHA-256 of the payload in hex, a newline, then the payload (a
``torch.save`` of the state dict). A truncated or bit-flipped file fails the checksum and is detected
before anything is loaded from it.

During training, checkpoints are written by a :class:`BackgroundWriter`: the training thread only copies
the state to host memory (:func:`to_host`); serializing, hashing, fsync and the atomic rename happen in
one writer thread, in order. A kill at any moment leaves the previous file or the new one, never half
of one (the rename is the last act of a write).
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import pickle
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from prunelab.io import atomic_write_bytes, set_aside  # noqa: F401 - set_aside: also imported from here

_MAGIC = b"PRUNELAB-CKPT-1\n"


class CorruptCheckpoint(ValueError):
    """A checkpoint file that is truncated, altered or not a prunelab checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    return atomic_write_bytes(path, _MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raw = path.read_bytes()
    head = len(_MAGIC) + 65
    if not raw.startswith(_MAGIC) or len(raw) < head:
        raise CorruptCheckpoint(f"{path} is not a prunelab checkpoint or is truncated")
    digest, payload = raw[len(_MAGIC) : head - 1], raw[head:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpoint(f"{path} fails its checksum (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


class CheckpointFolder:
    """``latest.pt`` (overwritten each epoch) plus ``step_<n>.pt`` for the steps protocols rewind to."""

    _STEP = re.compile(r"^step_(\d+)\.pt$")

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step}.pt"

    @property
    def latest_path(self) -> Path:
        return self.folder / "latest.pt"

    def save(self, state: dict[str, Any], *, keep: bool = False, latest: bool = True) -> None:
        if keep:  # first: a crash between the two writes must not lose a step protocols rewind to
            save_checkpoint(self.path_for(int(state["step"])), state)
        if latest:
            save_checkpoint(self.latest_path, state)

    def kept_steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := self._STEP.match(p.name)))

    def load_step(self, step: int) -> dict[str, Any] | None:
        return self._load_or_set_aside(self.path_for(step))

    def load_latest(self, max_step: int | None = None) -> dict[str, Any] | None:
        """The good checkpoint with the highest step (<= max_step); corrupt files are set aside with a warning.

        Kept checkpoints carry their step in their name, so at most ``latest.pt`` and the best kept one
        are read (plus any that turn out corrupt).
        """
        best = self._load_or_set_aside(self.latest_path)
        if best is not None and max_step is not None and best["step"] > max_step:
            best = None
        for step in reversed(self.kept_steps()):
            if (max_step is not None and step > max_step) or (best is not None and step <= best["step"]):
                continue
            state = self._load_or_set_aside(self.path_for(step))
            if state is not None:
                return state
        return best

    @staticmethod
    def _load_or_set_aside(path: Path) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            return load_checkpoint(path)
        except (CorruptCheckpoint, RuntimeError, EOFError, pickle.UnpicklingError) as e:
            set_aside(path, str(e) if str(path) in str(e) else f"checkpoint {path} is unreadable ({e})")
            return None


def to_host(obj: Any) -> Any:
    """A copy of ``obj`` that later training cannot change: every tensor copied to CPU memory, every
    container copied. CUDA tensors go to pinned memory without blocking, then one synchronization waits
    for all of them (not one per tensor)."""
    devices: set[torch.device] = set()

    def copy_of(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            x = x.detach()
            if x.device.type == "cuda":
                devices.add(x.device)
                return torch.empty_like(x, device="cpu", pin_memory=True).copy_(x, non_blocking=True)
            return x.to("cpu", copy=True)
        if type(x) in (dict, OrderedDict):  # state dicts are OrderedDicts
            return type(x)((k, copy_of(v)) for k, v in x.items())
        if type(x) in (list, tuple):
            return type(x)(copy_of(v) for v in x)
        return copy.deepcopy(x)

    out = copy_of(obj)
    for device in devices:
        torch.cuda.synchronize(device)
    return out


class BackgroundWriter:
    """Runs writes in one background thread, in the order they were submitted.

    At most ``max_pending`` writes wait at a time: a further ``submit`` waits for the oldest, so host
    memory holds at most that many copies of the state. An error in a write is raised by the next
    ``submit`` or by ``flush``, on the caller's thread.
    """

    def __init__(self, max_pending: int = 2):
        self.max_pending = max_pending
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._reap(wait_for=len(self._pending) - self.max_pending + 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="prunelab-checkpoints")
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def flush(self) -> None:
        """Wait until every submitted write is on disk; the first error of one of them is raised."""
        self._reap(wait_for=len(self._pending))

    def _reap(self, wait_for: int) -> None:
        while self._pending and (wait_for > 0 or self._pending[0].done()):
            wait_for -= 1
            self._pending.popleft().result()

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
