"""Small tensor operations that several layers of the package need, fast on the CPU."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fill_at", "flatnonzero"]


def fill_at(t: torch.Tensor, index: torch.Tensor, value) -> None:
    """``t[index] = value`` for a flat contiguous ``t`` and int64 or bool ``index``.

    On CPU through numpy: torch's CPU ``index_put_`` costs about 100x more here (12 ms for 47k
    indices into 2.4M entries), which would dominate SynFlow's iterations.
    """
    if t.device.type == "cpu" and index.device.type == "cpu" and t.is_contiguous():
        t.detach().numpy()[index.numpy()] = value
    else:
        t[index] = value


def flatnonzero(b: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a flat bool tensor (numpy's is about twice as fast on CPU)."""
    if b.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(b.numpy()))
    return b.nonzero().squeeze(1)
