"""The device a run computes on: a name checked before any work (:func:`check_device`), ``auto`` resolved
(:func:`resolve_device`), and the ``--device`` option of the scripts in ``bench/`` and ``repro/``
(:func:`device_arg`)."""

from __future__ import annotations

import torch


def check_device(device: str, here: bool = True) -> str:
    """``device`` if it names a device this machine has ("auto", "cpu", "cuda", "cuda:1", "mps"), else a
    one-line ValueError that says what is available; so that a bad name fails before any work.
    ``here=False``: only the name is checked (the device of jobs that run on other machines)."""
    if device == "auto":
        return device
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if not here and d.type in ("cpu", "cuda", "mps"):
        return device
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine "
                             "(use --device cpu or auto)")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif d.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} was asked for, but MPS is not available on this machine")
    elif d.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def device_arg(text: str) -> torch.device:
    """``type=`` of a script's ``--device`` option (``bench/``, ``repro/``): the device, or argparse's error
    with :func:`check_device`'s message."""
    import argparse

    try:
        return resolve_device(check_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
