"""Ablations of pruned networks: Frankle et al. 2021, §5, and Zhou et al. 2019 via
Paganini & Forde 2020, App. A.1.

- :func:`shuffle` permutes each layer's mask independently: per-layer counts stay, positions change
  ("Random shuffling", Frankle et al. 2021, §5). The permuted mask is *returned* — a reference implementation rebound a
  local variable and silently changed nothing; the test suite checks positions really move.
- :func:`reinitialize` draws new weights from the model's own initializer with another seed, mask kept
  ("Reinitialization", Frankle et al. 2021, §5), or from another initializer (Lee et al. 2019, §5.5: masks
  found at four initializations, every pruned network trained from Glorot weights).
- Inversion is ``prunelab.prune(..., invert=True)``: it ranks, never takes 1/score.
- The fixed-variance ablation ("Init", Frankle et al. 2021, §5: every layer N(0, 1), so magnitude pruning loses the
  per-layer variances of He initialization) is the model initializer ``standard_normal``; see
  :func:`fixed_variance_init`.
- :func:`sign_reinit` sets each kept weight to sigma_L * sign(w_init) where sigma_L is the empirical
  standard deviation of layer L's initial weights (Zhou et al. 2019, as used in Paganini & Forde
  2020, §3.2), or to sign(w_init).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from prunelab.masks import Mask
from prunelab.registry import check_name

SIGN_SCALES = ["sigma", "one"]


def shuffle(mask: Mask, seed: int = 0) -> Mask:
    """Each tensor's mask permuted uniformly at random (independently per layer, reproducible from ``seed``)."""
    out = {}
    for i, (name, keep) in enumerate(mask.items()):
        g = torch.Generator().manual_seed(_layer_seed(seed, i))
        perm = torch.randperm(keep.numel(), generator=g)
        out[name] = keep.flatten().cpu()[perm].view(keep.shape)
    return Mask(out)


def _layer_seed(seed: int, index: int) -> int:
    return (int(seed) * 1_000_003 + index * 7919 + 17) % (2**63 - 1)


def reinitialize(model: nn.Module, seed: int, mask: Mask | None = None, init: str | None = None) -> nn.Module:
    """Re-draw all weights with ``seed`` from the initializer the model was created with (``model.prunelab_init``;
    a timm or torchvision model kept at its library's initialization is built again by its library), or from
    ``init``, one of :data:`prunelab.models.INITIALIZERS` (the model's fan mode and BatchNorm init kept).

    ``init`` trains a mask found at one initialization from another: Lee et al. 2019, §5.5 prune at RN, TN, VS-X
    and VS-H and train every pruned network from VS-X (``xavier_normal``). ``model.prunelab_init`` keeps saying
    what the model was created with. With ``mask``, pruned weights are zeroed again afterwards (the mask is kept).
    """
    from prunelab.models import create, initialize

    options = getattr(model, "prunelab_init", None)
    rebuild = getattr(model, "prunelab_rebuild", None)
    if options is None and init is None and rebuild is not None:
        # a timm or torchvision model at its library's own initialization: the library draws it again
        model.load_state_dict(create(**rebuild, seed=seed).state_dict())
        if mask is not None:
            mask.zero_pruned(model)
        return model
    if options is None and init is None:
        raise ValueError(
            "reinitialize needs a model made by prunelab.models.create (it records its initializer) or init=...; "
            "for another model call prunelab.models.initialize(model, init=..., seed=...) directly"
        )
    options = dict(options or {})
    if init is not None:
        options["init"] = init  # an unknown name: initialize's ValueError, with the closest valid one
    initialize(model, **options, seed=seed)
    if mask is not None:
        mask.zero_pruned(model)
    return model


def fixed_variance_init(model: nn.Module, seed: int) -> nn.Module:
    """Every conv/linear weight N(0, 1): the fixed-variance initialization of Frankle et al. 2021, §5."""
    return reinitialize(model, seed, init="standard_normal")


@torch.no_grad()
def sign_reinit(
    model: nn.Module, init_state: Mapping[str, torch.Tensor], mask: Mask, scale: str = "sigma"
) -> nn.Module:
    """Rewind to ``init_state``, then set each masked tensor to sigma_L * sign(w_init) (or sign(w_init)).

    sigma_L is the empirical standard deviation of the layer's weights in ``init_state`` (Paganini & Forde 2020, §3.2,
    following Zhou et al. 2019); pruned weights stay 0.
    """
    check_name("sign scale", scale, SIGN_SCALES)
    params = mask.check_compatible(model)
    model.load_state_dict(init_state)
    for name, p in params.items():
        w0 = init_state[name].to(p.device, p.dtype)
        factor = w0.std() if scale == "sigma" else torch.ones((), dtype=p.dtype, device=p.device)
        p.copy_(factor * torch.sign(w0) * mask[name].to(p.device, p.dtype))
    return model
