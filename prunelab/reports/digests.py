"""Digests that decide whether a figure of the report must be drawn again: of plain data (a plot's arguments,
the rows of a table), of a file's contents, and of the code that draws (:func:`code_version`).

The encoding is canonical rather than a pickle because pickle's bytes depend on object identity (a string
referenced twice is written once, a copy twice): equal data could then hash differently from one report to
the next, and figures would be drawn again for nothing. Every value is written with its type and length, so
that no two different values share an encoding; a type it does not know is a TypeError, never a guess.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def data_digest(*values: Any) -> str:
    """The SHA-256 (hex) of ``values`` in the canonical encoding: equal data, equal digest."""
    h = hashlib.sha256()
    for value in values:
        _feed(h, value)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's contents, or ``"absent"``."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return "absent"


@functools.cache
def code_version() -> str:
    """A digest of the code that turns tables into figure files: every source file of :mod:`prunelab.reports`
    (builders, plots, this cache) and the versions of matplotlib and numpy. A change of any of them draws every
    figure again. The rest of prunelab (a model's definition, which the conservation figure builds) enters
    through its version only; ``prunelab report --rebuild`` redraws after an edit there."""
    import matplotlib

    import prunelab

    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        _feed(h, str(path.relative_to(package)))
        _feed(h, path.read_bytes())
    _feed(h, [getattr(prunelab, "__version__", ""), matplotlib.__version__, np.__version__])
    return h.hexdigest()


def _feed(h, value: Any) -> None:  # noqa: C901 - one branch per type, in one place
    if value is None or value is pd.NA or value is pd.NaT:
        h.update(b"N")
    elif isinstance(value, (bool, np.bool_)):
        h.update(b"B1" if value else b"B0")
    elif isinstance(value, (int, np.integer)):
        _tagged(h, b"I", str(int(value)).encode())
    elif isinstance(value, (float, np.floating)):
        h.update(b"F" + struct.pack("<d", float(value)))
    elif isinstance(value, str):
        _tagged(h, b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        _tagged(h, b"Y", value)
    elif isinstance(value, np.ndarray):
        _feed_array(h, value)
    elif isinstance(value, (pd.Series, pd.Index)):
        h.update(b"P")
        _feed(h, list(value.index) if isinstance(value, pd.Series) else None)
        _feed_array(h, value.to_numpy())
    elif isinstance(value, pd.DataFrame):
        h.update(b"R")
        _feed(h, [str(c) for c in value.columns])
        _feed(h, [str(t) for t in value.dtypes])
        _feed_array(h, value.to_numpy(dtype=object))
    elif isinstance(value, dict):
        _tagged(h, b"D", str(len(value)).encode())
        for k, v in value.items():  # in order: a plot's panels and legends follow it
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple)):
        _tagged(h, b"L" if isinstance(value, list) else b"T", str(len(value)).encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, (set, frozenset)):
        _feed(h, sorted(value, key=repr))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _tagged(h, b"C", _qualified(type(value)).encode())
        _feed(h, [getattr(value, f.name) for f in dataclasses.fields(value)])
    elif callable(value) and hasattr(value, "__qualname__"):
        _tagged(h, b"X", _qualified(value).encode())
    elif "torch" in sys.modules and isinstance(value, sys.modules["torch"].Tensor):
        _feed_array(h, value.detach().cpu().numpy())
    else:
        raise TypeError(f"no canonical digest for a {type(value).__module__}.{type(value).__qualname__}; "
                        "give figures plain data (numbers, strings, arrays, lists, dicts, dataclasses)")


def _tagged(h, tag: bytes, payload: bytes) -> None:
    h.update(tag + str(len(payload)).encode() + b":" + payload)


def _feed_array(h, array: np.ndarray) -> None:
    _tagged(h, b"A", f"{array.dtype.str}{array.shape}".encode())
    if array.dtype.hasobject:
        for v in array.reshape(-1).tolist():
            _feed(h, v)
    else:
        h.update(np.ascontiguousarray(array).tobytes())


def _qualified(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"
