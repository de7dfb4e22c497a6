"""Pruning = score + remove, one shot or iterated (Frankle et al. 2021, §3; Tanaka et al. 2020, Alg. 1).

:func:`score` asks a registered criterion (see :mod:`prunelab.scores`) for ``{name: scores}``;
:func:`remove` turns scores into a :class:`~prunelab.masks.Mask`; :func:`prune` iterates the two
along a density schedule. Nothing here knows about datasets, training or the run store: any
``nn.Module`` and a batch of tensors will do.

Ranking rules shared by every path (each has a test):

* Already-pruned weights rank as pruned first: ``remove`` never revives a weight.
* Exactly ``round(sparsity * n)`` weights are pruned (halves round up), over all covered weights
  (``scope="global"``) or in each tensor (``scope="layer"``). Structured criteria remove whole
  channels, as many as bring the count nearest to that number, but never a tensor's last live
  channel (a warning says when that keeps the count short); ``mask.sparsity`` is the achieved value.
* Ties in score are broken by position: the weight that comes first (in ``named_parameters`` order,
  then in flattened order) is pruned first, whichever direction is pruned.
* ``invert=True`` prunes the other end of the same ranking (the inversion ablation, Frankle et al.
  §5). It uses ranks, never ``1/score``, which is wrong for GraSP's negative scores and infinite at 0.

Selecting the k-th score never concatenates and sorts all scores: a seeded sample brackets the
threshold, one counting pass over the tensors (in chunks) confirms the bracket and collects the few
scores inside it, and ``torch.kthvalue`` on those finds the exact threshold. A bracket holding more
than ``_CAP`` scores is narrowed by sampling inside it, never widened, so extra memory stays a
fraction of the scores' size, and the cost is a few passes over memory (see ``bench/pruning_speed.py``).
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from prunelab.coverage import COVERAGE_OPTIONS, coverage, prunable_parameters
from prunelab.masks import Mask
from prunelab.scores._common import fill_at
from prunelab.scores.registry import Method, Scores, get_method

__all__ = [
    "LayerCollapseWarning",
    "density_schedule",
    "num_to_prune",
    "prune",
    "remove",
    "score",
]

SCOPES = ("global", "layer")
SCHEDULES = ("exponential", "linear")
PRUNABLE_OPTIONS = COVERAGE_OPTIONS  # which parameters a mask covers: prunelab.coverage
COMMON_OPTIONS = ("input_shape", "seed")  # prune() arguments; score() accepts them as options too

_CHUNK = 1 << 22  # elements per pass over a tensor: bounds temporaries to a few MB
_SMALL = 1 << 16  # at most this many alive scores: select among all of them directly
_CAP = 1 << 23  # most candidate keys gathered at once; more means ties at a bracket end
_MERGE = 1 << 20  # up to this many slots in all, rank them as one concatenated tensor
_SAMPLE = 1 << 12  # sample size used to bracket the threshold
_SAMPLE_MAX = 1 << 20  # largest sample (sorting it costs less than a pass over 10^8 scores)
_DRAWS_MAX = 1 << 22  # most random draws for one sample
_Z = 4.0  # bracket half-width in sample standard deviations
_TRIES = 8  # sampling rounds before gathering every key of the known range
_NUMPY_FLOATS = (torch.float32, torch.float64)


class LayerCollapseWarning(UserWarning):
    """A covered tensor lost every weight: the network is disconnected (Tanaka et al. 2020, §3)."""


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) < 1.0):
        extra = ""
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value) >= 1.0:
            extra = "; for a compression ratio rho use sparsity = 1 - 1/rho (e.g. 0.999 for rho = 1000)"
        raise ValueError(f"{name} must be a number in [0, 1), the fraction of weights pruned; got {value!r}{extra}")
    return float(value)


def _check_sparsity(sparsity=None, density=None) -> float:
    if (sparsity is None) == (density is None):
        raise ValueError("give exactly one of sparsity (fraction pruned) or density (fraction kept)")
    if sparsity is not None:
        return _check_fraction(sparsity, "sparsity")
    if isinstance(density, bool) or not isinstance(density, numbers.Real) or not (0.0 < float(density) <= 1.0):
        raise ValueError(f"density must be a number in (0, 1], the fraction of weights kept; got {density!r}")
    return 1.0 - float(density)


def _check_choice(value, name: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")
    return value


def _check_iterations(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1 (1 = one-shot pruning); got {iterations!r}")
    return int(iterations)


def num_to_prune(sparsity: float, n: int) -> int:
    """``round(sparsity * n)`` with halves rounded up (deterministic, unlike banker's rounding)."""
    return min(n, max(0, math.floor(sparsity * n + 0.5)))


def density_schedule(
    sparsity: float, iterations: int, schedule: str = "exponential", start_density: float = 1.0
) -> list[float]:
    """Target density after each of ``iterations`` iterations, ending at ``1 - sparsity``.

    ``"exponential"``: after iteration n of N the density is ``d0 * (d/d0)^(n/N)``, i.e.
    ``(1 - sparsity)^(n/N)`` from a dense start: each iteration removes the same fraction of the
    remaining weights (Frankle et al. §3 and App. D.1; Tanaka et al. Algorithm 1, compression
    ``rho^(-k/n)``). ``"linear"``: the density falls by the same amount each iteration.
    """
    s = _check_fraction(sparsity, "sparsity")
    n = _check_iterations(iterations)
    _check_choice(schedule, "schedule", SCHEDULES)
    d0, d = float(start_density), 1.0 - s
    if d >= d0:
        return [d0] * n
    if schedule == "exponential":
        out = [d0 * (d / d0) ** (i / n) for i in range(1, n)]
    else:
        out = [d0 + (d - d0) * i / n for i in range(1, n)]
    return out + [d]


# ------------------------------------------------------------------------------------------------
# selecting the k first weights of the ranking
# ------------------------------------------------------------------------------------------------
def _key_lt(v: torch.Tensor, c: float, highest: bool) -> torch.Tensor:
    """key(v) < c, with key(v) = v (lowest pruned first) or -v (highest first)."""
    return torch.gt(v, -c) if highest else torch.lt(v, c)


def _key_le(v: torch.Tensor, c: float, highest: bool) -> torch.Tensor:
    return torch.ge(v, -c) if highest else torch.le(v, c)


def _flatnonzero(b: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a flat bool tensor (numpy's is about twice as fast on CPU)."""
    if b.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(b.numpy()))
    return b.nonzero().squeeze(1)


def _chunks(n: int):
    for s in range(0, n, _CHUNK):
        yield s, min(n, s + _CHUNK)


def _nan_error(i: int, names: Sequence[str] | None):
    where = f" for {names[i]!r}" if names else ""
    return ValueError(f"scores{where} contain NaN; a criterion must give every weight a number")


def _check_nan(values, names) -> None:
    # A sum is a cheap read-only pass; only when it is NaN (NaN, or +inf and -inf) look closer.
    for i, v in enumerate(values):
        if v.is_floating_point() and torch.isnan(v.sum()) and bool(torch.isnan(v).any()):
            raise _nan_error(i, names)


def _sample_size(j: int, n_in: int, margin: float) -> int:
    """How many keys to sample for a bracket around the ``j``-th of ``n_in`` keys.

    Larger sets get a larger sample (a narrower bracket, so fewer candidate keys to gather), and
    above about 10^8 keys the sample is sized so that the expected bracket, ``n_in * 2 * margin *
    sqrt(p (1 - p) / m)`` keys, stays below a quarter of ``_CAP``: sorting even ``_SAMPLE_MAX`` keys
    costs less than the extra pass over the scores that an overflowing bracket would take.
    """
    p = j / n_in
    needed = (2 * margin * n_in * math.sqrt(p * (1 - p)) / (_CAP / 4)) ** 2
    return int(max(min(16 * _SAMPLE, max(_SAMPLE, 4 * math.isqrt(n_in))), min(_SAMPLE_MAX, needed)))


def _sample_keys(values, alive, n_in, highest, gen, want, lo=-math.inf, hi=math.inf) -> torch.Tensor:
    """About ``want`` keys drawn uniformly (with replacement) among the ``n_in`` alive entries whose
    key lies in ``[lo, hi]``, sorted.

    Stratified by tensor (draws in proportion to its size), so no global index is materialized.
    Draws that land on dead entries or outside ``[lo, hi]`` are discarded, so there are more draws
    the fewer entries qualify (at most ``_DRAWS_MAX``).
    """
    sizes = [v.numel() for v in values]
    total = sum(sizes)
    draws = min(_DRAWS_MAX, max(want, int(want * total / max(1, n_in))))
    parts = []
    for v, a, size in zip(values, alive, sizes):
        m = round(draws * size / total)
        if m == 0 or size == 0:
            continue
        local = torch.randint(size, (m,), generator=gen).to(v.device)
        vals = v[local]
        if a is not None:
            vals = vals[a[local]]
        parts.append(vals.to("cpu", torch.float64))
    sample = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float64)
    if highest:
        sample = -sample
    if lo != -math.inf or hi != math.inf:
        sample = sample[(sample >= lo) & (sample <= hi)]
    return torch.sort(sample).values


def _propose(sample, j, n_in, margin, lo, hi):
    """A bracket ``[a, b]`` within ``[lo, hi]`` that holds the ``j``-th of its ``n_in`` keys with high
    probability: ``margin`` sample standard deviations either side of the sample's estimate."""
    m = sample.numel()
    if m < 64:
        return lo, hi
    p = j / n_in
    r = (j - 0.5) / n_in * m
    half = margin * math.sqrt(m * p * (1 - p)) + 2
    ia, ib = math.floor(r - half), math.ceil(r + half)
    # One-sided bracket when one side of the threshold holds few enough keys (no below-mask to build).
    lower_side = 2 * j <= n_in and j <= _CAP // 2
    upper_side = 2 * j > n_in and n_in - j <= _CAP // 2
    a = lo if (ia < 0 or lower_side) else float(sample[ia])
    b = hi if (ib >= m or upper_side) else float(sample[ib])
    return a, b


def _count_upto(values, alive, t_key, highest):
    """(#alive keys < t, #alive keys <= t)."""
    lt = le = 0
    for v, a in zip(values, alive):
        for s, e in _chunks(v.numel()):
            ac = None if a is None else a[s:e]
            x = _key_lt(v[s:e], t_key, highest)
            y = _key_le(v[s:e], t_key, highest)
            if ac is not None:
                x &= ac
                y &= ac
            lt += int(x.count_nonzero())
            le += int(y.count_nonzero())
    return lt, le


def _finalize(values, alive, j, t_key, highest):
    """Drop masks for the j first alive entries when the j-th key is ``t_key`` (chunked, any tie count)."""
    drops = []
    remaining = j - _count_upto(values, alive, t_key, highest)[0]  # ties still to take
    for v, a in zip(values, alive):
        d = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
        for s, e in _chunks(v.numel()):
            ac = None if a is None else a[s:e]
            lt = _key_lt(v[s:e], t_key, highest)
            if ac is not None:
                lt &= ac
            d[s:e] = lt
            if remaining > 0:
                eq = v[s:e] == (-t_key if highest else t_key)
                if ac is not None:
                    eq &= ac
                c = int(eq.count_nonzero())
                if c <= remaining:
                    d[s:e] |= eq
                    remaining -= c
                else:
                    d[s + eq.nonzero().squeeze(1)[:remaining]] = True
                    remaining = 0
        drops.append(d)
    return drops


def _select(values, alive, n_alive, k, highest, names=None, seed=0, check_nan=True):
    """Which alive entries are the ``k`` first of the ranking.

    ``values``: flat score tensors; ``alive``: flat bool tensors or None (all alive). Returns one
    entry per tensor: None (nothing dropped), a flat bool mask, or flat int64 indices of drops.

    The k-th key is known to lie in ``[lo, hi]`` (at first the whole line). Each round samples keys
    inside that range, proposes a narrower bracket around the k-th one, and gathers the keys inside
    it. Too many keys inside (more than ``_CAP``) means the k-th key is in there all the same: the
    bracket becomes the known range, and the next round samples within it, so the candidates shrink
    instead of growing. A bracket that misses (a ``margin``-sigma event) is retried wider.
    """
    if k <= 0:
        return [None] * len(values)
    if k >= n_alive:
        return [
            torch.ones(v.numel(), dtype=torch.bool, device=v.device) if a is None else a.clone()
            for v, a in zip(values, alive)
        ]
    gen = torch.Generator().manual_seed(seed)
    if check_nan:
        _check_nan(values, names)
    lo, hi, n_lo, n_in = -math.inf, math.inf, 0, n_alive  # n_lo alive keys lie below lo, n_in in [lo, hi]
    margin = _Z
    for _ in range(_TRIES):
        j = k - n_lo  # the k-th key is the j-th of those in [lo, hi]
        a, b = lo, hi
        if n_in > min(_SMALL, _CAP):  # else gather every key of [lo, hi]
            sample = _sample_keys(values, alive, n_in, highest, gen, _sample_size(j, n_in, margin), lo, hi)
            if sample.numel() and torch.isnan(sample[-1]):
                raise ValueError("scores contain NaN; a criterion must give every weight a number")
            a, b = _propose(sample, j, n_in, margin, lo, hi)
        out = _select_bracket(values, alive, k, a, b, highest, _CAP, names)
        if isinstance(out, list):
            return out
        below, inside = out
        if below < k <= below + inside:  # too many keys in [a, b], the k-th among them: narrow to it
            if (a, b) == (lo, hi):
                break  # the sample offers no narrower bracket
            lo, hi, n_lo, n_in = a, b, below, inside
        else:  # the bracket missed the k-th key: widen (within [lo, hi])
            margin *= 2
    # Rarely reached (each round succeeds or narrows): every key of the known range, exact all the same.
    return _select_bracket(values, alive, k, lo, hi, highest, None, names)


def _select_bracket(values, alive, k, lo, hi, highest, cap, names):
    """Select with the k-th key assumed in [lo, hi].

    Returns the per-tensor drops, or ``(below, inside)``: the alive keys below ``lo`` and in
    ``[lo, hi]``, when the k-th key is not inside, or when more than ``cap`` keys are inside (and
    the k-th key is not tied at an end of the bracket, which counting passes resolve here).
    """
    below_n = 0
    below = []
    cand_pos, cand_key = [], []
    n_cand = 0
    overflow = False
    has_lo, has_hi = lo != -math.inf, hi != math.inf
    for v, a in zip(values, alive):
        bmask = torch.empty(v.numel(), dtype=torch.bool, device=v.device) if has_lo else None
        pos_i, key_i = [], []
        for s, e in _chunks(v.numel()):
            vc = v[s:e]
            ac = None if a is None else a[s:e]
            if has_lo:  # alive keys below the bracket: all pruned
                b = bmask[s:e]
                if highest:
                    torch.gt(vc, -lo, out=b)
                else:
                    torch.lt(vc, lo, out=b)
                if ac is not None:
                    b &= ac
                below_n += int(b.count_nonzero())
            if has_hi and not has_lo and vc.dtype in _NUMPY_FLOATS and vc.device.type == "cpu" and not overflow:
                # The iterative case (few keys below the bracket top): numpy fuses the compare with
                # the index extraction, about a third cheaper than torch's le + count + nonzero.
                # (numpy has no bfloat16, and its float16 compares are slow: those take torch's path.)
                vn = vc.numpy()
                inside_np = (vn >= -hi) if highest else (vn <= hi)
                if ac is not None:
                    inside_np &= ac.numpy()
                p = torch.from_numpy(np.flatnonzero(inside_np))
                n_cand += p.numel()
                if cap is not None and n_cand > cap:
                    overflow = True
                    continue
                if p.numel():
                    key_i.append(vc.index_select(0, p))
                    pos_i.append(p + s)
                continue
            if has_hi:
                inside = _key_le(vc, hi, highest)
                if ac is not None:
                    inside &= ac
                if has_lo:
                    inside &= ~b
            elif has_lo:
                inside = ~b
                if ac is not None:
                    inside &= ac
            else:
                inside = torch.ones_like(vc, dtype=torch.bool) if ac is None else ac
            c = int(inside.count_nonzero())
            n_cand += c
            if overflow or (cap is not None and n_cand > cap):
                overflow = True
                continue
            if c:
                p = _flatnonzero(inside)
                key_i.append(vc.index_select(0, p.to(vc.device)))
                pos_i.append(p + s)
        below.append(bmask)
        cand_pos.append(torch.cat(pos_i) if pos_i else None)
        cand_key.append(torch.cat(key_i) if key_i else None)
    if not (below_n < k <= below_n + n_cand):
        return below_n, n_cand  # the bracket missed the k-th key
    if overflow:
        # Many keys inside the bracket: ties at its ends (e.g. many exact zeros). Find the k-th key
        # by counting, then take ties in position order chunk by chunk.
        lt_lo, le_lo = _count_upto(values, alive, lo, highest)
        if lt_lo < k <= le_lo:
            return _finalize(values, alive, k, lo, highest)
        lt_hi, le_hi = _count_upto(values, alive, hi, highest)
        if lt_hi < k <= le_hi:
            return _finalize(values, alive, k, hi, highest)
        return below_n, n_cand
    keys = [c for c in cand_key if c is not None]
    allkeys = torch.cat([c.to(keys[0].device) for c in keys])
    if allkeys.dtype not in _NUMPY_FLOATS:  # bfloat16, float16: exact in float64, and kthvalue has it
        allkeys = allkeys.to(torch.float64)
    if highest:
        allkeys = allkeys.neg()
    j = k - below_n  # the j-th smallest key among the candidates is the threshold
    t = allkeys.kthvalue(j).values
    take = allkeys < t
    ties = (allkeys == t).nonzero().squeeze(1)
    take[ties[: j - int(take.count_nonzero())]] = True  # ties: first positions first
    out = []
    start = 0
    for bmask, pos in zip(below, cand_pos):
        if pos is None:
            out.append(bmask)
            continue
        sel = take[start : start + pos.numel()].to(pos.device)
        start += pos.numel()
        chosen = pos[sel]
        if bmask is None:
            out.append(chosen if chosen.numel() else None)
        else:
            fill_at(bmask, chosen, True)
            out.append(bmask)
    return out


# ------------------------------------------------------------------------------------------------
# remove
# ------------------------------------------------------------------------------------------------
def _split(drop, sizes: list[int]) -> list:
    """Per-tensor pieces of a drop result over the concatenation of tensors of ``sizes``."""
    if drop is None:
        return [None] * len(sizes)
    if drop.dtype == torch.bool:
        return list(drop.split(sizes))
    bounds = torch.tensor([0, *itertools.accumulate(sizes)], device=drop.device)
    cuts = torch.searchsorted(drop, bounds).tolist()  # drop indices are sorted
    return [drop[a:b] - bounds[i] for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def _mask_for_scores(scores: Mapping[str, torch.Tensor], mask: Mask) -> Mask:
    if set(scores) != set(mask):
        missing = sorted(set(mask) - set(scores))
        extra = sorted(set(scores) - set(mask))
        raise ValueError(
            f"scores and mask must cover the same parameters; scores lack {missing[:3]} and have extra {extra[:3]}"
        )
    for n in mask:
        if tuple(scores[n].shape) != tuple(mask[n].shape):
            raise ValueError(
                f"scores for {n!r} have shape {tuple(scores[n].shape)} but the mask has {tuple(mask[n].shape)}"
            )
    return mask


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
    ):
        """Start from ``mask``, or with every entry kept in tensors of ``shapes``. ``compact``: allow
        slot compaction (iterative pruning; one-shot removal does not need it)."""
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
            self.idx[n] = _flatnonzero(self.keep[n])
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
        (drop,) = _select([value], [self._alive(n)], self.kept[n], k, highest, [n], seed, check_nan)
        self._drop(n, drop, notify)

    def step_values(self, values, sparsity, scope, highest, notify=None, seed=0, check_nan=True) -> None:
        """:meth:`step` from per-slot values as :meth:`values` returns them."""
        names = self.names
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
            (drop,) = _select([torch.cat(vals)], [merged_alive], kept, k, highest, None, seed, check_nan)
            drops = _split(drop, sizes)
        else:
            drops = _select(vals, alive, kept, k, highest, names, seed, check_nan)
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
        disconnect the network. Paper 002 §3.1 removes 20% of the remaining channels of each layer
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
                    "nearest to the target (paper 002 §3.1 never empties a layer)",
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
) -> Mask:
    """The mask that removes the lowest-ranked weights until ``sparsity`` (or ``1 - density``) is reached.

    Frankle et al. §3's ``remove(Z, s)``. Weights already pruned in ``mask`` rank first and stay
    pruned, so the new mask is never denser than ``mask`` where they overlap; if ``mask`` is already
    sparser than asked it is returned unchanged. ``scope``: ``"global"`` ranks all covered weights
    together; ``"layer"`` prunes each tensor to ``sparsity``. ``prune_highest``: the criterion
    removes its highest scores (GraSP); ``invert`` flips whichever end is removed. ``groups``
    (default: ``scores.groups`` of a structured criterion) ``{name: dim}`` removes whole slices
    along ``dim``; scope and exact counts then apply to channels, to the nearest achievable count.
    """
    s = _check_sparsity(sparsity, density)
    _check_choice(scope, "scope", SCOPES)
    if not scores:
        raise ValueError("no scores given: remove needs {param_name: scores} for at least one tensor")
    if mask is not None:
        _mask_for_scores(scores, mask)
    if groups is None:
        groups = getattr(scores, "groups", None)
    device = next(iter(scores.values())).device
    state = _Remover(mask, device, shapes={n: v.shape for n, v in scores.items()})
    state.step(scores, s, scope, bool(prune_highest) != bool(invert), groups=groups)
    return state.final_mask()


# ------------------------------------------------------------------------------------------------
# score and prune
# ------------------------------------------------------------------------------------------------
def _split_options(method: Method, options: dict, extra: Mapping[str, object]):
    prunable = {k: options.pop(k) for k in PRUNABLE_OPTIONS if k in options}
    for k in COMMON_OPTIONS:  # given to every criterion that takes them, ignored by the others
        if k in options:
            v = options.pop(k)
            extra = {**extra, k: v} if extra.get(k) is None else extra
    accepted = set(method.options)
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = sorted(accepted | set(PRUNABLE_OPTIONS))
        raise ValueError(
            f"{method.name} does not take option(s) {', '.join(map(repr, unknown))}; it takes: {', '.join(valid)}"
        )
    for k, v in extra.items():  # prune()'s own arguments, for criteria that take them
        if k in accepted and k not in options and v is not None:
            options[k] = v
    return prunable, options


def _resolve_mask(model: nn.Module, mask: Mask | None, prunable: Mapping) -> Mask:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mask is None:
        return Mask.ones(model, **prunable)
    if not isinstance(mask, Mask):
        if isinstance(mask, Mapping):
            mask = Mask(mask)
        else:
            raise ValueError(f"mask must be a prunelab.Mask, got {type(mask).__name__}")
    mask.check_compatible(model)
    if prunable:
        expected = set(prunable_parameters(model, **prunable))
        if expected != set(mask):
            raise ValueError(
                "the mask covers other parameters than the prunable-parameter options select "
                f"({sorted(set(mask) ^ expected)[:3]}...); pass one or the other"
            )
    return mask


def _check_needs(method: Method, batch, options: Mapping) -> None:
    if method.needs_data and batch is None:
        raise ValueError(
            f"{method.name} needs data: pass batch=(inputs, targets) (e.g. ten examples per class, "
            "Frankle et al. App. B.2); data-free criteria: "
            + ", ".join(n for n, m in _methods().items() if not m.needs_data)
        )
    if method.needs_input_shape and options.get("input_shape") is None:
        raise ValueError(
            f"{method.name} needs input_shape, the shape of one input without the batch dimension, e.g. "
            "input_shape=(3, 32, 32) for CIFAR-10; it cannot be inferred from a module"
        )


def _methods():
    from prunelab.scores.registry import methods

    return methods()


def score(model: nn.Module, method: str, batch=None, mask: Mask | None = None, **options) -> Scores:
    """``{param_name: scores}`` of criterion ``method`` for the prunable parameters of ``model``.

    ``batch=(inputs, targets)`` for data-driven criteria. ``mask``: score the masked network
    (pruned weights count as zero); by default the dense mask over the prunable parameters, chosen
    by ``include_bias``, ``include_norm``, ``include_embeddings``, ``include``, ``exclude`` and
    ``filter`` (see :mod:`prunelab.coverage`). Other ``options`` go to the criterion (e.g.
    ``input_shape`` for SynFlow, ``seed`` for random ones, ``temperature`` for GraSP, ``axis`` for
    structured criteria; ``input_shape`` and ``seed`` are ignored by criteria that do not use them).
    The model is left as it was: weights, dtype, requires_grad, modes and BatchNorm statistics.
    """
    m = get_method(method)
    prunable, options = _split_options(m, dict(options), {})
    mask = _resolve_mask(model, mask, prunable)
    if m.needs_input_shape:
        options.setdefault("input_shape", None)
    _check_needs(m, batch, options)
    out = m.fn(model, mask, batch, **options)
    return out if isinstance(out, Scores) else Scores(out)


def _check_criterion_scores(scores, mask: Mask, method: str) -> None:
    """A criterion's scores name exactly the mask's tensors, each a tensor of its shape.

    Checked once, on the first iteration: a custom criterion that returns a transposed or flattened
    tensor of the right size would otherwise be ranked silently in the wrong order.
    """
    if not isinstance(scores, Mapping):
        raise ValueError(f"criterion {method!r} must return {{param_name: Tensor}}, got {type(scores).__name__}")
    missing = [n for n in mask if n not in scores]
    if missing:
        raise ValueError(
            f"criterion {method!r} returned no scores for {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; it must score every parameter the mask covers"
        )
    extra = [n for n in scores if n not in mask]
    if extra:
        raise ValueError(
            f"criterion {method!r} returned scores for {extra[0]!r}, which the mask does not cover; "
            f"it must score exactly the mask's parameters ({', '.join(list(mask)[:3])}...)"
        )
    for n in mask:
        t = scores[n]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"criterion {method!r} returned a {type(t).__name__} for {n!r}, not a tensor")
        if tuple(t.shape) != tuple(mask[n].shape):
            raise ValueError(
                f"criterion {method!r} returned scores of shape {tuple(t.shape)} for {n!r}, whose weight has "
                f"shape {tuple(mask[n].shape)}; scores must have the parameter's shape"
            )


def _warn_collapse(mask: Mask, method: str, sparsity: float) -> None:
    # Biases are left out: without them a layer still passes signal; without weights it does not.
    empty = [
        n for n, (kept, total) in mask.layer_counts().items() if kept == 0 and total > 0 and not n.endswith("bias")
    ]
    if empty:
        shown = ", ".join(empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        warnings.warn(
            f"layer collapse: {method} at sparsity {sparsity:g} pruned every weight of {shown}; the network "
            "is disconnected (Tanaka et al. 2020). Try more iterations, scope='layer', or a lower sparsity.",
            LayerCollapseWarning,
            stacklevel=3,
        )


def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    batch=None,
    input_shape: Sequence[int] | None = None,
    iterations: int | None = None,
    schedule: str = "exponential",
    scope: str | None = None,
    invert: bool = False,
    mask: Mask | None = None,
    seed: int = 0,
    **options,
) -> Mask:
    """Prune ``model`` to ``sparsity`` with criterion ``method``; returns the :class:`Mask` (the
    model's weights are not changed; ``mask.apply(model)`` zeroes them).

    Each of ``iterations`` (default: the criterion's own, 100 for SynFlow and iterative SNIP, else 1)
    scores the masked network and removes weights down to the next density of ``schedule``
    (:func:`density_schedule`; Frankle et al. §3, Tanaka et al. Algorithm 1). ``scope``: ``"global"``
    or ``"layer"``; default the criterion's own (global, or per layer for the structured criteria of
    paper 002). ``invert``: remove the other end of the ranking (Frankle et al. §5). ``mask``:
    continue from it (its pruned weights stay pruned). ``seed``: for criteria that draw random
    numbers. ``input_shape``: for SynFlow. Other ``options``: the coverage options
    (``include_bias``, ``include_norm``, ``include_embeddings``, ``include``, ``exclude``, ``filter``;
    see :mod:`prunelab.coverage`) and the criterion's own. Warns :class:`~prunelab.coverage.CoverageWarning`
    when weight tensors of no known layer type are left out of a new mask, and
    :class:`LayerCollapseWarning` when a covered tensor ends with no weight at all. The mask is on
    the CPU, wherever the model and the scores are.
    """
    s = _check_fraction(sparsity, "sparsity")
    m = get_method(method)
    n_iter = m.default_iterations if iterations is None else _check_iterations(iterations)
    _check_choice(schedule, "schedule", SCHEDULES)
    scope = m.default_scope if scope is None else _check_choice(scope, "scope", SCOPES)
    prunable, options = _split_options(m, dict(options), {"input_shape": input_shape, "seed": seed})
    new_mask = mask is None
    mask = _resolve_mask(model, mask, prunable)
    _check_needs(m, batch, options)
    if new_mask:
        coverage(model, **prunable).warn_unexpected(f"the {method} mask")
    highest = bool(m.prune_highest) != bool(invert)

    start = mask.density
    if mask.num_total - mask.num_kept < num_to_prune(s, mask.num_total):
        densities = density_schedule(s, n_iter, schedule, start)
    elif scope == "layer":
        densities = [1.0 - s]  # globally sparse enough, but some tensor may not be
    else:
        densities = []  # already at the target: pruned weights are never revived
    scorer = m.scorer(model, batch, **options)
    notify = getattr(scorer, "pruned", None)
    fast = getattr(scorer, "score_flat", None)  # scores only where the remover ranks (SynFlow)
    state = None
    for i, d in enumerate(densities):
        target = s if i == len(densities) - 1 else 1.0 - d
        if fast is not None and state is not None:
            # The fast path's scorer guarantees finite scores itself (SynFlow checks that R is finite).
            values = fast(state.mask(), state.index())
            state.step_values(values, target, scope, highest, notify, seed + i, check_nan=False)
            continue
        scores = scorer(mask if state is None else state.mask())
        if state is None:
            _check_criterion_scores(scores, mask, method)
            state = _Remover(mask, next(iter(scores.values())).device, compact=True)
        state.step(scores, target, scope, highest, notify=notify, groups=getattr(scores, "groups", None), seed=seed + i)
    result = mask.to("cpu").clone() if state is None else state.final_mask()  # CPU either way
    _warn_collapse(result, method, s)
    return result
