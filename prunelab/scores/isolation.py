"""Scoring a network without touching it: masked leaf weights, cloned buffers, BatchNorm mode.

Data-driven criteria score a network *as the papers do* but must leave the caller's model exactly as
it was: same weights, same ``requires_grad``, same train/eval flags, same BatchNorm running
statistics. :func:`forward` achieves this without copying the model: it runs the model through
``torch.func.functional_call`` (:meth:`prunelab.batches.Batch.forward`) with (a) masked, detached leaf
copies of the covered weights, whose gradients are what we want, and (b) clones of every buffer, so a
train-mode BatchNorm updates the clones and not the model's running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelab.batches import Batch
from prunelab.masks import Mask

__all__ = ["batchnorm_train_mode", "eval_mode", "forward", "masked_leaves", "math_attention", "twice_differentiable"]


@contextlib.contextmanager
def batchnorm_train_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put BatchNorm layers in train mode (batch statistics) and restore every module's flag after.

    SNIP and GraSP score a freshly initialized network whose running statistics are meaningless, so
    the papers' implementations normalize with the statistics of the scoring batch (train mode).
    Only BatchNorm layers are switched: dropout and the like keep the mode the caller chose.
    """
    if not enabled:
        yield
        return
    saved = [(m, m.training) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _ in saved:
            m.train(True)
        yield
    finally:
        for m, flag in saved:
            m.train(flag)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block; each module's own flag restored after (dropout off and
    BatchNorm on its running statistics: NTK-SAP's and PX's forward passes, Wang et al. 2023, Iurada et al. 2024)."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in saved:
            m.train(flag)


def math_attention() -> contextlib.AbstractContextManager:
    """Scaled dot-product attention by its plain math implementation for the block's duration.

    The fused kernels (flash attention, memory-efficient attention) have no double backward, which
    GraSP's Hessian-gradient product needs (Wang et al. 2020, §4); the math kernel is ordinary
    autograd. ``torch.nn.attention.sdpa_kernel`` exists from torch 2.3; older releases have no CPU
    fused kernel to avoid.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _hardsigmoid(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:  # noqa: A002 - torch's name
    """``relu6(x + 3) / 6``, the definition of ``F.hardsigmoid``, in ops that have second derivatives."""
    return F.relu6(input + 3.0) / 6.0


# torch functions without a double backward -> the same function in ops that have one
_TWICE_DIFFERENTIABLE: dict[Callable, Callable] = {F.hardsigmoid: _hardsigmoid}


class _TwiceDifferentiable(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return _TWICE_DIFFERENTIABLE.get(func, func)(*args, **(kwargs or {}))


def twice_differentiable() -> contextlib.AbstractContextManager:
    """Functions torch cannot differentiate twice, replaced by equal ones it can, for the block's duration.

    GraSP's Hessian-gradient product (Wang et al. 2020, §4) back-propagates through the backward pass;
    ``F.hardsigmoid`` (``nn.Hardsigmoid``, the gates of MobileNetV3's squeeze-and-excitation) has no
    derivative of its backward in torch and is computed as ``relu6(x + 3) / 6``, its definition. Any other
    function without one stops GraSP with a ``ValueError`` naming it (see :mod:`prunelab.scores.gradient`).
    """
    return _TwiceDifferentiable()


def masked_leaves(params: Mapping[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """Detached copies ``w * m`` of the covered weights that require grad (the caller's stay intact)."""
    leaves = {}
    for name, p in params.items():
        keep = mask[name]
        w = p.detach()
        if not bool(keep.all()):
            w = w * keep.to(w.device)
        leaves[name] = w.requires_grad_(True)  # a new leaf: p itself keeps its requires_grad
    return leaves


def forward(model: nn.Module, leaves: Mapping[str, torch.Tensor], batch: Batch) -> Any:
    """The model's output on ``batch`` with ``leaves`` in place of the covered weights and cloned buffers.

    Buffers are cloned so that a train-mode BatchNorm updates the clones: the caller's running
    statistics (and ``num_batches_tracked``) are left untouched.
    """
    tensors = {name: b.clone() for name, b in model.named_buffers()}
    tensors.update(leaves)
    return batch.forward(model, tensors)
