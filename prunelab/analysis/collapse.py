"""Layer collapse, max and critical compression (Tanaka et al. 2020, §3) and neuron
collapse (Frankle et al. 2021, §5, Fig. 5).

Compression ratio ``rho`` is what Tanaka et al. (2020, §3) call it: covered weights before pruning divided by weights
kept, so ``rho = 1 / density`` and ``sparsity = 1 - 1 / rho``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.analysis.layerwise import as_mask
from prunelab.layer_rules import channel_axes, parameter_owners
from prunelab.masks import Mask
from prunelab.pruning import PRUNABLE_OPTIONS, LayerCollapseWarning, prune

DEFAULT_THRESHOLDS = tuple(i / 20 for i in range(21))


def layer_collapse(mask: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of masked tensors with no weight left while other tensors keep some (Tanaka et al. 2020, §3).

    Such a network is disconnected: no signal crosses the empty layer, and accuracy drops to chance
    (Tanaka et al. 2020, Fig. 1). An all-empty mask returns ``[]``: that is no longer one layer collapsing but the
    whole network pruned. Zero-sized tensors never count as collapsed.
    """
    counts = as_mask(mask).layer_counts()
    empty = [n for n, (kept, total) in counts.items() if kept == 0 and total > 0]
    return empty if len(empty) < len(counts) else []


def max_compression(mask: Mapping[str, torch.Tensor]) -> float:
    """``rho_max = N / L``: covered weights over the number of covered tensors (Tanaka et al. 2020, §3).

    The compression that keeps exactly one weight per layer; no criterion can compress further
    without collapsing a layer, so every critical compression is at most this. Zero-sized tensors
    are not counted as layers.
    """
    counts = as_mask(mask).layer_counts()
    layers = sum(1 for _, total in counts.values() if total > 0)
    return sum(total for _, total in counts.values()) / layers


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def critical_compression(
    model: nn.Module,
    method: str,
    *,
    batch=None,
    input_shape: Sequence[int] | None = None,
    iterations: int | None = None,
    low: float = 1.0,
    high: float | None = None,
    tol: float = 0.05,
    **prune_options,
) -> float:
    """The largest compression ``rho`` at which ``method`` leaves no layer empty: the critical
    compression of Tanaka et al. (2020, §3; the arrows of their Fig. 1), found without any training.

    Bisection on ``log10(rho)`` between ``low`` (default 1: nothing pruned) and ``high`` (default
    :func:`max_compression` of the covered parameters, the bound ``rho_cr <= rho_max`` of Tanaka et al.
    2020, §3).
    Each probe is one :func:`prunelab.prune` call at ``sparsity = 1 - 1/rho`` with ``batch``,
    ``input_shape``, ``iterations`` (default: the criterion's own, e.g. 100 for SynFlow) and
    ``prune_options`` (``scope``, ``schedule``, ``seed``, ``include_bias``, ...), then
    :func:`layer_collapse` on the mask. Stops when the bracket is at most ``tol`` wide in log10
    units and returns its lower end, the largest compression seen not to collapse: the true
    critical compression lies in ``[result, result * 10**tol)``. Returns ``high`` when even that does
    not collapse. Bisection assumes that once a criterion collapses a layer it keeps doing so at
    higher compression, which holds for one-shot global pruning of fixed scores and is what
    Tanaka et al. 2020, Fig. 1 reads off; iterative criteria are probed each at the same iterations.
    """
    low = _positive(low, "low")
    tol = _positive(tol, "tol")
    if low < 1.0:
        raise ValueError(f"low must be a compression ratio >= 1 (1 = nothing pruned), got {low!r}")
    if high is None:
        prunable = {k: v for k, v in prune_options.items() if k in PRUNABLE_OPTIONS}
        high = max_compression(Mask.ones(model, **prunable))
    high = _positive(high, "high")
    if high <= low:
        raise ValueError(f"high ({high:g}) must be above low ({low:g})")

    def collapses(log_rho: float) -> bool:
        sparsity = 1.0 - 10.0 ** (-log_rho)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerCollapseWarning)
            mask = prune(
                model, method, sparsity=max(0.0, sparsity), batch=batch, input_shape=input_shape,
                iterations=iterations, **prune_options,
            )
        return bool(layer_collapse(mask))

    lo, hi = math.log10(low), math.log10(high)
    if not collapses(hi):
        return high
    if collapses(lo):
        raise ValueError(
            f"{method} already collapses a layer at compression {low:g}; pass a lower `low` (>= 1)"
        )
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if collapses(mid):
            hi = mid
        else:
            lo = mid
    return 10.0**lo


def neuron_collapse(
    mask: Mapping[str, torch.Tensor], thresholds: Sequence[float] | None = None, *, model: nn.Module | None = None
) -> dict:
    """Fraction of neurons whose incoming weights are at least ``s`` sparse, for each threshold ``s``
    (Frankle et al. 2021, §5 "neuron collapse", Fig. 5).

    A neuron is an output unit of a linear layer or an output channel of a convolution: index ``i``
    along the output axis of a masked weight with at least two dimensions (1-D tensors such as biases
    are skipped). Its incoming weights are the slice ``i`` of that axis (for a convolution, all input
    channels and kernel positions). The output axis is the layer rule's when ``model`` is given
    (:func:`prunelab.coverage.channel_axes`: dimension 1 of a transposed convolution, a custom type's own),
    else dimension 0, PyTorch's ``(out, in, ...)`` layout. The threshold ``1.0`` counts fully dead
    neurons, the ones SynFlow prunes at a high rate (Frankle et al. 2021, §5). Default thresholds: 0, 0.05, ..., 1.

    Returns ``{"thresholds": [...], "fraction": [...], "per_layer": {name: [...]},
    "neurons": total count, "per_layer_neurons": {name: count}}``; ``fraction[k]`` is over all
    neurons of all such layers, ``per_layer[name][k]`` within one layer.
    """
    ts = list(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"thresholds must be sparsities in [0, 1], got {t!r}")
    ts = [float(t) for t in ts]
    per_layer: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    hits = [0] * len(ts)
    owners = {} if model is None else parameter_owners(model)
    for name, keep in as_mask(mask).items():
        if keep.dim() < 2 or keep.numel() == 0:
            continue
        module, local = owners.get(name, (None, name))
        out_axis = channel_axes(module, local, keep.dim(), "neuron collapse")[0]
        rows = keep.movedim(out_axis, 0).reshape(keep.shape[out_axis], -1)
        fan_in = rows.shape[1]
        pruned = (fan_in - rows.sum(dim=1)).to(torch.float64)
        layer = []
        for k, t in enumerate(ts):
            # pruned / fan_in >= t, in integers plus a rounding margin so that t = 0.5 of 4 counts 2.
            n = int((pruned >= t * fan_in - 1e-9 * fan_in).sum())
            layer.append(n / rows.shape[0])
            hits[k] += n
        per_layer[name] = layer
        counts[name] = rows.shape[0]
    total = sum(counts.values())
    if total == 0:
        raise ValueError("the mask has no tensor with at least two dimensions (no neurons to count)")
    return {
        "thresholds": ts,
        "fraction": [h / total for h in hits],
        "per_layer": per_layer,
        "neurons": total,
        "per_layer_neurons": counts,
    }
