"""Memory-bounded scoring: a scoring batch as micro-batches, shared out across the ranks of a DDP job.

SNIP and GraSP score a batch of ten examples per class (Frankle et al. 2021, App. B.2): 10,000 images
on ImageNet, too many for one forward pass through ResNet-50, let alone GraSP's double backward. Their
scores are linear in the loss, and a mean loss over ``N`` examples is the sum over micro-batches of
``mean_i * n_i / N``, so the gradient (and GraSP's Hessian-gradient product, taken with the gradient of
the *whole* batch held fixed) is a sum of per-micro-batch terms: computed a micro-batch at a time, and
on several ranks with one all-reduce, it is the one-pass score up to rounding.

One exception, and the reason for :class:`MicroBatchWarning`: BatchNorm in train mode (which the
scorers use, as the papers do at initialization) normalizes each micro-batch with its own statistics,
so on a network with BatchNorm the micro-batched score differs slightly from the one-pass score, as
it does between single-GPU and DDP training. The original GraSP code scores in two halves this way
(Wang et al. 2020, released implementation).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from prunelab.batches import Batch, as_batches


class MicroBatchWarning(UserWarning):
    """Train-mode BatchNorm normalizes each micro-batch alone: the score is not exactly the one-pass score."""


def check_score_batch_size(value) -> int | None:
    """``None`` (one pass) or a positive int; ValueError naming what would be right otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"score_batch_size must be a positive number of examples per forward pass (or None for "
                         f"one pass over the whole batch), got {value!r}")
    return value


def _distributed_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class ScoreBatches:
    """The micro-batches this rank scores, the number of examples ``total`` over all ranks, and the
    reduction that sums a per-rank result over the ranks."""

    local: list[Batch]
    total: int
    world_size: int = 1
    split: bool = False  # some batch is scored in more than one piece

    def weight(self, batch: Batch) -> float:
        """The factor ``n_i / N`` that turns the mean loss of a micro-batch into its share of the whole mean."""
        return len(batch) / self.total

    def sum_over_ranks(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` summed over the ranks, in place, with one all-reduce of their concatenation."""
        tensors = list(tensors)
        if self.world_size == 1 or not tensors:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))
        return tensors

    @property
    def one_pass(self) -> bool:
        """One forward pass over everything: no micro-batches and no other rank."""
        return self.world_size == 1 and len(self.local) == 1


def score_batches(batch, name: str, score_batch_size: int | None = None, distributed: bool = False) -> ScoreBatches:
    """The micro-batches of ``batch`` (anything :func:`prunelab.batches.as_batches` reads) for this rank.

    Each batch is cut into pieces of at most ``score_batch_size`` examples (``None``: whole). With
    ``distributed=True`` (every rank of the default process group calls this with the same batch), the
    pieces are dealt out round-robin over the ranks; with ``score_batch_size=None`` each batch is then cut
    into one piece per rank. Pieces are views: each is moved to the model's device only when scored.
    """
    size = check_score_batch_size(score_batch_size)
    whole = as_batches(batch, name)
    rank, world = _distributed_world() if distributed else (0, 1)
    pieces: list[Batch] = []
    split = False
    for b in whole:
        if size is not None:
            chunks = b.split(size)
        elif world > 1:
            chunks = b.tensor_split(world)
        else:
            chunks = [b]
        split = split or len(chunks) > 1
        pieces.extend(chunks)
    total = sum(len(b) for b in whole)
    return ScoreBatches(local=pieces[rank::world], total=total, world_size=world, split=split)


def warn_if_batchnorm_split(model: nn.Module, batches: ScoreBatches, name: str, batchnorm_train: bool) -> None:
    """Say once when train-mode BatchNorm makes the micro-batched score differ from the one-pass score."""
    if not batches.split:
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not any(batchnorm_train or m.training or m.running_mean is None for m in bns):
        return
    if _distributed_world()[0] != 0:
        return
    warnings.warn(
        f"{name}: BatchNorm in train mode normalizes each micro-batch with its own statistics, so the score "
        f"over {batches.total} examples in micro-batches differs slightly from the one-pass score (exact for "
        "networks without BatchNorm, or with BatchNorm in eval mode and batchnorm_train=False)",
        MicroBatchWarning,
        stacklevel=4,
    )
