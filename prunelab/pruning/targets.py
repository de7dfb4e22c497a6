"""How much to prune: argument checks, exact counts, density schedules and per-iteration targets."""

from __future__ import annotations

import math
import numbers

from prunelab.masks import Mask
from prunelab.scores.registry import Method
from prunelab.validate import SCHEDULES, check_fraction, check_int, check_name

_RHO_HINT = "; for a compression ratio rho use sparsity = 1 - 1/rho (e.g. 0.999 for rho = 1000)"


def check_sparsity_value(value, name: str = "sparsity") -> float:
    """A sparsity in [0, 1); a value of 1 or more is most likely a compression ratio, and the message says so."""
    big = isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) >= 1.0
    return check_fraction(value, name, "[0, 1)", "the fraction of weights pruned", _RHO_HINT if big else "")


def check_sparsity(sparsity=None, density=None) -> float:
    """The sparsity given as ``sparsity`` (fraction pruned) or ``density`` (fraction kept), exactly one of them."""
    if (sparsity is None) == (density is None):
        raise ValueError("give exactly one of sparsity (fraction pruned) or density (fraction kept)")
    if sparsity is not None:
        return check_sparsity_value(sparsity)
    return 1.0 - check_fraction(density, "density", "(0, 1]", "the fraction of weights kept")


def check_iterations(iterations) -> int:
    return check_int(iterations, "iterations", 1, "1 = one-shot pruning")


def num_to_prune(sparsity: float, n: int) -> int:
    """``round(sparsity * n)`` with halves rounded up (deterministic, unlike banker's rounding)."""
    return min(n, max(0, math.floor(sparsity * n + 0.5)))


def density_schedule(
    sparsity: float, iterations: int, schedule: str = "exponential", start_density: float = 1.0
) -> list[float]:
    """Target density after each of ``iterations`` iterations, ending at ``1 - sparsity``.

    ``"exponential"``: after iteration n of N the density is ``d0 * (d/d0)^(n/N)``, i.e.
    ``(1 - sparsity)^(n/N)`` from a dense start: each iteration removes the same fraction of the
    remaining weights (Frankle et al. 2021, §3 and App. D.1; Tanaka et al. 2020, Algorithm 1, compression
    ``rho^(-k/n)``). ``"linear"``: the density falls by the same amount each iteration.
    """
    s = check_sparsity_value(sparsity)
    n = check_iterations(iterations)
    check_name("schedule", schedule, SCHEDULES)
    d0, d = float(start_density), 1.0 - s
    if d >= d0:
        return [d0] * n
    if schedule == "exponential":
        out = [d0 * (d / d0) ** (i / n) for i in range(1, n)]
    else:
        out = [d0 + (d - d0) * i / n for i in range(1, n)]
    return out + [d]


def _global_targets(s: float, n_iter: int, schedule: str, scope: str, mask: Mask,
                    kept: int | None = None) -> list[float]:
    """The sparsity after each iteration; ``kept``: the weights kept at the start when not ``mask.num_kept`` (an
    N:M pattern prunes some before the schedule starts)."""
    kept = mask.num_kept if kept is None else kept
    if mask.num_total - kept < num_to_prune(s, mask.num_total):
        densities = density_schedule(s, n_iter, schedule, kept / mask.num_total)
        return [1.0 - d for d in densities[:-1]] + [s]
    if scope == "layer":
        return [s]  # globally sparse enough, but some tensor may not be
    return []  # already at the target: pruned weights are never revived


def _layer_targets(model, method: Method, s: float, distribution, scope, n_iter: int, schedule: str, mask: Mask,
                   prunable) -> list[dict[str, float]]:
    """Per iteration, the sparsity of each tensor: its own schedule from its density in ``mask`` to
    the density ``distribution`` gives it."""
    from prunelab.densities import layer_densities

    if method.structured:
        raise ValueError(f"distribution sets per-tensor densities of single weights; {method.name} prunes whole "
                         "channels (use scope='layer' instead)")
    if scope not in (None, "layer"):
        raise ValueError(f"distribution prunes each tensor to its own density, so scope must be 'layer'; got {scope!r}")
    target = layer_densities(model, s, distribution, **prunable)
    if set(target) != set(mask):
        raise ValueError("distribution and mask cover different parameters")
    now = mask.layer_density()
    per_layer = {n: density_schedule(1.0 - target[n], n_iter, schedule, now[n]) for n in mask}
    return [{n: 1.0 - per_layer[n][i] for n in mask} for i in range(n_iter)]
