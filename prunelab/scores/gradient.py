"""Data-driven criteria from gradients of the loss: SNIP (and iterative SNIP) and GraSP (and |GraSP|).

All of them score the masked network (pruned weights are zero in the forward pass), with BatchNorm
in train mode as the papers' implementations do at initialization, and leave the caller's model
untouched (see :mod:`prunelab.scores._common`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunelab.scores._common import (
    batchnorm_train_mode,
    forward,
    masked_leaves,
    math_attention,
    model_device,
    resolve_loss,
    split_batches,
)
from prunelab.scores.registry import Scores, register_method


def _inputs(model, x, y):
    dev = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    x = x.to(dev, dtype) if (x.is_floating_point() and dtype is not None) else x.to(dev)
    return x, y.to(dev)


def _grads(loss, leaves, create_graph=False):
    """d loss / d leaves, with zeros for leaves the loss does not depend on."""
    ws = list(leaves.values())
    gs = torch.autograd.grad(loss, ws, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(ws, gs)]


@register_method(
    "iterative_snip",
    needs_data=True,
    default_iterations=100,
    description="SNIP |dL/dw * w| re-scored over 100 iterations (Frankle et al. 2021, App. G)",
)
@register_method("snip", needs_data=True, description="|dL/dw * w| on a batch (Lee et al. 2019)")
def snip(model, mask, batch, *, loss_fn: Callable | None = None, batchnorm_train: bool = True) -> Scores:
    """SNIP's connection sensitivity ``|dL/dc|`` at gates ``c = 1``, computed as ``|dL/dw * w|``.

    Lee et al. 2019 define the score with a multiplicative gate ``c`` per weight;
    Frankle et al. 2021, App. B.2 show it equals ``|dL/dw * w|``, which costs one forward and one backward
    pass. ``L`` is the mean cross-entropy (``loss_fn(output, target)`` to change it) over the whole
    ``batch``; a list of ``(inputs, targets)`` pairs is scored as one batch of their union, except
    that train-mode BatchNorm normalizes each pair with its own statistics. ``iterative_snip`` is this
    score re-evaluated on the masked network over 100 iterations (App. G).
    """
    pairs = split_batches(batch, "snip")
    loss_fn = resolve_loss(loss_fn)
    params = mask.check_compatible(model)
    leaves = masked_leaves(params, mask)
    total = sum(len(x) for x, _ in pairs)
    grads = None
    with batchnorm_train_mode(model, batchnorm_train):
        for x, y in pairs:
            x, y = _inputs(model, x, y)
            loss = loss_fn(forward(model, leaves, x), y) * (len(x) / total)
            g = _grads(loss, leaves)
            grads = g if grads is None else [a.add_(b) for a, b in zip(grads, g)]
    return Scores({n: g.mul_(w.detach()).abs_() for (n, w), g in zip(leaves.items(), grads)})


def _check_temperature(temperature):
    if temperature is None:
        return 1.0
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number (200 in Wang et al. 2020; 1 = none), "
                         f"got {temperature!r}")
    return float(temperature)


def _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train):
    """(leaves, H g) with g = dL/dw and H the Hessian of L over the covered weights."""
    pairs = split_batches(batch, "grasp")
    loss_fn = resolve_loss(loss_fn)
    t = _check_temperature(temperature)
    params = mask.check_compatible(model)
    leaves = masked_leaves(params, mask)
    total = sum(len(x) for x, _ in pairs)

    def loss_of(x, y):
        x, y = _inputs(model, x, y)
        out = forward(model, leaves, x)
        return loss_fn(out / t if t != 1.0 else out, y) * (len(x) / total)

    with batchnorm_train_mode(model, batchnorm_train), math_attention():
        if len(pairs) == 1:
            # One batch: a single forward pass serves both g and Hg. z = <stop_grad(g), g(w)> and
            # dz/dw = H g (double back-propagation, Wang et al. 2020, Algorithm 2).
            g = _grads(loss_of(*pairs[0]), leaves, create_graph=True)
            z = sum((gi.detach() * gi).sum() for gi in g if gi.requires_grad)
            hg = (
                _grads(z, leaves)
                if isinstance(z, torch.Tensor) and z.requires_grad
                else [torch.zeros_like(w) for w in leaves.values()]
            )
        else:
            # Several batches: g must be the gradient of the whole loss before any Hg is taken.
            g_all = None
            for x, y in pairs:
                gi = _grads(loss_of(x, y), leaves)
                g_all = gi if g_all is None else [a.add_(b) for a, b in zip(g_all, gi)]
            hg = None
            for x, y in pairs:
                gi = _grads(loss_of(x, y), leaves, create_graph=True)
                z = sum((a * b).sum() for a, b in zip(g_all, gi) if b.requires_grad)
                if not (isinstance(z, torch.Tensor) and z.requires_grad):
                    continue
                h = _grads(z, leaves)
                hg = h if hg is None else [a.add_(b) for a, b in zip(hg, h)]
            if hg is None:
                hg = [torch.zeros_like(w) for w in leaves.values()]
    return leaves, hg


@register_method(
    "grasp",
    needs_data=True,
    prune_highest=True,
    description="-w * (H g), pruning the highest scores (Wang et al. 2020; Frankle et al. 2021, App. C)",
)
def grasp(
    model,
    mask,
    batch,
    *,
    temperature: float | None = 200.0,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
) -> Scores:
    """GraSP: ``-w * (H g)`` with ``g = dL/dw`` and ``H`` the Hessian of ``L`` over the covered weights.

    Frankle et al. 2021, App. C.1, eq. (4): removing ``w_i`` changes the gradient norm by about
    ``-w_i (H g)_i``, and GraSP removes the weights with the *highest* scores (registered with
    ``prune_highest=True``; ``invert=True`` removes the lowest instead). ``H g`` comes from double
    back-propagation, never from an explicit Hessian. ``temperature``: the implementation of Wang et al. (2020)
    divides the logits by T = 200 before the loss (on by default, as in the replication of that code by
    Frankle et al. 2021, App. C.2); pass ``temperature=1`` (or ``None``) for the plain loss.
    """
    leaves, hg = _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train)
    return Scores({n: h.mul_(w.detach()).neg_() for (n, w), h in zip(leaves.items(), hg)})


@register_method(
    "grasp_abs",
    needs_data=True,
    description="|-w * (H g)|, pruning the lowest magnitudes (Frankle et al. 2021, App. H)",
)
def grasp_abs(
    model,
    mask,
    batch,
    *,
    temperature: float | None = 200.0,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
) -> Scores:
    """``|w * (H g)|``: the GraSP variant of Frankle et al. 2021 that prunes the lowest-magnitude GraSP scores
    (App. H, Figure 13; the improved GraSP of App. I)."""
    leaves, hg = _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train)
    return Scores({n: h.mul_(w.detach()).abs_() for (n, w), h in zip(leaves.items(), hg)})
