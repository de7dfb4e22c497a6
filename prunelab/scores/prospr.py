"""ProsPr: saliency by meta-gradients through the first steps of training (Alizadeh et al. 2022)."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from prunelab.batches import resolve_loss
from prunelab.scores.batching import score_batches
from prunelab.scores.isolation import (
    batchnorm_train_mode,
    forward,
    masked_leaves,
    math_attention,
    twice_differentiable,
)
from prunelab.scores.registry import Scores, register_method
from prunelab.validate import check_int


def _check(steps, lr, momentum, first_order) -> None:
    check_int(steps, "steps", 0, "ProsPr's inner SGD steps (3: the authors' CLI default; 0 = SNIP)")
    for name, value, low in (("lr", lr, "positive"), ("momentum", momentum, "in [0, 1)")):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
            value > 0 if name == "lr" else 0 <= value < 1)
        if not ok:
            raise ValueError(f"prospr: {name} must be a number {low} (the inner SGD's; the authors' CLI defaults, "
                             f"mil-ad/prospr cli.py: lr 0.1, momentum 0), got {value!r}")
    if not isinstance(first_order, bool):
        raise ValueError(f"prospr: first_order must be True or False, got {first_order!r}")


@register_method(
    "prospr",
    needs_data=True,
    family="init_data",
    year=2022,
    description="|dL(w_M)/dc|, the meta-gradient through M SGD steps from w = c * theta (Alizadeh et al. 2022)",
)
def prospr(
    model,
    mask,
    batch,
    *,
    steps: int = 3,
    lr: float = 0.1,
    momentum: float = 0.0,
    first_order: bool = False,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
) -> Scores:
    """Prospect Pruning: ``|dL(w_M)/dc|`` at ``c = 1``, ``w_0 = c * theta``, ``w_{k+1} = w_k - lr * dL(w_k)/dw``.

    Alizadeh et al. 2022, §3: the saliency of a weight is the gradient of the loss *after* ``M = steps`` steps of
    SGD with respect to its multiplicative mask at initialization, obtained by differentiating through the steps
    (second derivatives: a meta-gradient), so that it accounts for how the network will train rather than for
    the loss at initialization alone (``steps=0`` gives SNIP's ``|theta * dL/dw|``). Since ``w_0 = c * theta``,
    ``dL/dc = theta * dL(w_M)/dw_0``. Every parameter of the model takes the SGD steps (biases and normalization
    too, as in the authors' code, github.com/mil-ad/prospr); the covered weights already pruned by ``mask``
    start at zero and stay there (their update is masked). ``first_order=True``: the first-order approximation
    of Alizadeh et al. 2022, which treats each step's gradient as a constant, so that ``dw_M/dw_0 = I`` and the
    score is ``|theta * dL(w_M)/dw_M|`` (no second derivatives: the memory of one training step).

    Defaults: 3 steps, inner learning rate 0.1, no momentum: the authors' CLI defaults (github.com/mil-ad/prospr,
    ``cli.py``: ``--inner-steps 3 --inner-lr 0.1 --inner-momentum 0``), not values from the paper; the README's
    package example calls ``prospr.prune`` with 3 steps, lr 0.5 and momentum 0.9 (here ``lr=0.5 momentum=0.9``).
    Every step and the final loss use the same ``batch`` (the CLI's default, ``--new-data-in-inner`` off; their code
    can draw a new batch per step instead). With ``momentum``, the authors' code starts the momentum buffer from a
    detached copy of the first step's gradient, which cuts that gradient's path through the buffer out of the
    meta-gradient; here the buffer stays in the graph (``v_1 = g_1``, ``v_{k+1} = momentum · v_k + g_{k+1}``), the
    exact meta-gradient of the unrolled steps. Without momentum (the default) the two agree. ``loss_fn`` and
    ``batchnorm_train`` as for :func:`~prunelab.scores.gradient.snip` (train-mode BatchNorm uses each step's batch
    statistics; the caller's model, running statistics included, is left untouched).
    """
    _check(steps, lr, momentum, first_order)
    batches = score_batches(batch, "prospr")
    loss_of = resolve_loss(loss_fn)
    params = mask.check_compatible(model)
    w0 = masked_leaves(params, mask)  # the weights at c = 1 (pruned ones at 0): what the meta-gradient is about
    keep = {n: mask[n].to(w.device) for n, w in w0.items() if not bool(mask[n].all())}
    others = {n: p.detach().clone().requires_grad_(True)
              for n, p in model.named_parameters() if n not in w0 and p.is_floating_point()}

    def total_loss(tensors):
        out = 0.0
        for piece in batches.local:
            piece = piece.to_model(model)
            out = out + loss_of(forward(model, tensors, piece), piece.targets) * batches.weight(piece)
        return out

    higher = not first_order and steps > 0
    with batchnorm_train_mode(model, batchnorm_train), math_attention(), twice_differentiable():
        fast = {**w0, **others}
        velocity: dict[str, torch.Tensor] = {}
        for _ in range(steps):
            names = [n for n, t in fast.items() if t.requires_grad]
            grads = torch.autograd.grad(total_loss(fast), [fast[n] for n in names], create_graph=higher,
                                        allow_unused=True)
            new = dict(fast)
            for n, g in zip(names, grads):
                if g is None:
                    continue
                if not higher:
                    g = g.detach()
                if momentum:  # torch.optim.SGD's rule, dampening 0: v = momentum * v + g
                    g = g if n not in velocity else velocity[n] * momentum + g
                    velocity[n] = g
                if n in keep:
                    g = g * keep[n]
                new[n] = fast[n] - lr * g
            fast = new
        final = total_loss(fast)
        names = list(w0)
        grads = torch.autograd.grad(final, [w0[n] for n in names], allow_unused=True)
    return Scores({n: torch.zeros_like(w0[n]) if g is None else (g * w0[n].detach()).abs_()
                   for n, g in zip(names, grads)})
