"""N:M fine-grained structured sparsity: at most N weights kept in every group of M consecutive input weights.

Zhou et al. 2021 (§3, "N:M fine-grained structured sparsity") keep at most N of every M consecutive weights
along a layer's input dimension, the form NVIDIA's sparse tensor cores (Ampere and later) execute at twice the
dense rate for 2:4 (Mishra et al. 2021, §2). A pattern is a *constraint* put on top of any criterion's scores:
in each group the N best-ranked live weights are kept, whatever the criterion.

Groups. For a weight whose layer rule says its input axis is ``a`` (:func:`prunelab.layer_rules.channel_axes`),
the groups are M consecutive entries along ``a`` for each position of the other axes: for ``nn.Linear``
``(out, in)``, the rows cut into runs of M columns; for a convolution ``(out, in, kh, kw)``, M consecutive
input channels at each ``(out, kh, kw)``: NVIDIA's layout for convolutions, whose implicit GEMM reduces over
``in * kh * kw`` with the input channels innermost (channels-last), so that these are the groups the hardware
sees. A tensor without an input axis (a bias, a norm weight) or whose input size M does not divide is left out
of the pattern, with one warning naming it: the criterion then prunes it without the constraint (exclude it
to keep it dense).

Ranking inside a group is the ranking of every other path of :mod:`prunelab.pruning`: weights already pruned
go first (never revived), then by score (lowest first, or highest for criteria that prune their highest
scores, flipped by ``invert``), ties by position (the entry that comes first is pruned first).

Sparsity beyond the pattern. The pattern prunes ``M - N`` of every ``M`` weights of the tensors it
constrains (fewer where a group has already lost weights); the target sparsity counts over every covered
weight, as always. ``prune`` applies the pattern first, on the first iteration's scores, then the criterion's
ordinary selection (global or per layer, iterated along the schedule) prunes further among the survivors up
to the target: the result satisfies N:M and reaches the target exactly. A target below what the pattern
alone prunes is refused before any work.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.layer_rules import channel_axes, parameter_owners

__all__ = [
    "NMPattern", "PatternPlan", "PatternWarning", "group_keep", "parse_pattern", "pattern_axes", "pattern_pruned",
    "plan_pattern", "satisfies",
]

_SYNTAX = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
MAX_GROUP = 256  # a group larger than this is a typo ("2:400"), not a hardware pattern


class PatternWarning(UserWarning):
    """A covered tensor is left out of an N:M pattern (no input axis, or an input size M does not divide)."""


@dataclass(frozen=True)
class NMPattern:
    """At most ``n`` weights kept in every group of ``m`` consecutive input weights (Zhou et al. 2021, §3)."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m <= MAX_GROUP):
            raise ValueError(f"an N:M pattern needs whole numbers 0 < N < M <= {MAX_GROUP} (e.g. 2:4, 1:4, 4:8); "
                             f"got {self.n}:{self.m}")

    @property
    def density(self) -> float:
        """The largest fraction of a constrained tensor the pattern keeps, N/M."""
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(value: object) -> NMPattern | None:
    """``"2:4"`` -> ``NMPattern(2, 4)``; None stays None (no pattern); a ValueError in one line otherwise."""
    if value is None or isinstance(value, NMPattern):
        return value
    match = _SYNTAX.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"pattern must be 'N:M', at most N weights kept in every M consecutive input weights "
                         f"(e.g. '2:4', NVIDIA's sparse tensor cores); got {value!r}")
    return NMPattern(int(match.group(1)), int(match.group(2)))


def pattern_axes(model: nn.Module, shapes: Mapping[str, torch.Size], pattern: NMPattern,
                 warn: bool = True) -> dict[str, int]:
    """``{name: input axis}`` of the tensors of ``shapes`` (a mask's names and shapes) that ``pattern``
    constrains; one :class:`PatternWarning` names those it leaves out and why (when ``warn``). A ValueError when
    it would constrain none (nothing would be N:M)."""
    owners = parameter_owners(model)
    axes: dict[str, int] = {}
    no_axis, not_dividing = [], []
    for name, shape in shapes.items():
        module, local = owners.get(name, (None, name))
        found = channel_axes(module, local, len(shape), f"the {pattern} pattern")
        if found is None:
            no_axis.append(name)
        elif shape[found[1]] % pattern.m:
            not_dividing.append(f"{name} (input size {shape[found[1]]})")
        else:
            axes[name] = found[1]
    if not axes:
        raise ValueError(f"the {pattern} pattern constrains none of the covered tensors: it needs weights whose input "
                         f"size is a multiple of {pattern.m} (left out: {_listed(no_axis + not_dividing)})")
    if warn and (no_axis or not_dividing):
        parts = []
        if not_dividing:
            parts.append(f"{_listed(not_dividing)}, whose input size {pattern.m} does not divide")
        if no_axis:
            parts.append(f"{_listed(no_axis)}, which have no input axis")
        warnings.warn(f"the {pattern} pattern leaves out {' and '.join(parts)}: the criterion prunes them without "
                      "the pattern (exclude them to keep them dense)", PatternWarning, stacklevel=3)
    return axes


def _listed(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _groups(t: torch.Tensor, axis: int, m: int) -> torch.Tensor:
    """``t`` as ``(groups, m)``: the input axis moved last and cut into runs of ``m``."""
    return t.movedim(axis, -1).reshape(-1, m)


def _ungroup(g: torch.Tensor, shape: torch.Size, axis: int) -> torch.Tensor:
    moved = list(shape)
    moved.append(moved.pop(axis))
    return g.reshape(moved).movedim(-1, axis)


def pattern_pruned(keep: torch.Tensor, axis: int, pattern: NMPattern) -> int:
    """How many live entries of ``keep`` the pattern prunes, whatever the scores: ``max(0, live - N)`` per group."""
    live = _groups(keep, axis, pattern.m).sum(dim=1)
    return int((live - pattern.n).clamp_min(0).sum())


def group_keep(scores: torch.Tensor, keep: torch.Tensor, axis: int, pattern: NMPattern,
               highest: bool = False) -> torch.Tensor:
    """The entries of ``keep`` that survive ``pattern``: in every group the N best-ranked live entries.

    Ranked as every path of :mod:`prunelab.pruning` ranks: pruned entries first, then lowest score first
    (``highest``: highest first), ties by position; the first ``M - N`` of a group are pruned."""
    if tuple(scores.shape) != tuple(keep.shape):
        raise ValueError(f"scores of shape {tuple(scores.shape)} for a tensor of shape {tuple(keep.shape)}")
    key = _groups(scores.detach().to(keep.device), axis, pattern.m)
    alive = _groups(keep, axis, pattern.m)
    if key.is_floating_point() and bool(torch.isnan(key[alive]).any()):
        raise ValueError("scores contain NaN; a criterion must give every weight a number")
    if highest:
        key = -key
    by_score = torch.sort(key, dim=1, stable=True).indices
    # Then pruned entries first (a stable sort keeps the score order among the live ones and among the dead).
    by_life = torch.sort(alive.gather(1, by_score).to(torch.int8), dim=1, stable=True).indices
    order = by_score.gather(1, by_life)
    pruned = torch.zeros_like(alive)
    pruned.scatter_(1, order[:, : pattern.m - pattern.n], True)
    return _ungroup(alive & ~pruned, keep.shape, axis)


def satisfies(keep: torch.Tensor, axis: int, pattern: NMPattern) -> bool:
    """Whether every group of M consecutive entries of ``keep`` along ``axis`` keeps at most N (False when M does
    not divide the axis): what a 2:4 kernel needs of a layer before it takes it (:mod:`prunelab.compact`)."""
    if keep.dim() <= axis or keep.shape[axis] % pattern.m:
        return False
    return not bool((_groups(keep, axis, pattern.m).sum(dim=1) > pattern.n).any())


@dataclass(frozen=True)
class PatternPlan:
    """What a pattern does to a mask before any score is known: which tensors it constrains (and along which
    axis), and how many live weights it prunes in each (the count does not depend on the scores)."""

    pattern: NMPattern
    axes: dict[str, int]
    pruned: dict[str, int]

    @property
    def total_pruned(self) -> int:
        return sum(self.pruned.values())

    def apply(self, remover, scores: Mapping[str, torch.Tensor], highest: bool, notify=None) -> None:
        """Prune, in a :class:`~prunelab.pruning.removal._Remover`, all but the N best-ranked live weights of
        every group."""
        mask = remover.mask()
        for name, axis in self.axes.items():
            remover.restrict(name, group_keep(scores[name], mask[name], axis, self.pattern, highest), notify)


def plan_pattern(model: nn.Module, mask, pattern: NMPattern, sparsity: float, scope: str) -> PatternPlan:
    """The :class:`PatternPlan` of ``pattern`` on ``mask``; a ValueError, before any work, when the pattern alone
    prunes more than ``sparsity`` asks for (over all covered weights, or in a tensor with ``scope='layer'``)."""
    from prunelab.pruning.targets import num_to_prune

    axes = pattern_axes(model, {n: t.shape for n, t in mask.items()}, pattern)
    pruned = {n: pattern_pruned(mask[n], a, pattern) for n, a in axes.items()}
    counts = mask.layer_counts()
    hint = (f"ask for sparsity >= {1 - pattern.density:g} (the pattern alone, at most {pattern.n} of every {pattern.m} "
            "kept), or prune without the pattern")
    if scope == "layer":
        for n, p in pruned.items():
            kept, total = counts[n]
            if total - kept + p > num_to_prune(sparsity, total):
                raise ValueError(f"sparsity {sparsity:g} is below what the {pattern} pattern prunes in {n} by itself "
                                 f"({(total - kept + p) / total:.4g} of it); {hint}")
    else:
        total = mask.num_total
        at_least = total - mask.num_kept + sum(pruned.values())
        if at_least > num_to_prune(sparsity, total):
            raise ValueError(f"sparsity {sparsity:g} is below what the {pattern} pattern prunes by itself "
                             f"({at_least / total:.4g} of the covered weights); {hint}")
    return PatternPlan(pattern, axes, pruned)
