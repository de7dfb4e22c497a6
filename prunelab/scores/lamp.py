"""LAMP: layer-adaptive magnitude-based pruning scores (Lee et al. 2021)."""

from __future__ import annotations

import torch

from prunelab.scores.registry import Scores, register_method


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP scores of ``weight`` (Lee et al. 2021, §3, Eq. (2)), in float64, of ``weight``'s shape.

    Lee et al. sort a tensor's weights in ascending order of magnitude, ``W[1], ..., W[n]``, and score
    ``W[u]² / Σ_{v ≥ u} W[v]²``: the sum runs over the weight itself and every weight after it in that order.
    The order of equal magnitudes is fixed here by a stable sort, ties broken by flattened index (the first in
    flattened order comes first, and so scores lower and is pruned first, like prunelab's ``ties="position"``),
    so that, as in the paper, the weights of a tie get different scores and each tensor's largest weight (the
    last in the order) scores exactly 1: global selection never empties a layer, unless the tensor is all zero.
    A weight whose sum is 0 (it and every weight after it zero: a tensor pruned or initialized to zero) scores 0.
    One sort and one cumulative sum per tensor.
    """
    sq = weight.detach().reshape(-1).to(torch.float64).square()
    ordered, where = torch.sort(sq, stable=True)
    # suffix[i] = sum of ordered[i:]: a reversed cumulative sum, exact for the largest weights (no cancellation);
    # suffix[-1] is ordered[-1] itself, so the last weight scores exactly 1
    suffix = ordered.flip(0).cumsum(0).flip(0)
    ratio = torch.where(suffix > 0, ordered / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return torch.empty_like(sq).index_put_((where,), ratio).view(weight.shape)


@register_method(
    "lamp",
    needs_data=False,
    family="after_training",
    year=2021,
    description="w^2 / sum of w'^2 over w and those after it, its tensor sorted by |w| (Lee et al. 2021)",
)
def lamp(model, mask, batch=None) -> Scores:
    """The LAMP score of every covered weight (Lee et al. 2021, §3, Eq. (2); :func:`lamp_scores`), ranked globally.

    Meant for trained weights (global magnitude pruning whose layerwise sparsities follow from the model-level
    L2 distortion, Lee et al. 2021, §3); at initialization it is a layer-adaptive magnitude baseline. Pruned
    weights count as zero, so the sums run over the weights ``mask`` keeps (the surviving weights of Lee et al.'s
    iterative pruning). Float64 scores: the ratios of a large layer are small and close together.
    """
    params = mask.check_compatible(model)
    out = Scores()
    for n, p in params.items():
        w = p.detach()
        keep = mask[n]
        if not bool(keep.all()):
            w = w * keep.to(w.device)
        out[n] = lamp_scores(w)
    return out
