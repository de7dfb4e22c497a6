"""Helpers shared by the criteria: batches, masked leaf weights, BatchNorm mode, side-effect-free forward.

Data-driven criteria score a network *as the papers do* but must leave the caller's model exactly as
it was: same weights, same ``requires_grad``, same train/eval flags, same BatchNorm running
statistics. :func:`forward` achieves this without copying the model: it runs the model through
``torch.func.functional_call`` with (a) masked, detached leaf copies of the covered weights, whose
gradients are what we want, and (b) clones of every buffer, so a train-mode BatchNorm updates the
clones and not the model's running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from prunelab.masks import Mask

Batch = tuple[torch.Tensor, torch.Tensor]


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def split_batches(batch, name: str) -> list[Batch]:
    """``(inputs, targets)`` or a sequence of such pairs -> list of pairs; ValueError otherwise."""
    hint = (
        f"{name} needs data: pass batch=(inputs, targets), e.g. ten examples per class (Frankle et al. "
        "2021, App. B.2), or a list of such pairs"
    )
    if batch is None:
        raise ValueError(hint)
    if isinstance(batch, Sequence) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        pairs = [tuple(batch)]
    elif (
        isinstance(batch, Sequence)
        and len(batch) > 0
        and all(isinstance(b, Sequence) and len(b) == 2 and all(isinstance(t, torch.Tensor) for t in b) for b in batch)
    ):
        pairs = [tuple(b) for b in batch]
    else:
        raise ValueError(f"{hint}; got {type(batch).__name__}")
    for x, y in pairs:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(
                f"{name}: a batch needs as many targets as inputs (at least one); got {len(x)} inputs "
                f"and {len(y)} targets"
            )
    return pairs


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


def forward(model: nn.Module, leaves: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with ``leaves`` in place of the covered weights and cloned buffers.

    Buffers are cloned so that a train-mode BatchNorm updates the clones: the caller's running
    statistics (and ``num_batches_tracked``) are left untouched.
    """
    tensors = {name: b.clone() for name, b in model.named_buffers()}
    tensors.update(leaves)
    return functional_call(model, tensors, (x,), strict=False)


def default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy: the classification loss of every paper prunelab implements (docs/references.md)."""
    return F.cross_entropy(output, target)


def resolve_loss(loss_fn: Callable | None) -> Callable:
    if loss_fn is None:
        return default_loss
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (output, target) -> scalar, got {type(loss_fn).__name__}")
    return loss_fn


def fill_at(t: torch.Tensor, index: torch.Tensor, value) -> None:
    """``t[index] = value`` for a flat contiguous ``t`` and int64 or bool ``index``.

    On CPU through numpy: torch's CPU ``index_put_`` costs about 100x more here (12 ms for 47k
    indices into 2.4M entries), which would dominate SynFlow's iterations.
    """
    if t.device.type == "cpu" and index.device.type == "cpu" and t.is_contiguous():
        t.detach().numpy()[index.numpy()] = value
    else:
        t[index] = value
