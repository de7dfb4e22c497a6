"""Crash-safe file writes (a temporary file in the target's folder, flushed and fsynced, then renamed)
and setting damaged files aside.

One place for this logic so that every file prunelab writes (masks, checkpoints, metrics, results)
is either the old version or the new one after a crash, never half of each, and every damaged file
prunelab finds is kept as evidence under a new name, never deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it, which races with threads


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, fsync it, rename it over ``path``.

    The file gets the permissions of a plainly created one (``0o666`` less the umask), not the
    owner-only ones of a temporary file, so that a run store can be shared (a group on a cluster)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _naming(e, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise
    _fsync_dir(path.parent)
    return path


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` with the target file as its file name (a full disk fails in ``write``, which names none)."""
    if error.filename is not None and str(path.name) in str(error.filename):
        return error
    return type(error)(error.errno, error.strerror or str(error), str(path))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch  # here, not at the top: the light commands use this module's warnings and JSON writes

    return atomic_write(path, lambda f: torch.save(obj, f))


def warning_line(message: Warning | str) -> str:
    """A warning as the one line prunelab prints on stderr."""
    return f"prunelab: warning: {' '.join(str(message).split())}"


class DamagedFileWarning(UserWarning):
    """A file prunelab wrote earlier could not be read back; it was set aside or its run skipped."""


def set_aside(path: str | os.PathLike, why: str) -> Path:
    """Keep a damaged file as evidence under a new name (never overwriting earlier evidence) and warn in one line."""
    path = Path(path)
    aside = path.with_name(path.name + ".corrupt")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt{n}")
        n += 1
    os.replace(path, aside)
    warnings.warn(f"{why}; set aside as {aside.name}", DamagedFileWarning, stacklevel=3)
    return aside
