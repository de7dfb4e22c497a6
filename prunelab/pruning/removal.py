"""Turning scores into a mask: the remover state that only ever loses weights, and ``remove``."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping

import torch

from prunelab.masks import Mask
from prunelab.pruning.selection import _MERGE, Ties, _select, _split
from prunelab.pruning.targets import check_sparsity, num_to_prune
from prunelab.tensors import fill_at, flatnonzero
from prunelab.validate import SCOPES, TIE_RULES, check_name


def check_scores(scores, mask: Mask, source: str = "remove was given") -> None:
    """``scores`` name exactly the mask's tensors, each a tensor of its shape; ``source`` names where they
    came from, as the start of a sentence (``"criterion 'snip' returned"``).

    A criterion that returns a transposed or flattened tensor of the right size would otherwise be ranked
    silently in the wrong order.
    """
    if not isinstance(scores, Mapping):
        raise ValueError(f"{source} a {type(scores).__name__}; scores are {{param_name: Tensor}}")
    missing = [n for n in mask if n not in scores]
    if missing:
        raise ValueError(
            f"{source} no scores for {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; every parameter the mask covers needs scores"
        )
    extra = [n for n in scores if n not in mask]
    if extra:
        raise ValueError(
            f"{source} scores for {extra[0]!r}, which the mask does not cover; "
            f"score exactly the mask's parameters ({', '.join(list(mask)[:3])}...)"
        )
    for n in mask:
        t = scores[n]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{source} a {type(t).__name__} for {n!r}, not a tensor")
        if tuple(t.shape) != tuple(mask[n].shape):
            raise ValueError(
                f"{source} scores of shape {tuple(t.shape)} for {n!r}, whose weight has "
                f"shape {tuple(mask[n].shape)}; scores must have the parameter's shape"
            )


class _Remover:
    """Mutable keep-masks (flat, on the scores' device) that only ever lose entries.

    Iterative pruning spends most iterations at low density (SynFlow's 100 iterations to 1% keep
    on average about a fifth of the weights), so the remover ranks *slots*: at first every entry of
    a tensor, and once fewer than half of a tensor's slots are alive, only the flat indices of its
    survivors (``idx``), with ``live`` marking which slots are still alive. Scores are gathered at
    those slots, so the work of an iteration shrinks with the number of surviving weights.
    """

    RECOMPACT_BELOW = 0.5  # rebuild a tensor's slots when fewer than this fraction of them is alive

    def __init__(
        self,
        mask: Mask | None,
        device: torch.device,
        compact: bool = False,
        shapes: Mapping[str, torch.Size] | None = None,
        ties: Ties | None = None,
    ):
        """Start from ``mask``, or with every entry kept in tensors of ``shapes``. ``compact``: allow
        slot compaction (iterative pruning; one-shot removal does not need it). ``ties``: how large ties at
        a threshold are broken (position order by default); the tensors they touch gather in
        :attr:`tied_layers`."""
        self.ties = ties if ties is not None else Ties()
        self.tied_layers: dict[str, int] = {}
        self.names = list(mask if mask is not None else shapes)
        self.shapes = {n: (mask[n].shape if mask is not None else torch.Size(shapes[n])) for n in self.names}
        self.keep = {}
        for n in self.names:
            if mask is not None:
                self.keep[n] = mask[n].reshape(-1).to(device).clone()
            else:
                self.keep[n] = torch.ones(self.shapes[n].numel(), dtype=torch.bool, device=device)
        self.kept = {n: int(self.keep[n].count_nonzero()) for n in self.names}
        self.total = {n: self.keep[n].numel() for n in self.names}
        self.idx: dict[str, torch.Tensor | None] = {n: None for n in self.names}
        self.live: dict[str, torch.Tensor | None] = {n: None for n in self.names}
        self.compact = compact
        for n in self.names:
            self._maybe_compact(n)

    def mask(self) -> Mask:
        return Mask({n: self.keep[n].view(self.shapes[n]) for n in self.names})

    def final_mask(self) -> Mask:
        """The result; the remover must not be stepped afterwards (the mask shares its tensors)."""
        return Mask({n: self.keep[n].view(self.shapes[n]).cpu() for n in self.names})

    def index(self) -> dict[str, torch.Tensor | None]:
        """Per tensor: the flat indices its slots stand for, or None where slots are all entries."""
        return dict(self.idx)

    def _slots(self, n: str) -> int:
        return self.total[n] if self.idx[n] is None else self.idx[n].numel()

    def _alive(self, n: str) -> torch.Tensor | None:
        """Which slots are alive (None: all of them)."""
        if self.kept[n] == self._slots(n):
            return None
        return self.keep[n] if self.idx[n] is None else self.live[n]

    def _maybe_compact(self, n: str) -> None:
        if not self.compact or self.kept[n] >= self.RECOMPACT_BELOW * self._slots(n):
            return
        if self.idx[n] is None:
            self.idx[n] = flatnonzero(self.keep[n])
        elif self.idx[n].device.type == "cpu":
            self.idx[n] = torch.from_numpy(self.idx[n].numpy()[self.live[n].numpy()])  # numpy: ~3x faster
        else:
            self.idx[n] = self.idx[n][self.live[n]]
        self.live[n] = None

    def _drop(self, name: str, drop, notify) -> None:
        """Drop alive slots of ``name`` given as a bool mask or indices over its slots."""
        if drop is None:
            return
        idx = self.idx[name]
        n_drop = int(drop.count_nonzero()) if drop.dtype == torch.bool else drop.numel()
        if n_drop == 0:
            return
        if idx is not None:
            if self.live[name] is None:
                self.live[name] = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
            if drop.dtype == torch.bool:
                self.live[name] &= ~drop
            else:
                fill_at(self.live[name], drop, False)
            drop = idx[drop] if drop.dtype == torch.bool else idx.index_select(0, drop)
        if notify is not None:
            notify(name, drop)
        if drop.dtype == torch.bool:
            self.keep[name] &= drop.logical_not_()  # the drop mask is ours to overwrite
        else:
            fill_at(self.keep[name], drop, False)
        self.kept[name] -= n_drop
        self._maybe_compact(name)

    def restrict(self, name: str, keep: torch.Tensor, notify=None) -> None:
        """Drop the live entries of ``name`` that ``keep`` (a bool tensor of its shape) leaves out: a constraint
        such as an N:M pattern (:mod:`prunelab.pruning.patterns`); never revives."""
        drop = self.keep[name] & ~keep.reshape(-1).to(self.keep[name].device)
        self._drop_flat(name, drop, notify)

    def _drop_flat(self, name: str, drop: torch.Tensor, notify) -> None:
        """Drop the alive entries of a flat bool mask over the whole tensor."""
        idx = self.idx[name]
        self._drop(name, drop if idx is None else drop[idx], notify)

    def _value(self, n: str, score: torch.Tensor) -> torch.Tensor:
        v = score.detach().reshape(-1)
        if v.device != self.keep[n].device:
            v = v.to(self.keep[n].device)
        return v if self.idx[n] is None else v.index_select(0, self.idx[n])

    def values(self, scores: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The scores to rank, one per slot: flat, gathered at ``idx`` where a tensor has one."""
        return {n: self._value(n, scores[n]) for n in self.names}

    def step(self, scores, sparsity: float, scope: str, highest: bool, notify=None, groups=None, seed=0):
        """Prune to ``sparsity`` (never reviving); structured where ``groups`` says so."""
        groups = dict(groups or {})
        if groups:
            self._step_groups(scores, sparsity, scope, highest, groups, notify, seed)
        else:
            self.step_values(self.values(scores), sparsity, scope, highest, notify, seed)

    def _step_layer(self, n, value, sparsity, highest, notify, seed, check_nan) -> None:
        """Prune tensor ``n`` alone to ``sparsity`` from its per-slot ``value``."""
        k = num_to_prune(sparsity, self.total[n]) - (self.total[n] - self.kept[n])
        met = len(self.ties.met)
        (drop,) = _select([value], [self._alive(n)], self.kept[n], k, highest, [n], seed, check_nan, self.ties)
        self._note_ties(met, [n], [value], [self._alive(n)])
        self._drop(n, drop, notify)

    def _note_ties(self, met: int, names, vals, alive) -> None:
        """Count, per tensor, the alive entries at the score of each large tie met since ``met``."""
        for score, _, _ in self.ties.met[met:]:
            for n, v, a in zip(names, vals, alive):
                at = v == score
                if a is not None:
                    at &= a
                c = int(at.count_nonzero())
                if c:
                    self.tied_layers[n] = self.tied_layers.get(n, 0) + c

    def step_values(self, values, sparsity, scope, highest, notify=None, seed=0, check_nan=True) -> None:
        """:meth:`step` from per-slot values as :meth:`values` returns them."""
        names = self.names
        if isinstance(sparsity, Mapping):  # per-layer targets (a layer-density distribution)
            for n in names:
                self._step_layer(n, values[n], sparsity[n], highest, notify, seed, check_nan)
            return
        if scope == "layer":
            for n in names:
                self._step_layer(n, values[n], sparsity, highest, notify, seed, check_nan)
            return
        total = sum(self.total.values())
        kept = sum(self.kept.values())
        k = num_to_prune(sparsity, total) - (total - kept)
        vals = [values[n] for n in names]
        alive = [self._alive(n) for n in names]
        sizes = [v.numel() for v in vals]
        if len(vals) > 1 and sum(sizes) <= _MERGE and len({v.device for v in vals}) == 1:
            # Few slots left (small nets, late iterations): one flat tensor instead of a loop over
            # layers; position order is unchanged, so the result is the same.
            merged_alive = None
            if any(a is not None for a in alive):
                merged_alive = torch.cat(
                    [
                        torch.ones(sz, dtype=torch.bool, device=v.device) if a is None else a
                        for v, a, sz in zip(vals, alive, sizes)
                    ]
                )
            met = len(self.ties.met)
            (drop,) = _select([torch.cat(vals)], [merged_alive], kept, k, highest, None, seed, check_nan, self.ties)
            drops = _split(drop, sizes)
        else:
            met = len(self.ties.met)
            drops = _select(vals, alive, kept, k, highest, names, seed, check_nan, self.ties)
        self._note_ties(met, names, vals, alive)
        for n, d in zip(names, drops):
            self._drop(n, d, notify)

    def _step_groups(self, scores, sparsity, scope, highest, groups, notify, seed=0):
        """Structured removal: whole slices along ``groups[name]``, nearest achievable count.

        In layer scope a tensor without channels (a bias, or hybrid's linear weights) is pruned
        weight by weight through the same selection as unstructured criteria, exact and without
        sorting all its scores; in global scope its weights are units ranked with the channels.
        """
        units = []  # per tensor: (name, unit scores, unit alive counts, view shape to expand)
        for n in self.names:
            dim = groups.get(n)
            if dim is None and scope == "layer":
                self._step_layer(n, self._value(n, scores[n]), sparsity, highest, notify, seed, True)
                continue
            keep = self.keep[n].view(self.shapes[n])
            s = scores[n].detach().to(keep.device)
            if dim is None:
                us, ua, shape = s.reshape(-1).to(torch.float64), keep.reshape(-1).long(), None
            else:
                others = [d for d in range(s.dim()) if d != dim]
                us = s.mean(dim=others, dtype=torch.float64)
                ua = keep.long().sum(dim=others)
                shape = [1] * s.dim()
                shape[dim] = s.shape[dim]
            units.append((n, us, ua, shape))
        if scope == "layer":
            for unit in units:
                n = unit[0]
                self._drop_units([unit], num_to_prune(sparsity, self.total[n]), self.total[n], highest, notify)
        elif units:
            total = sum(self.total.values())
            self._drop_units(units, num_to_prune(sparsity, total), total, highest, notify)

    def _drop_units(self, units, target, total, highest, notify):
        """Prune units (channels or single weights) in rank order until the count is nearest ``target``.

        A tensor with channels always keeps its top-ranked live channel: removing the last one would
        disconnect the network. Paganini & Forde (2020, §3.1) remove 20% of the remaining channels of each layer
        per iteration, rounded like ``torch.nn.utils.prune`` (``round(0.2 * 1) = 0``), so a layer with
        a single channel (LeNet-5's first convolution has one input channel on MNIST) is never
        emptied there; here the top channel of each tensor is left out of the candidates (in layer
        scope: at most all live channels but one go), with a warning when that changes the count.
        """
        scores = torch.cat([u[1] for u in units])
        alive = torch.cat([u[2] for u in units])
        dead = total - int(alive.sum())
        key = -scores if highest else scores
        # Dead units first, then by key; stable sort keeps position order among ties.
        key = torch.where(alive == 0, torch.full_like(key, -math.inf), key)
        if torch.isnan(key).any():
            raise ValueError("scores contain NaN; a criterion must give every weight a number")
        order = torch.sort(key, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        protected = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        start = 0
        for _, us, ua, shape in units:
            end = start + us.numel()
            if shape is not None and bool((ua > 0).any()):
                last = torch.where(ua > 0, rank[start:end], -1).argmax()  # the live unit ranked last
                protected[start + int(last)] = True
            start = end
        candidates = order[~protected[order]]
        best, count = self._nearest(candidates, alive, dead, target)
        if bool(protected.any()):
            best_all, count_all = self._nearest(order, alive, dead, target)
            if count_all != count:
                spared = protected.clone()
                spared[order[best_all:]] = False  # protected units the unconstrained count would take
                starts = itertools.accumulate([u[1].numel() for u in units], initial=0)
                names = [u[0] for u, a in zip(units, starts) if bool(spared[a : a + u[1].numel()].any())]
                warnings.warn(
                    f"structured pruning kept the last channel of {', '.join(map(repr, names))}: removing it "
                    f"would disconnect the network, so {count} weights are pruned instead of the {count_all} "
                    "nearest to the target (Paganini & Forde 2020, §3.1 never empties a layer)",
                    stacklevel=5,
                )
        drop_units = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
        drop_units[candidates[:best]] = True
        start = 0
        for n, us, _, shape in units:
            d = drop_units[start : start + us.numel()]
            start += us.numel()
            if not bool(d.any()):
                continue
            full = d.view(-1) if shape is None else d.view(shape).expand(self.shapes[n]).reshape(-1)
            full = full & self.keep[n]
            if bool(full.any()):
                self._drop_flat(n, full, notify)

    @staticmethod
    def _nearest(order, alive, dead, target) -> tuple[int, int]:
        """How many units of ``order`` to take, and the pruned count then, to come nearest ``target``."""
        pruned = dead + torch.cumsum(alive[order], 0)  # pruned count after taking 1..U units
        counts = torch.cat([torch.tensor([dead], device=pruned.device), pruned])
        dist = (counts - target).abs()
        # The nearest count; between two equally near ones the larger, like round-half-up in
        # num_to_prune (so a layer of C equal channels loses round(sparsity * C) of them).
        best = int(torch.nonzero(dist == dist.min())[-1])
        return best, int(counts[best])


class TieWarning(UserWarning):
    """Many weights share the score at the threshold, and which of them go is decided by the tie rule."""


def warn_large_ties(state: _Remover, method: str, stacklevel: int = 3) -> None:
    """Once per call: the largest tie met at a threshold, its share of the kept weights and its tensors."""
    if not state.ties.met:
        return
    score, tied, taken = max(state.ties.met, key=lambda m: m[1])
    layers = sorted(state.tied_layers, key=state.tied_layers.get, reverse=True)
    named = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    how = ("at random from the seed" if state.ties.rule == "random" else "by position: the first entries first, "
           "and in a global ranking the first tensors first (ties='random' draws them at random from the seed)")
    kept = sum(state.kept.values())
    warnings.warn(
        f"{method}: {tied:,} weights tie at score {score:g} at the threshold ({tied / max(kept, 1):.1%} of the "
        f"{kept:,} kept), in {named}; {taken:,} of them were pruned, chosen {how}",
        TieWarning, stacklevel=stacklevel,
    )


def remove(
    scores: Mapping[str, torch.Tensor],
    mask: Mask | None = None,
    *,
    sparsity: float | None = None,
    density: float | None = None,
    scope: str = "global",
    prune_highest: bool = False,
    invert: bool = False,
    groups: Mapping[str, int] | None = None,
    ties: str = "position",
    seed: int = 0,
) -> Mask:
    """The mask that removes the lowest-ranked weights until ``sparsity`` (or ``1 - density``) is reached.

    Frankle et al. 2021, §3's ``remove(Z, s)``. Weights already pruned in ``mask`` rank first and stay
    pruned, so the new mask is never denser than ``mask`` where they overlap; if ``mask`` is already
    sparser than asked it is returned unchanged. ``scope``: ``"global"`` ranks all covered weights
    together; ``"layer"`` prunes each tensor to ``sparsity``. ``prune_highest``: the criterion
    removes its highest scores (GraSP); ``invert`` flips whichever end is removed. ``groups``
    (default: ``scores.groups`` of a structured criterion) ``{name: dim}`` removes whole slices
    along ``dim``; scope and exact counts then apply to channels, to the nearest achievable count.
    ``ties``: how a large tie at the threshold is broken, ``"position"`` (the first weights first) or
    ``"random"`` (from ``seed``); see :class:`~prunelab.pruning.selection.Ties` (unstructured removal).
    """
    s = check_sparsity(sparsity, density)
    check_name("scope", scope, SCOPES)
    check_name("ties", ties, TIE_RULES)
    if not scores:
        raise ValueError("no scores given: remove needs {param_name: scores} for at least one tensor")
    if mask is not None:
        check_scores(scores, mask)
    if groups is None:
        groups = getattr(scores, "groups", None)
    device = next(iter(scores.values())).device
    state = _Remover(mask, device, shapes={n: v.shape for n, v in scores.items()}, ties=Ties(ties, seed))
    state.step(scores, s, scope, bool(prune_highest) != bool(invert), groups=groups, seed=seed)
    warn_large_ties(state, "remove")
    return state.final_mask()
