"""Selecting the k first weights of a ranking without sorting all scores.

A seeded sample brackets the threshold, one counting pass over the tensors (in chunks) confirms the
bracket and collects the few scores inside it, and ``torch.kthvalue`` on those finds the exact
threshold. A bracket holding more than ``_CAP`` scores is narrowed by sampling inside it, never
widened, so extra memory stays a fraction of the scores' size (see ``bench/pruning_speed.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from prunelab.tensors import fill_at, flatnonzero

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


LARGE_TIE = 0.01  # a tie is large when it holds more than this share of the weights the step keeps


class Ties:
    """How :func:`_select` breaks a large tie at its threshold, and what it met.

    A tie at the threshold is *large* when more than :data:`LARGE_TIE` of the weights kept by the step share
    the threshold's score and only some of them go (zero scores behind a zero-initialized layer; exact zeros of
    timm's ``zero_init_last``). ``rule="position"`` takes the first positions, which in a global ranking means
    the first layers first (every tie, large or small, is broken this way by default, so results stay those of
    earlier versions); ``rule="random"`` takes a seeded random subset of the tied entries. Each large tie is
    recorded as ``(score, tied, taken)`` in :attr:`met`, for the caller's one warning.
    """

    def __init__(self, rule: str = "position", seed: int = 0):
        self.rule = rule
        self.seed = seed
        self.met: list[tuple[float, int, int]] = []

    def large(self, tied: int, taken: int, kept_after: int) -> bool:
        return 0 < taken < tied and tied > LARGE_TIE * max(kept_after, 1)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919)


def _key_lt(v: torch.Tensor, c: float, highest: bool) -> torch.Tensor:
    """key(v) < c, with key(v) = v (lowest pruned first) or -v (highest first)."""
    return torch.gt(v, -c) if highest else torch.lt(v, c)


def _key_le(v: torch.Tensor, c: float, highest: bool) -> torch.Tensor:
    return torch.ge(v, -c) if highest else torch.le(v, c)


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


def _finalize(values, alive, j, t_key, highest, ties=None, kept_after=0):
    """Drop masks for the j first alive entries when the j-th key is ``t_key`` (chunked, any tie count)."""
    drops = []
    lt_all, le_all = _count_upto(values, alive, t_key, highest)
    remaining = j - lt_all  # ties still to take
    pick = None  # with a random rule: which of the tied entries (in position order) are taken
    if ties is not None and ties.large(le_all - lt_all, remaining, kept_after):
        ties.met.append((-t_key if highest else t_key, le_all - lt_all, remaining))
        if ties.rule == "random":
            pick = torch.zeros(le_all - lt_all, dtype=torch.bool)
            pick[torch.randperm(le_all - lt_all, generator=ties.generator())[:remaining]] = True
    offset = 0
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
                if pick is not None:
                    where = eq.nonzero().squeeze(1)
                    d[s + where[pick[offset:offset + c].to(where.device)]] = True
                    offset += c
                elif c <= remaining:
                    d[s:e] |= eq
                    remaining -= c
                else:
                    d[s + eq.nonzero().squeeze(1)[:remaining]] = True
                    remaining = 0
        drops.append(d)
    return drops


def _select(values, alive, n_alive, k, highest, names=None, seed=0, check_nan=True, ties=None):
    """Which alive entries are the ``k`` first of the ranking.

    ``values``: flat score tensors; ``alive``: flat bool tensors or None (all alive). Returns one
    entry per tensor: None (nothing dropped), a flat bool mask, or flat int64 indices of drops.

    The k-th key is known to lie in ``[lo, hi]`` (at first the whole line). Each round samples keys
    inside that range, proposes a narrower bracket around the k-th one, and gathers the keys inside
    it. Too many keys inside (more than ``_CAP``) means the k-th key is in there all the same: the
    bracket becomes the known range, and the next round samples within it, so the candidates shrink
    instead of growing. A bracket that misses (a ``margin``-sigma event) is retried wider. ``ties``: a
    :class:`Ties` that breaks and records large ties at the threshold (None: position order, unrecorded).
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
        out = _select_bracket(values, alive, k, a, b, highest, _CAP, names, ties, n_alive - k)
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
    return _select_bracket(values, alive, k, lo, hi, highest, None, names, ties, n_alive - k)


def first_k(values: torch.Tensor, alive: torch.Tensor | None, k: int, highest: bool = False) -> torch.Tensor:
    """A flat bool tensor marking the ``k`` first ``alive`` entries of flat ``values`` in the ranking every
    path of :mod:`prunelab.pruning` uses: lowest first (``highest``: highest first), ties broken by
    position (the entry that comes first is chosen first), NaN refused. ``alive=None``: every entry."""
    n_alive = values.numel() if alive is None else int(alive.count_nonzero())
    (chosen,) = _select([values], [alive], n_alive, k, highest)
    out = torch.zeros(values.numel(), dtype=torch.bool, device=values.device)
    if chosen is None:
        return out
    if chosen.dtype == torch.bool:
        return out | chosen
    fill_at(out, chosen, True)
    return out


def _select_bracket(values, alive, k, lo, hi, highest, cap, names, ties=None, kept_after=0):
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
                p = flatnonzero(inside)
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
            return _finalize(values, alive, k, lo, highest, ties, kept_after)
        lt_hi, le_hi = _count_upto(values, alive, hi, highest)
        if lt_hi < k <= le_hi:
            return _finalize(values, alive, k, hi, highest, ties, kept_after)
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
    tied = (allkeys == t).nonzero().squeeze(1)
    need = j - int(take.count_nonzero())
    if ties is not None and ties.large(tied.numel(), need, kept_after):
        ties.met.append((float(-t if highest else t), tied.numel(), need))
        if ties.rule == "random":
            tied = tied[torch.randperm(tied.numel(), generator=ties.generator())[:need].sort().values.to(tied.device)]
    take[tied[:need]] = True  # ties: first positions first (or the random subset just drawn)
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
