"""How a global sparsity is spread over layers: uniform, Erdős–Rényi (ER) and Erdős–Rényi-Kernel (ERK).

Sparse-training and random-pruning baselines do not rank weights globally; they fix each layer's
density in advance. Three distributions are standard:

``uniform``
    every covered tensor at density ``1 - sparsity``.
``er``
    Erdős–Rényi (Mocanu et al. 2018, as defined in Evci et al. 2020, §3 "Sparsity distribution"):
    density ∝ (n_in + n_out) / (n_in · n_out), with ``n_out, n_in = shape[0], shape[1]`` (PyTorch
    stores weights output-first). Small layers stay denser than large ones.
``erk``
    Erdős–Rényi-Kernel (Evci et al. 2020, §3): density ∝ sum(shape) / prod(shape), so a convolution
    ``(n_out, n_in, kh, kw)`` gets (n_out + n_in + kh + kw) / (n_out · n_in · kh · kw). For 2-D
    weights ER and ERK coincide.

Other numbers of dimensions: ``erk`` always uses sum(shape) / prod(shape) (a bilinear ``(o, i1, i2)``
included); ``er`` uses the first two dimensions only (a kernel's spatial size is what ERK adds). A 1-D
tensor (a bias or normalization scale, if covered) gets the factor n / n = 1 under both, the largest
factor any tensor can have, so it is the first to be kept dense, as in Evci et al.'s (2020) code where every
1-D variable ends up dense; a 0-D tensor also gets 1.

The factor is raised to ``power_scale`` (JaxPruner's and RigL's ``erk_power_scale``: 1.0 is the paper,
0.0 is uniform). The scale ε is then chosen so that ε · factor_l · n_l summed over layers keeps exactly
``(1 - sparsity) · N`` of the N covered weights. A layer whose density ε · factor_l would exceed 1 is
kept dense and ε recomputed over the rest, the largest factors first, until no layer exceeds 1 — the
procedure of Evci et al.'s (2020) released code (``sparse_utils.get_sparsities``). Since ε only grows as
layers are removed from the pool, a layer that exceeds 1 at some ε still exceeds 1 at the final one,
so the result does not depend on how many layers are moved per round.

A distribution may also be given as a mapping ``{name: density}`` (a mask's ``layer_density()``, or a
:class:`~prunelab.masks.Mask`): the per-layer densities of another mask, for the random baseline at
the same layerwise densities (Frankle et al. 2021, §5). Those densities are returned unchanged.

New distributions join with :func:`register_distribution`: a function from a tensor's shape to its
unscaled density factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real

from torch import nn

from prunelab.coverage import prunable_parameters
from prunelab.masks import Mask
from prunelab.registry import Registry
from prunelab.validate import check_fraction

__all__ = ["DISTRIBUTIONS", "layer_densities", "register_distribution", "shape_densities"]

Factor = Callable[[tuple[int, ...]], float]

DISTRIBUTIONS: Registry[Factor] = Registry("sparsity distribution")
"""Registry of distribution names (iterate it, or ``DISTRIBUTIONS.names()``, for the names)."""

_MAPPING_TOLERANCE = 1e-6


def register_distribution(name: str, factor: Factor) -> Factor:
    """Add a distribution: ``factor(shape)`` is a tensor's unscaled density (positive, finite).

    The densities become ε · factor**power_scale, with ε and the layers kept dense chosen as for ERK.
    """
    return DISTRIBUTIONS.register(name, factor)


def _uniform(shape: tuple[int, ...]) -> float:
    return 1.0


def _erk(shape: tuple[int, ...]) -> float:
    if not shape:
        return 1.0
    return sum(shape) / math.prod(shape)


def _er(shape: tuple[int, ...]) -> float:
    return _erk(shape[:2])


register_distribution("uniform", _uniform)
register_distribution("er", _er)
register_distribution("erk", _erk)


def _from_mapping(
    given: Mapping, shapes: dict[str, tuple[int, ...]], sparsity
) -> dict[str, float]:
    if isinstance(given, Mask):
        given = given.layer_density()
    extra = sorted(set(given) - set(shapes))
    missing = [n for n in shapes if n not in given]
    if extra or missing:
        what = f"names {extra[0]!r}, which is not covered" if extra else f"lacks the covered tensor {missing[0]!r}"
        raise ValueError(
            f"the density mapping {what}; it must name exactly the covered tensors "
            f"({len(shapes)} of them, e.g. {next(iter(shapes), None)!r})"
        )
    out = {}
    for n in shapes:
        out[n] = check_fraction(given[n], f"density of {n!r}", "[0, 1]", "the fraction of its weights kept")
    if sparsity is not None:
        sparsity = check_fraction(sparsity, "sparsity", meaning="the fraction of weights pruned")
        total = sum(math.prod(s) for s in shapes.values())
        implied = 1.0 - sum(out[n] * math.prod(s) for n, s in shapes.items()) / total
        # a mask's achieved sparsity is a whole number of weights: round(s * N) / N, within 1 / N of s
        if abs(implied - sparsity) > max(_MAPPING_TOLERANCE, 1.0 / total):
            raise ValueError(
                f"sparsity={sparsity!r} disagrees with the density mapping, whose overall sparsity is "
                f"{implied:.6f}; pass sparsity=None or that value"
            )
    return out


def _solve(
    shapes: dict[str, tuple[int, ...]], sparsity: float, factor: Factor, power_scale: float
) -> dict[str, float]:
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {}
    for n, s in shapes.items():
        f = factor(s)
        if not (isinstance(f, Real) and math.isfinite(f) and f > 0):
            raise ValueError(f"the distribution's factor for {n!r} {s} must be a positive number, got {f!r}")
        raw[n] = float(f) ** power_scale
    kept = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        pool = [n for n in shapes if n not in dense and sizes[n] > 0]
        budget = kept - sum(sizes[n] for n in dense)
        if not pool:
            break
        if budget < 0:  # unreachable for sparsity in [0, 1), kept as a guard
            raise ValueError(f"no layerwise densities in [0, 1] keep {kept:.0f} weights at sparsity {sparsity}")
        eps = budget / sum(raw[n] * sizes[n] for n in pool)
        largest = max(raw[n] for n in pool)
        if eps * largest <= 1.0:
            break
        dense.update(n for n in pool if raw[n] == largest)
    return {n: 1.0 if n in dense or sizes[n] == 0 else min(1.0, eps * raw[n]) for n in shapes}


def layer_densities(
    model: nn.Module,
    sparsity: float | None,
    distribution: str | Mapping = "uniform",
    *,
    power_scale: float = 1.0,
    **coverage_options,
) -> dict[str, float]:
    """{name: density} for the tensors of ``prunable_parameters(model, **coverage_options)``, in order.

    ``distribution`` is a registered name (``uniform``, ``er``, ``erk``; see the module docstring) or a
    mapping ``{name: density}`` / a :class:`Mask`, whose densities are returned as they are; it must
    name exactly the covered tensors, and ``sparsity`` must then be None or that mapping's overall
    sparsity (within 1e-6, or one weight: a mask holds a whole number of them), so that a mismatch
    between the two is caught rather than silently resolved.
    For a named distribution the densities keep ``(1 - sparsity)`` of the covered weights in total
    (up to float rounding; the caller rounds each layer's count).
    """
    shapes = {n: tuple(p.shape) for n, p in prunable_parameters(model, **coverage_options).items()}
    if not shapes:
        raise ValueError(f"{type(model).__name__} has no covered parameters; nothing to distribute")
    if isinstance(distribution, Mapping):
        return _from_mapping(distribution, shapes, sparsity)
    if not isinstance(distribution, str):
        raise ValueError(
            f"distribution must be a name ({', '.join(sorted(DISTRIBUTIONS))}) or a mapping "
            f"{{name: density}}, got {type(distribution).__name__}"
        )
    return shape_densities(shapes, sparsity, distribution, power_scale=power_scale)


def shape_densities(
    shapes: Mapping[str, tuple[int, ...]], sparsity: float, distribution: str = "uniform", *, power_scale: float = 1.0
) -> dict[str, float]:
    """{name: density} for tensors of the given shapes under a named distribution, keeping ``(1 - sparsity)`` of
    their weights in total: :func:`layer_densities` without a model (a criterion that knows only its mask's
    shapes, such as NPB's layer budgets)."""
    shapes = {n: tuple(s) for n, s in shapes.items()}
    if not isinstance(distribution, str):
        raise ValueError(f"distribution must be a name ({', '.join(sorted(DISTRIBUTIONS))}), "
                         f"got {type(distribution).__name__}")
    factor = DISTRIBUTIONS.get(distribution)
    if sparsity is None:
        raise ValueError(f"sparsity must be a number in [0, 1) for distribution {distribution!r}, got None")
    sparsity = check_fraction(sparsity, "sparsity", meaning="the fraction of weights pruned")
    if isinstance(power_scale, bool) or not isinstance(power_scale, Real) or not (
        math.isfinite(power_scale) and power_scale >= 0
    ):
        raise ValueError(f"power_scale must be a finite number >= 0 (1.0 is the paper), got {power_scale!r}")
    return _solve(shapes, sparsity, factor, float(power_scale))
