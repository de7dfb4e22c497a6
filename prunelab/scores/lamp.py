"""LAMP: layer-adaptive magnitude-based pruning scores (Lee et al. 2021)."""

from __future__ import annotations

import torch

from prunelab.scores.registry import Scores, register_method


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """``w_u^2 / sum of w_v^2 over the v of the tensor with |w_v| >= |w_u|``, in float64, of ``weight``'s shape.

    Lee et al. 2021, §3, Eq. (2) index a layer's weights in ascending order of magnitude and divide by the sum
    over ``v >= u`` in that order; weights of equal magnitude then get different scores depending on how the sort
    orders them. Here the sum runs over every weight at least as large, so equal magnitudes get equal scores and
    prunelab's tie rule decides between them (``ties="position"``: the first in flattened order is pruned first,
    or ``"random"``). Where all ``w_v`` in the sum are 0 (a tensor pruned or initialized to zero) the score is 0.
    One sort and one cumulative sum per tensor.
    """
    sq = weight.detach().reshape(-1).to(torch.float64).square()
    ordered, where = torch.sort(sq)
    # suffix[i] = sum of ordered[i:]: a reversed cumulative sum, exact for the largest weights (no cancellation)
    suffix = ordered.flip(0).cumsum(0).flip(0)
    # the first position of each run of equal values, so that a tie's sum includes all of it
    position = torch.arange(sq.numel(), device=sq.device)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = torch.where(starts, position, 0).cummax(0).values
    denominator = suffix[first]
    ratio = torch.where(denominator > 0, ordered / denominator.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return torch.empty_like(sq).index_put_((where,), ratio).view(weight.shape)


@register_method(
    "lamp",
    needs_data=False,
    family="after_training",
    year=2021,
    description="w^2 / sum of w'^2 over the weights of its tensor at least as large (Lee et al. 2021)",
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
