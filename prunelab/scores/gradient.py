"""Data-driven criteria from gradients of the loss: SNIP (and iterative SNIP) and GraSP (and |GraSP|).

All of them score the masked network (pruned weights are zero in the forward pass), with BatchNorm
in train mode as the papers' implementations do at initialization, and leave the caller's model
untouched (see :mod:`prunelab.scores.isolation`). Batches and outputs go through :mod:`prunelab.batches`;
:func:`loss_gradients` is the one gradient pass, also used by RigL's growth (:mod:`prunelab.sparse_training`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import torch

from prunelab.batches import logits, model_loss, replace_logits, resolve_loss
from prunelab.masks import Mask
from prunelab.scores.batching import ScoreBatches, score_batches, warn_if_batchnorm_split
from prunelab.scores.isolation import (
    batchnorm_train_mode,
    forward,
    masked_leaves,
    math_attention,
    twice_differentiable,
)
from prunelab.scores.registry import Scores, register_method


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
    family="init_data",
    year=2021,
)
@register_method("snip", needs_data=True, family="init_data", year=2019,
                 description="|dL/dw * w| on a batch (Lee et al. 2019)")
def snip(
    model,
    mask,
    batch,
    *,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
    score_batch_size: int | None = None,
    distributed: bool = False,
) -> Scores:
    """SNIP's connection sensitivity ``|dL/dc|`` at gates ``c = 1``, computed as ``|dL/dw * w|``.

    Lee et al. 2019 define the score with a multiplicative gate ``c`` per weight;
    Frankle et al. 2021, App. B.2 show it equals ``|dL/dw * w|``, which costs one forward and one backward
    pass. ``L`` is the mean cross-entropy (``loss_fn(output, target)`` to change it) over the whole
    ``batch``; a list of ``(inputs, targets)`` pairs is scored as one batch of their union, except
    that train-mode BatchNorm normalizes each pair with its own statistics. ``iterative_snip`` is this
    score re-evaluated on the masked network over 100 iterations (App. G).

    ``score_batch_size``: forward at most that many examples at a time, summing the gradient (memory
    bounded, same score; see :mod:`prunelab.scores.batching`). ``distributed``: every rank of the
    process group calls with the same batch, scores its share of it, and the gradients are all-reduced.
    """
    leaves, grads = _gradients(model, mask, batch, "snip", loss_fn, batchnorm_train, score_batch_size, distributed)
    return Scores({n: g.mul_(w.detach()).abs_() for (n, w), g in zip(leaves.items(), grads)})


def loss_gradients(
    model,
    mask: Mask,
    batch,
    *,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
    score_batch_size: int | None = None,
    distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """``dL/dw`` of the masked network (pruned weights are 0 in the forward pass) for every weight ``mask``
    covers, pruned positions included, with the caller's model left untouched.

    The gradient SNIP multiplies by the weights and RigL grows by (Evci et al. 2020, §3); the options are
    those of :func:`snip` (``batchnorm_train=False`` keeps each BatchNorm in the mode the caller chose).
    """
    leaves, grads = _gradients(model, mask, batch, "loss_gradients", loss_fn, batchnorm_train, score_batch_size,
                               distributed)
    return dict(zip(leaves, grads))


def _gradients(model, mask, batch, name, loss_fn, batchnorm_train, score_batch_size, distributed):
    """(masked leaves, their loss gradients summed over every micro-batch of every rank)."""
    batches = score_batches(batch, name, score_batch_size, distributed)
    warn_if_batchnorm_split(model, batches, name, batchnorm_train)
    loss_fn = resolve_loss(loss_fn)
    params = mask.check_compatible(model)
    leaves = masked_leaves(params, mask)
    with batchnorm_train_mode(model, batchnorm_train):
        grads = _summed_grads(model, leaves, batches, loss_fn)
    return leaves, batches.sum_over_ranks(grads)


def _summed_grads(model, leaves, batches: ScoreBatches, loss_of, hg_at=None):
    """Sum over this rank's micro-batches of d(weighted loss)/d leaves, or, with ``hg_at = g``, of the
    Hessian-gradient product ``H g`` (g held fixed: Wang et al. 2020, Algorithm 2). Zeros without any."""
    total = [torch.zeros_like(w) for w in leaves.values()]
    for piece in batches.local:
        piece = piece.to_model(model)
        loss = loss_of(forward(model, leaves, piece), piece.targets) * batches.weight(piece)
        if hg_at is None:
            part = _grads(loss, leaves)
        else:
            gi = _grads(loss, leaves, create_graph=True)
            z = sum((a * b).sum() for a, b in zip(hg_at, gi) if b.requires_grad)
            if not (isinstance(z, torch.Tensor) and z.requires_grad):
                continue
            part = _grads(z, leaves)
        for a, b in zip(total, part):
            a.add_(b)
    return total


@contextlib.contextmanager
def _second_derivatives():
    """A missing double backward as a one-line ``ValueError`` naming the operation (GraSP's H g)."""
    try:
        yield
    except RuntimeError as e:
        found = re.search(r"derivative for (\S+) is not implemented", str(e))
        if found is None:
            raise
        raise ValueError(
            f"grasp needs second derivatives (Wang et al. 2020, §4: H g by double back-propagation) and torch has "
            f"none for {found.group(1)}, which the model uses; replace that layer by a twice-differentiable "
            "equivalent or score with snip or synflow"
        ) from e


def _check_temperature(temperature):
    if temperature is None:
        return 1.0
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a positive number (200 in Wang et al. 2020; 1 = none), "
                         f"got {temperature!r}")
    return float(temperature)


def _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train, score_batch_size, distributed):
    """(leaves, H g) with g = dL/dw and H the Hessian of L over the covered weights."""
    batches = score_batches(batch, "grasp", score_batch_size, distributed)
    warn_if_batchnorm_split(model, batches, "grasp", batchnorm_train)
    own_loss = loss_fn is None  # the default loss would take the model's own
    loss_fn = resolve_loss(loss_fn)
    t = _check_temperature(temperature)
    params = mask.check_compatible(model)
    leaves = masked_leaves(params, mask)

    def loss_of(out, y):
        if t == 1.0:
            return loss_fn(out, y)
        if own_loss and model_loss(out) is not None:
            raise ValueError(
                f"grasp: the temperature {t:g} divides the logits, but the model computes its own loss from the "
                "undivided ones (Hugging Face, given labels); pass loss_fn(output, targets), which then receives "
                "the divided logits in output.logits, or temperature=1"
            )
        return loss_fn(replace_logits(out, logits(out) / t), y)

    with batchnorm_train_mode(model, batchnorm_train), math_attention(), twice_differentiable(), _second_derivatives():
        if batches.one_pass:
            # One batch: a single forward pass serves both g and Hg. z = <stop_grad(g), g(w)> and
            # dz/dw = H g (double back-propagation, Wang et al. 2020, Algorithm 2).
            piece = batches.local[0].to_model(model)
            g = _grads(loss_of(forward(model, leaves, piece), piece.targets), leaves, create_graph=True)
            z = sum((gi.detach() * gi).sum() for gi in g if gi.requires_grad)
            hg = (
                _grads(z, leaves)
                if isinstance(z, torch.Tensor) and z.requires_grad
                else [torch.zeros_like(w) for w in leaves.values()]
            )
        else:
            # Micro-batches, pairs or ranks: g must be the gradient of the whole loss (summed over every
            # micro-batch of every rank) before any H g is taken; H g is then a sum over micro-batches too.
            g_all = batches.sum_over_ranks(_summed_grads(model, leaves, batches, loss_of))
            hg = batches.sum_over_ranks(_summed_grads(model, leaves, batches, loss_of, hg_at=g_all))
    return leaves, hg


@register_method(
    "grasp",
    needs_data=True,
    prune_highest=True,
    family="init_data",
    year=2020,
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
    score_batch_size: int | None = None,
    distributed: bool = False,
) -> Scores:
    """GraSP: ``-w * (H g)`` with ``g = dL/dw`` and ``H`` the Hessian of ``L`` over the covered weights.

    Frankle et al. 2021, App. C.1, eq. (4): removing ``w_i`` changes the gradient norm by about
    ``-w_i (H g)_i``, and GraSP removes the weights with the *highest* scores (registered with
    ``prune_highest=True``; ``invert=True`` removes the lowest instead). ``H g`` comes from double
    back-propagation, never from an explicit Hessian. ``temperature``: the implementation of Wang et al. (2020)
    divides the logits by T = 200 before the loss (on by default, as in the replication of that code by
    Frankle et al. 2021, App. C.2); pass ``temperature=1`` (or ``None``) for the plain loss.
    """
    leaves, hg = _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train, score_batch_size, distributed)
    return Scores({n: h.mul_(w.detach()).neg_() for (n, w), h in zip(leaves.items(), hg)})


@register_method(
    "grasp_abs",
    needs_data=True,
    family="init_data",
    year=2021,
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
    score_batch_size: int | None = None,
    distributed: bool = False,
) -> Scores:
    """``|w * (H g)|``: the GraSP variant of Frankle et al. 2021 that prunes the lowest-magnitude GraSP scores
    (App. H, Figure 13; the improved GraSP of App. I)."""
    leaves, hg = _grasp_hg(model, mask, batch, temperature, loss_fn, batchnorm_train, score_batch_size, distributed)
    return Scores({n: h.mul_(w.detach()).abs_() for (n, w), h in zip(leaves.items(), hg)})
