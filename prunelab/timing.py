"""Contenders timed side by side in one process: the method behind every speed figure prunelab gives (the layer
formats of a compact export, the sparse-kernel crossovers, the scripts of ``bench/``).

A shared machine's load drifts, so two contenders timed one after the other in separate runs compare the load as
much as the code. Here each contender runs in turn, round after round, in an order that rotates and reverses from
round to round, so that a slow spell, and the caches one contender leaves to the next, fall on all of them alike;
the callers take their ratios round by round (:func:`quartiles` of the ratios).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch


class Timing(NamedTuple):
    """Seconds of one call (or the median of a block of calls): this process's CPU time (``time.process_time``,
    every thread of it) and wall time (``time.perf_counter``)."""

    cpu: float
    wall: float


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> Timing:
    """The :class:`Timing` of ``fn()``; ``sync`` (a device's synchronization) before the clocks start and stop."""
    if sync is not None:
        sync()
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return Timing(time.process_time() - cpu, time.perf_counter() - wall)


def paired(fns: Sequence[Callable[[], object]], rounds: int, *, warmup: int = 3, block: int = 1,
           sync: Callable[[], None] | None = None) -> list[list[Timing]]:
    """Per contender of ``fns``, its :class:`Timing` in each of ``rounds`` rounds, after ``warmup`` untimed calls
    of each. In a round every contender runs ``block`` times back to back and keeps the median of all calls but
    the first (which starts with the previous contender's data in the caches, as no repeated use does); with
    ``block`` 1, its one call. The order rotates from round to round and reverses every other round."""
    if rounds < 1 or block < 1 or warmup < 0:
        raise ValueError(f"rounds and block must be at least 1 and warmup at least 0, got {rounds}, {block}, "
                         f"{warmup}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    out: list[list[Timing]] = [[] for _ in fns]
    n = len(fns)
    for r in range(rounds):
        order = [(r + k) % n for k in range(n)]
        for i in order if r % 2 == 0 else order[::-1]:
            calls = [timed(fns[i], sync) for _ in range(block)]
            calls = calls[1:] or calls
            out[i].append(Timing(statistics.median(c.cpu for c in calls), statistics.median(c.wall for c in calls)))
    return out


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``values`` (the value three times for one value)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def device_sync(device: torch.device) -> Callable[[], None] | None:
    """What makes a device's queued work finish before a clock is read: ``torch.cuda.synchronize`` on CUDA,
    nothing elsewhere (the CPU computes as it is called)."""
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None
