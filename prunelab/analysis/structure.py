"""Emergent structure of unstructured masks (Paganini & Forde 2020, §4 Fig. 5; App. E Fig. 15).

Magnitude pruning with rewinding removes whole input channels of convolutions (rows of filters)
although it prunes weight by weight: structure "resembling the effects of structured pruning"
along the input dimension (Paganini & Forde 2020, §4). How much more than chance? A random mask with the same number
of weights kept in a layer removes a given slice of ``k`` of the layer's ``N`` weights entirely with
the hypergeometric probability ``C(N - k, K) / C(N, K)`` (``K`` kept), and by linearity this is also
the expected fraction of such slices removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from prunelab.analysis.layerwise import as_mask
from prunelab.layer_rules import channel_axes, parameter_owners


def prob_slice_removed(total: int, kept: int, slice_size: int) -> float:
    """``C(N - k, K) / C(N, K)``: the chance that ``K`` weights kept uniformly at random among ``N``
    avoid a given set of ``k``. In log space with ``lgamma`` (exact binomials overflow floats for
    layers of millions of weights)."""
    n, K, k = int(total), int(kept), int(slice_size)
    if not (0 <= K <= n and 0 <= k <= n):
        raise ValueError(f"need 0 <= kept <= total and 0 <= slice_size <= total, got {total}, {kept}, {slice_size}")
    if K == 0 or k == 0:
        return 1.0
    if n - k < K:
        return 0.0
    log_p = (
        math.lgamma(n - k + 1) - math.lgamma(n - k - K + 1) - math.lgamma(n + 1) + math.lgamma(n - K + 1)
    )
    return math.exp(log_p)


def slice_count_variance(total: int, kept: int, slice_size: int) -> float:
    """Variance of the number of kept weights in a slice of ``k`` when ``K`` of ``N`` weights are kept
    uniformly at random: the hypergeometric ``k p (1 - p) (N - k) / (N - 1)`` with ``p = K / N``."""
    n, K, k = int(total), int(kept), int(slice_size)
    if not (0 <= K <= n and 0 <= k <= n) or n < 2:
        raise ValueError(f"need 0 <= kept <= total, 0 <= slice_size <= total and total >= 2, got {total}, {kept}, "
                         f"{slice_size}")
    p = K / n
    return k * p * (1 - p) * (n - k) / (n - 1)


def _dispersion(keep: torch.Tensor, axis: int) -> float:
    """Variance of the kept counts of the slices along ``axis`` over the variance a random mask of the same
    size gives (1 on average for random masks, larger when whole slices are favoured or dropped);
    ``nan`` when the random variance is zero (nothing or everything kept, or a single slice)."""
    counts = keep.transpose(0, axis).reshape(keep.shape[axis], -1).sum(dim=1).to(torch.float64)
    expected = slice_count_variance(keep.numel(), int(counts.sum()), keep.numel() // keep.shape[axis])
    if expected == 0 or counts.numel() < 2:
        return float("nan")
    return float(counts.var(unbiased=False)) / expected


def _removed(keep: torch.Tensor, axis: int) -> float:
    slices = keep.transpose(0, axis).reshape(keep.shape[axis], -1)
    return float((~slices.any(dim=1)).to(torch.float64).mean())


def emergent_structure(
    mask: Mapping[str, torch.Tensor], seed: int = 0, *, model: nn.Module | None = None
) -> dict[str, dict]:
    """Per convolution, and for the first linear layer, the fraction of input slices removed whole
    versus what a random mask with the same kept count would remove (Paganini & Forde 2020, §4 Fig. 5, App. E).

    For a convolution weight ``(out, in, kh, kw)`` an input slice is ``weight[:, j]`` (all outputs and
    kernel positions reading input channel ``j``); for the first 2-D tensor of the mask (the first
    linear layer, whose inputs are pixels in an MLP such as LeNet-300-100) it is column ``j``. The
    output side (``weight[i]``, the structure App. E also sees) is reported too. Per layer:
    ``{"kind": "conv" | "linear", "total", "kept", "slices", "slice_size", "removed",
    "expected_random", "random_sample", "dispersion", "output_slices", "output_removed",
    "output_expected_random", "output_dispersion"}``;
    ``expected_random`` is the exact hypergeometric expectation (:func:`prob_slice_removed`) and
    ``random_sample`` the fraction removed by one random mask with the same kept count, drawn with
    ``seed`` (a torch generator; layers in mask order). ``dispersion`` grades the structure short of
    whole slices: the variance of the kept counts across the input slices over its value for a random
    mask with the same kept count (:func:`slice_count_variance`): about 1 for a random mask, far above 1
    when the kept weights concentrate on some input channels (the rows of filters of Paganini & Forde 2020, Fig. 5).

    Input and output slices are along the layer rule's ``in_axis`` and ``out_axis`` when ``model`` is given
    (:func:`prunelab.coverage.channel_axes`; a transposed convolution stores ``(in, out, ...)``), else along
    dimensions 1 and 0, PyTorch's ``(out, in, ...)`` layout.
    """
    gen = torch.Generator().manual_seed(int(seed))
    owners = {} if model is None else parameter_owners(model)
    out: dict[str, dict] = {}
    first_linear_seen = False
    for name, keep in as_mask(mask).items():
        keep = keep.cpu()
        if keep.dim() >= 3:
            kind = "conv"
        elif keep.dim() == 2 and not first_linear_seen:
            kind = "linear"
        else:
            continue
        if keep.dim() == 2:
            first_linear_seen = True
        total, kept = keep.numel(), int(keep.count_nonzero())
        if total == 0:
            continue
        module, local = owners.get(name, (None, name))
        out_axis, in_axis = channel_axes(module, local, keep.dim(), "emergent structure")
        slices, outs = keep.shape[in_axis], keep.shape[out_axis]
        random_keep = torch.zeros(total, dtype=torch.bool)
        random_keep[torch.randperm(total, generator=gen)[:kept]] = True
        out[name] = {
            "kind": kind,
            "total": total,
            "kept": kept,
            "slices": slices,
            "slice_size": total // slices,
            "removed": _removed(keep, in_axis),
            "expected_random": prob_slice_removed(total, kept, total // slices),
            "random_sample": _removed(random_keep.reshape(keep.shape), in_axis),
            "dispersion": _dispersion(keep, in_axis),
            "output_slices": outs,
            "output_removed": _removed(keep, out_axis),
            "output_expected_random": prob_slice_removed(total, kept, total // outs),
            "output_dispersion": _dispersion(keep, out_axis),
        }
    return out
