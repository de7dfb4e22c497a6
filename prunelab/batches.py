"""One way in for batches and model outputs: every criterion, :class:`~prunelab.MaskUpdates`, the trainer
and micro-batching go through this module.

A :class:`Batch` is what one forward pass needs: the model's positional inputs, its keyword inputs and
the targets of the loss. This module says, in one place, how a batch is

* read from what a user passes (:func:`as_batches`): ``(inputs, targets)`` where ``inputs`` is a tensor, a
  tuple or list (positional arguments) or a mapping (keyword arguments); a mapping alone, Hugging Face
  style, called as ``model(**batch)`` (its ``labels`` are the targets); a :class:`Batch`; or a list of these,
* counted (``len(batch)``: its examples), cut into micro-batches (:meth:`Batch.split`,
  :meth:`Batch.tensor_split`) and moved (:meth:`Batch.to`, floating inputs in the model's dtype),
* fed to the model (:meth:`Batch.forward`), also with other tensors in place of the model's own through
  ``torch.func.functional_call`` (how the criteria score without touching the model), or through a
  user's ``forward_fn(model, *inputs, **kwargs)`` when calling the model is not enough,

and how what the model returns becomes logits (:func:`logits`: a tensor, the first element of a tuple,
or the ``logits`` of an object such as a Hugging Face ``ModelOutput``) and a loss (:func:`default_loss`:
the model's own ``loss`` when it computed one, else cross-entropy, over every token when the targets are
token-level, skipping the targets -100 as ``transformers`` does). Cross-entropy is the papers' loss (Lee et
al. 2019, §4; Wang et al. 2020, §5; Tanaka et al. 2020, §6; Frankle et al. 2021, App. B);
``loss_fn(output, targets)`` replaces it everywhere it is accepted.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["Batch", "as_batches", "default_loss", "logits", "loss", "model_device", "model_dtype", "model_loss",
           "replace_logits", "resolve_loss", "with_forward"]

IGNORE_INDEX = -100  # targets skipped by the loss, as in transformers (and torch's cross_entropy default)

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

    A tensor of ``inputs`` and ``kwargs`` whose first dimension is the batch's length holds one row per
    example, as do ``targets``: those are cut when the batch is split into micro-batches; any other
    tensor (a mask shared by every example) goes whole to every piece. ``targets`` may be None when the
    model computes its own loss (a Hugging Face model given ``labels``). ``forward_fn``, when given, is
    called as ``forward_fn(model, *inputs, **kwargs)`` instead of ``model(*inputs, **kwargs)``.
    """

    inputs: tuple[Any, ...]
    targets: torch.Tensor | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    forward_fn: Callable[..., Any] | None = None

    @classmethod
    def pair(cls, x: torch.Tensor, y: torch.Tensor | None) -> Batch:
        """The papers' batch: one input tensor ``x`` and its targets ``y``."""
        return cls((x,), y)

    def __len__(self) -> int:
        """The number of examples: the length of the targets, else of the first input tensor."""
        return len(self.targets) if self.targets is not None else self._inputs_len()

    def _inputs_len(self) -> int:
        """The length of the first input tensor (0 without one)."""
        first = next(self._all_tensors(), None)
        return 0 if first is None or first.dim() == 0 else len(first)

    def _all_tensors(self) -> Iterator[torch.Tensor]:
        yield from _tensors(self.inputs)
        yield from _tensors(dict(self.kwargs))

    def _rebuild(self, fn: Callable[[torch.Tensor], Any], targets: Any) -> Batch:
        return Batch(_map(self.inputs, fn), targets, _map(dict(self.kwargs), fn), self.forward_fn)

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
        if self.forward_fn is None:
            if tensors is None:
                return model(*args, **kwargs)
            return functional_call(model, dict(tensors), tuple(args), kwargs, strict=False)
        if tensors is None:
            return self.forward_fn(model, *args, **kwargs)
        # functional_call swaps the tensors of the module it calls: a holder of the model whose forward is the
        # user's function, the tensors' names prefixed with the holder's attribute
        holder = _ForwardFn(model, self.forward_fn)
        return functional_call(holder, {f"model.{k}": v for k, v in tensors.items()}, tuple(args), kwargs,
                               strict=False)


class _ForwardFn(nn.Module):
    """``forward_fn(model, *args, **kwargs)`` as a module holding ``model``, for ``functional_call``."""

    def __init__(self, model: nn.Module, forward_fn: Callable[..., Any]):
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, *args, **kwargs):
        return self.forward_fn(self.model, *args, **kwargs)


def _is_sequence(obj: Any) -> bool:
    return isinstance(obj, Sequence) and not isinstance(obj, (str, bytes))


def _inputs_of(obj: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """(positional, keyword) inputs from a tensor, a tuple/list of them or a mapping; None otherwise."""
    if isinstance(obj, torch.Tensor):
        return (obj,), {}
    if isinstance(obj, Mapping) and obj and all(isinstance(k, str) for k in obj):
        return (), dict(obj)
    if _is_sequence(obj) and obj and any(isinstance(t, torch.Tensor) for t in _tensors(obj)):
        return tuple(obj), {}
    return None


def _one(obj: Any) -> Batch | None:
    """``obj`` as one batch, or None when it is not one (it may be a list of batches)."""
    if isinstance(obj, Batch):
        return obj
    if isinstance(obj, Mapping):  # Hugging Face style: model(**batch), its labels the targets
        found = _inputs_of(obj)
        if found is None:
            return None
        labels = obj.get("labels")
        return Batch((), labels if isinstance(labels, torch.Tensor) else None, found[1])
    if _is_sequence(obj) and len(obj) == 2 and isinstance(obj[1], torch.Tensor):
        found = _inputs_of(obj[0])
        if found is not None:
            return Batch(found[0], obj[1], found[1])
    return None


def as_batches(batch: Any, name: str) -> list[Batch]:
    """What a user passes as data, as a list of :class:`Batch`: ``(inputs, targets)`` with ``inputs`` a tensor,
    a tuple/list (positional arguments) or a mapping (keyword arguments); a mapping alone (``model(**batch)``,
    Hugging Face style, its ``labels`` the targets); a :class:`Batch`; or a non-empty list of these.
    ``name`` (the criterion) starts the error messages."""
    hint = (
        f"{name} needs data: pass batch=(inputs, targets), e.g. ten examples per class (Frankle et al. "
        "2021, App. B.2), a mapping of the model's keyword inputs such as {'input_ids': ..., 'labels': ...}, "
        "or a list of these"
    )
    if batch is None:
        raise ValueError(hint)
    single = _one(batch)
    if single is not None:
        out = [single]
    else:
        out = [_one(b) for b in batch] if _is_sequence(batch) and len(batch) > 0 else [None]
        if any(b is None for b in out):
            raise ValueError(f"{hint}; got {type(batch).__name__}")
    for b in out:
        n_in = b._inputs_len()
        if b.targets is not None and (n_in != len(b.targets) or n_in == 0):
            raise ValueError(
                f"{name}: a batch needs as many targets as inputs (at least one); got {n_in} inputs "
                f"and {len(b.targets)} targets"
            )
        if n_in == 0:
            raise ValueError(f"{name}: a batch needs at least one example; its first input has none")
    return out


def with_forward(batch: Any, forward_fn: Callable[..., Any] | None, name: str) -> Any:
    """``batch`` with ``forward_fn(model, *inputs, **kwargs)`` called in place of the model (None: as it is)."""
    if forward_fn is None or batch is None:
        return batch
    if not callable(forward_fn):
        raise ValueError(f"forward_fn must be callable (model, *inputs, **kwargs) -> output, got "
                         f"{type(forward_fn).__name__}")
    return [dataclasses.replace(b, forward_fn=forward_fn) for b in as_batches(batch, name)]


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
    """The logits in what a model returned: a tensor itself, the ``logits`` of an object or mapping (a Hugging
    Face ``ModelOutput``), or the first element of a tuple or list."""
    if isinstance(output, torch.Tensor):
        return output
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if _is_sequence(output) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(
        f"the model returned a {type(output).__name__}, in which prunelab finds no logits (a tensor, .logits, or "
        "the first element of a tuple); pass loss_fn(output, targets) that computes the loss from it"
    )


def model_loss(output: Any) -> torch.Tensor | None:
    """The loss the model computed itself (a Hugging Face model given ``labels``), or None."""
    found = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    return found if isinstance(found, torch.Tensor) else None


def replace_logits(output: Any, new: torch.Tensor) -> Any:
    """``output`` with ``new`` in place of its logits and without a loss of the model's (which was computed
    from the old logits): GraSP's temperature divides the logits whatever carries them."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, Mapping) or hasattr(output, "logits"):
        out = copy.copy(output)
        if isinstance(out, Mapping) and not hasattr(out, "logits"):
            out = {**out, "logits": new}
            out.pop("loss", None)
            return out
        out.logits = new
        if getattr(out, "loss", None) is not None:
            out.loss = None
        return out
    if _is_sequence(output) and output and isinstance(output[0], torch.Tensor):
        return type(output)([new, *output[1:]])
    logits(output)  # raises the one-line error
    return output


def default_loss(output: Any, targets: torch.Tensor | None, reduction: str = "mean",
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    """The model's own loss when it computed one (a Hugging Face model given ``labels``: its loss, with the
    shift of a causal LM), else the cross-entropy of its logits: the classification loss of every paper
    prunelab implements (docs/references.md). Token-level targets (logits ``(..., T, C)`` for targets
    ``(..., T)``) are scored token by token; targets of -100 are skipped, as in ``transformers``.

    ``dtype``: the logits are cast to it first (training computes its loss in float32 whatever precision
    the forward pass ran in); None uses them as they are (the criteria, in the model's own precision).
    """
    own = model_loss(output)
    if own is not None and reduction == "mean":
        return own if dtype is None else own.to(dtype)
    if targets is None:
        raise ValueError("the batch has no targets and the model computed no loss: pass (inputs, targets), "
                         "labels in a mapping batch, or loss_fn(output, targets)")
    out = logits(output)
    if dtype is not None and out.dtype != dtype:
        out = out.to(dtype)
    classes_second = tuple(targets.shape) == (out.shape[0], *out.shape[2:])  # torch's layout: (N, C, d1, ...)
    if out.dim() > 2 and not classes_second and tuple(targets.shape) == tuple(out.shape[:-1]):
        out, targets = out.reshape(-1, out.shape[-1]), targets.reshape(-1)  # one class per token, classes last
    return F.cross_entropy(out, targets, reduction=reduction, ignore_index=IGNORE_INDEX)


def resolve_loss(loss_fn: LossFn | None) -> LossFn:
    """``loss_fn``, or :func:`default_loss` when it is None; ValueError when it is not callable."""
    if loss_fn is None:
        return default_loss
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable (output, targets) -> scalar, got {type(loss_fn).__name__}")
    return loss_fn


def loss(output: Any, batch: Batch, loss_fn: LossFn | None = None) -> torch.Tensor:
    """The loss of ``output`` on ``batch``'s targets: ``loss_fn(output, targets)``, :func:`default_loss` by default."""
    return resolve_loss(loss_fn)(output, batch.targets)
