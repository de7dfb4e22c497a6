"""One way in for batches and model outputs: every criterion, :class:`~prunelab.MaskUpdates`, the trainer
and micro-batching go through this module.

A :class:`Batch` is what one forward pass needs: the model's positional inputs, its keyword inputs and
the targets of the loss. This module says, in one place, how a batch is

* read from what a user passes (:func:`as_batches`: ``(inputs, targets)`` or a list of such pairs),
* counted (``len(batch)``: its examples), cut into micro-batches (:meth:`Batch.split`,
  :meth:`Batch.tensor_split`) and moved (:meth:`Batch.to`, floating inputs in the model's dtype),
* fed to the model (:meth:`Batch.forward`), also with other tensors in place of the model's own through
  ``torch.func.functional_call`` (how the criteria score without touching the model),

and how what the model returns becomes logits (:func:`logits`) and a loss (:func:`loss`). The default
is the papers' setting: one input tensor, class targets, and mean cross-entropy (Lee et al. 2019, §4;
Wang et al. 2020, §5; Tanaka et al. 2020, §6; Frankle et al. 2021, App. B); ``loss_fn(output, targets)``
replaces the loss everywhere it is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["Batch", "as_batches", "default_loss", "logits", "loss", "model_device", "model_dtype", "resolve_loss"]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]


def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``fn`` applied to every tensor of ``obj`` (tensors inside tuples, lists and dicts included)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(o, fn) for o in obj)
    if isinstance(obj, Mapping):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, Mapping):
        for o in obj.values():
            yield from _tensors(o)


@dataclass(frozen=True)
class Batch:
    """The inputs of one forward pass (``model(*inputs, **kwargs)``) and the targets of its loss.

    Every tensor of ``inputs`` and ``kwargs`` holds one row per example along its first dimension, as do
    ``targets``; that is how a batch is counted and cut into micro-batches.
    """

    inputs: tuple[Any, ...]
    targets: torch.Tensor | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def pair(cls, x: torch.Tensor, y: torch.Tensor | None) -> Batch:
        """The papers' batch: one input tensor ``x`` and its targets ``y``."""
        return cls((x,), y)

    def __len__(self) -> int:
        """The number of examples: the length of the targets, else of the first input tensor."""
        if self.targets is not None:
            return len(self.targets)
        first = next(self._all_tensors(), None)
        return 0 if first is None or first.dim() == 0 else len(first)

    def _all_tensors(self) -> Iterator[torch.Tensor]:
        yield from _tensors(self.inputs)
        yield from _tensors(dict(self.kwargs))

    def _rebuild(self, fn: Callable[[torch.Tensor], Any], targets: Any) -> Batch:
        return Batch(_map(self.inputs, fn), targets, _map(dict(self.kwargs), fn))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Every tensor on ``device``; floating inputs also in ``dtype`` (the model's), targets as they are."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, dtype) if (dtype is not None and t.is_floating_point()) else t.to(device)

        return self._rebuild(move, None if self.targets is None else self.targets.to(device))

    def to_model(self, model: nn.Module) -> Batch:
        """:meth:`to` the device and floating dtype of ``model``'s parameters."""
        return self.to(model_device(model), model_dtype(model))

    def split(self, size: int) -> list[Batch]:
        """Consecutive micro-batches of at most ``size`` examples (views, not copies)."""
        return self._pieces(lambda t: t.split(size))

    def tensor_split(self, parts: int) -> list[Batch]:
        """``parts`` micro-batches as equal as can be (``torch.tensor_split``); empty ones dropped."""
        return [b for b in self._pieces(lambda t: t.tensor_split(parts)) if len(b)]

    def _pieces(self, cut: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> list[Batch]:
        n = len(self)
        count = len(cut(torch.empty(n, device="meta")))
        cuts: dict[int, Sequence[torch.Tensor]] = {}

        def piece(t: torch.Tensor, i: int) -> torch.Tensor:
            if t.dim() == 0 or len(t) != n:
                return t  # not per example (a mask shared by every example): every piece gets it whole
            if id(t) not in cuts:
                cuts[id(t)] = cut(t)
            return cuts[id(t)][i]

        return [self._rebuild(lambda t, i=i: piece(t, i), None if self.targets is None else piece(self.targets, i))
                for i in range(count)]

    def forward(self, model: nn.Module, tensors: Mapping[str, torch.Tensor] | None = None,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Any:
        """``model(*inputs, **kwargs)``; with ``tensors``, through ``torch.func.functional_call`` with
        those in place of the model's parameters and buffers of the same names (the others are the
        model's own). ``prepare`` transforms each input tensor first (e.g. a memory format)."""
        args = self.inputs if prepare is None else _map(self.inputs, prepare)
        kwargs = {} if not self.kwargs else (dict(self.kwargs) if prepare is None else _map(dict(self.kwargs), prepare))
        if tensors is None:
            return model(*args, **kwargs)
        return functional_call(model, dict(tensors), tuple(args), kwargs, strict=False)


def _is_pair(obj: Any) -> bool:
    return (isinstance(obj, Sequence) and not isinstance(obj, str) and len(obj) == 2
            and all(isinstance(t, torch.Tensor) for t in obj))


def as_batches(batch: Any, name: str) -> list[Batch]:
    """What a user passes as data, as a list of :class:`Batch`: a :class:`Batch`, an ``(inputs, targets)``
    pair of tensors, or a non-empty list of either. ``name`` (the criterion) starts the error messages."""
    hint = (
        f"{name} needs data: pass batch=(inputs, targets), e.g. ten examples per class (Frankle et al. "
        "2021, App. B.2), or a list of such pairs"
    )
    if batch is None:
        raise ValueError(hint)
    if isinstance(batch, Batch):
        out = [batch]
    elif _is_pair(batch):
        out = [Batch.pair(*batch)]
    elif (isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) > 0
          and all(isinstance(b, Batch) or _is_pair(b) for b in batch)):
        out = [b if isinstance(b, Batch) else Batch.pair(*b) for b in batch]
    else:
        raise ValueError(f"{hint}; got {type(batch).__name__}")
    for b in out:
        first = next(b._all_tensors(), None)
        n_in = 0 if first is None or first.dim() == 0 else len(first)
        if b.targets is not None and (n_in != len(b.targets) or n_in == 0):
            raise ValueError(
                f"{name}: a batch needs as many targets as inputs (at least one); got {n_in} inputs "
                f"and {len(b.targets)} targets"
            )
    return out


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives: its first parameter's device (else its first buffer's, else the CPU)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (inputs are cast to it), or None."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def logits(output: Any) -> torch.Tensor:
    """The logits in what a model returned: the output itself when it is a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    raise ValueError(
        f"the model returned a {type(output).__name__}, not a tensor of logits; pass loss_fn(output, targets) "
        "that computes the loss from what your model returns"
    )


def default_loss(output: Any, targets: torch.Tensor, reduction: str = "mean",
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """Cross-entropy: the classification loss of every paper prunelab implements (docs/references.md).

    ``dtype``: the logits are cast to it first (training computes its loss in float32 whatever precision
    the forward pass ran in); None uses them as they are (the criteria, in the model's own precision).
    """
    out = logits(output)
    if dtype is not None and out.dtype != dtype:
        out = out.to(dtype)
    return F.cross_entropy(out, targets, reduction=reduction)


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    """``loss_fn``, or :func:`default_loss` when it is None; ValueError when it is not callable."""
    if loss_fn is None:
        return default_loss
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (output, targets) -> scalar, got {type(loss_fn).__name__}")
    return loss_fn


def loss(output: Any, batch: Batch, loss_fn: LossFn | None = None) -> torch.Tensor:
    """The loss of ``output`` on ``batch``'s targets: ``loss_fn(output, targets)``, mean cross-entropy by default."""
    return resolve_loss(loss_fn)(output, batch.targets)
