"""Mask similarity and weight stability (Paganini & Forde 2020, §4 Figs. 3-4, 9, 11; §5 Fig. 8)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from prunelab.analysis.layerwise import as_mask
from prunelab.masks import Mask


def _same_cover(a: Mask, b: Mask) -> None:
    if set(a.keys()) != set(b.keys()):
        only_a = sorted(set(a) - set(b))[:3]
        only_b = sorted(set(b) - set(a))[:3]
        raise ValueError(
            f"the masks cover different parameters (only in the first: {only_a}, only in the second: {only_b})"
        )
    for n in a:
        if a[n].shape != b[n].shape:
            raise ValueError(f"{n!r} has shape {tuple(a[n].shape)} in one mask and {tuple(b[n].shape)} in the other")


def _counts(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """The kept weights of two bool masks of a tensor: in both (intersection), in either (union)."""
    b = b.to(a.device)
    if a.device.type == "cpu":  # numpy counts bools some 40 times faster than torch (a report compares thousands)
        a, b = a.numpy(), b.numpy()
        return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))
    return int((a & b).count_nonzero()), int((a | b).count_nonzero())


def jaccard_per_layer(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                      shared_only: bool = False) -> dict[str, float]:
    """Per tensor, the Jaccard similarity (intersection over union) of the *kept* weights of two masks
    (Paganini & Forde 2020, §4: "Jaccard similarity coefficient ... IoU between the masks", per layer in Figs. 3-4).

    1.0 for a tensor that both masks prune entirely (empty union: the two agree). The masks must cover
    the same tensors, unless ``shared_only``: then only the tensors both cover are compared (e.g. an
    fc-only mask of Paganini & Forde 2020 against a mask of the whole network)."""
    a, b = as_mask(a), as_mask(b)
    if shared_only:
        names = [n for n in a if n in b]
        if not names:
            raise ValueError("the masks cover no tensor in common")
        a, b = Mask({n: a[n] for n in names}), Mask({n: b[n] for n in names})
    _same_cover(a, b)
    out = {}
    for n in a:
        inter, union = _counts(a[n], b[n])
        out[n] = inter / union if union else 1.0
    return out


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Jaccard similarity of the kept weights over all covered tensors together (Paganini & Forde 2020, §4); 1.0 when
    neither mask keeps anything."""
    a, b = as_mask(a), as_mask(b)
    _same_cover(a, b)
    inter = union = 0
    for n in a:
        i, u = _counts(a[n], b[n])
        inter += i
        union += u
    return inter / union if union else 1.0


def jaccard_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """``1 - jaccard(a, b)``: the distance plotted against pruning iteration
    in Paganini & Forde 2020, Figs. 3, 4, 9, 11."""
    return 1.0 - jaccard(a, b)


def _state(x) -> Mapping[str, torch.Tensor]:
    if isinstance(x, nn.Module):
        return dict(x.state_dict())
    if isinstance(x, Mapping):
        return x
    raise ValueError(f"expected a model or a state dict (parameter name -> tensor), got {type(x).__name__}")


def weight_stability(prev_state, next_state, prev_mask, next_mask) -> dict[str, float]:
    """Per tensor, the mean ``|w_next - w_prev|`` over the weights kept by both masks
    (Paganini & Forde 2020, §5, Fig. 8).

    Between two levels of iterative pruning: ``prev_state``/``next_state`` are the trained weights
    (state dicts or models) of consecutive levels and the masks those levels trained under. Small
    values mean the surviving weights converge to the same solution from one level to the next,
    which Paganini & Forde (2020, §5) relate to the sub-network's accuracy.
    ``nan`` for a tensor with no weight kept by both.
    """
    pm, nm = as_mask(prev_mask), as_mask(next_mask)
    _same_cover(pm, nm)
    ps, ns = _state(prev_state), _state(next_state)
    out = {}
    for n in pm:
        for label, st in (("prev_state", ps), ("next_state", ns)):
            if n not in st:
                raise ValueError(f"{label} has no tensor {n!r} (the masks name it)")
            if tuple(st[n].shape) != tuple(pm[n].shape):
                raise ValueError(f"{label}[{n!r}] has shape {tuple(st[n].shape)}, the masks {tuple(pm[n].shape)}")
        both = pm[n].cpu() & nm[n].cpu()
        k = int(both.count_nonzero())
        if k == 0:
            out[n] = float("nan")
            continue
        diff = (ns[n].detach().cpu().to(torch.float64) - ps[n].detach().cpu().to(torch.float64)).abs()
        out[n] = float(diff[both].sum()) / k
    return out
