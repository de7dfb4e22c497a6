"""SynFlow: data-free, iterative synaptic-flow scores (Tanaka et al. 2020; Frankle et al. 2021, App. D)."""

from __future__ import annotations

import torch
from torch import nn

from prunelab.batches import logits
from prunelab.mask_binding import unbound_copy
from prunelab.masks import Mask
from prunelab.scores.registry import Scores, register_method
from prunelab.tensors import fill_at
from prunelab.validate import check_input_shape


def _all_ones_lookup(self: nn.Embedding, x: torch.Tensor) -> torch.Tensor:
    """``nn.Embedding.forward`` of the SynFlow copy: SynFlow's all-ones input reaches a table as
    floats, i.e. every token at once (the one-hot code of all ones), whose embedding is the sum of
    the table's rows; integer indices made inside the network (positions) are looked up as usual."""
    if x.is_floating_point():
        return self.weight.sum(0).expand(*x.shape, self.embedding_dim)
    return nn.Embedding.forward(self, x)


def failing_module(net: nn.Module, x: torch.Tensor) -> str:
    """Run ``net(x)`` again with hooks that track the innermost module in progress; its name and type."""
    stack: list[str] = []
    handles = []
    for name, module in net.named_modules():
        label = f"{name or 'the model'} ({type(module).__name__})"
        handles.append(module.register_forward_pre_hook(lambda m, a, label=label: stack.append(label)))
        handles.append(module.register_forward_hook(lambda m, a, o: stack.pop()))
    try:
        with torch.no_grad():
            net(x)
    except Exception:  # noqa: BLE001 - the same failure again, now with the stack recorded
        pass
    finally:
        for h in handles:
            h.remove()
    return stack[-1] if stack else "the model"


class SynFlowScorer:
    """Scores one model repeatedly; made once per :func:`prunelab.prune` call.

    The float64 copy with absolute parameters is built once (Algorithm 1 of Tanaka et al. 2020 linearizes once,
    too); each call then only zeroes what is pruned and runs one forward and one backward pass at
    batch size 1. Masks handed to one scorer must only ever lose weights (prune never revives).
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        # A deep copy: the caller's weights, dtype, requires_grad, mode and BatchNorm statistics are
        # never touched, not even temporarily.
        net = unbound_copy(model)
        # Always float64: in float32 the activations overflow on deep networks (Frankle et al. 2021, App. D.2).
        net.double()
        # Eval mode: BatchNorm uses its (absolute) running statistics, not those of a batch of ones
        # (Tanaka et al. 2020, Algorithm 1 and its footnote on eval mode).
        net.eval()
        with torch.no_grad():
            # Every parameter and floating buffer by its absolute value (Tanaka et al. 2020, eq. (2): |theta|;
            # Frankle et al. 2021, App. D.1 step 1), BatchNorm's included.
            for t in net.state_dict(keep_vars=True).values():
                if t.is_floating_point():
                    t.abs_()
        for p in net.parameters():
            p.requires_grad_(False)
            p.grad = None
        for module in net.modules():
            if type(module) is nn.Embedding:
                module.forward = _all_ones_lookup.__get__(module)
        self.net = net
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        self.x = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
        self._params = dict(net.named_parameters())
        self._notified = False  # pruned() has been called: the copy follows every removal itself
        self._weights: dict[str, nn.Parameter] | None = None
        self._gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def pruned(self, name: str, index: torch.Tensor) -> None:
        """Zero the newly pruned entries ``index`` (flat indices or a flat bool mask) of ``name``."""
        p = self._params[name]
        with torch.no_grad():
            fill_at(p.view(-1), index.to(p.device), 0.0)
        self._notified = True

    def _sync(self, mask: Mask) -> dict[str, nn.Parameter]:
        if self._weights is None or list(self._weights) != list(mask):
            self._weights = mask.check_compatible(self.net)
        weights = self._weights
        if self._notified:
            # prune() reports every removal through pruned(): the copy is already in sync.
            return weights
        with torch.no_grad():  # called without pruned(): zero what the mask prunes (idempotent)
            for n, w in weights.items():
                keep = mask[n]
                if not bool(keep.all()):
                    w.masked_fill_(~keep.to(w.device), 0.0)
        return weights

    def _grads(self, weights: dict[str, nn.Parameter]) -> list[torch.Tensor | None]:
        ws = list(weights.values())
        for w in ws:
            w.requires_grad_(True)
        try:
            try:
                # R = 1^T (prod_l |theta^[l]|) 1, Tanaka et al. 2020, eq. (2), over the logits of what the model returns
                r = logits(self.net(self.x)).sum()
            except (RuntimeError, IndexError, TypeError, AttributeError, ValueError) as e:
                where = failing_module(self.net, self.x)
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(
                    f"synflow feeds an all-ones float64 input of shape {tuple(self.x.shape)} and {where} cannot "
                    f"take it ({reason}); SynFlow needs a network whose first input is a tensor of numbers (token ids "
                    "work through nn.Embedding: input_shape=(sequence length,)) and whose output holds logits; "
                    "score this model with a data-driven criterion (snip, grasp) or a data-free one that runs no "
                    "forward pass (magnitude, random)"
                ) from e
            if not bool(torch.isfinite(r)):
                # Each score is at most R (conservation, Tanaka et al. 2020, Theorem 2): R finite, scores finite.
                raise ValueError(
                    f"SynFlow's R = sum of outputs is {float(r)} even in float64; the network's path norm "
                    "overflows (is it very deep or its initialization very large?)"
                )
            grads = torch.autograd.grad(r, ws, allow_unused=True)
            # A table read as a sum of its rows gets an expanded (stride-0) gradient: make it writable.
            return [g if g is None or g.is_contiguous() else g.contiguous() for g in grads]
        finally:
            for w in ws:
                w.requires_grad_(False)

    def __call__(self, mask: Mask) -> Scores:
        weights = self._sync(mask)
        scores = Scores()
        for (n, w), g in zip(weights.items(), self._grads(weights)):
            # |dR/dw * w| (Tanaka et al. 2020, §6; Frankle et al. 2021, App. D.1 step 5), in place on the gradient.
            scores[n] = torch.zeros_like(w) if g is None else g.mul_(w).abs_()
        return scores

    def score_flat(self, mask: Mask, index: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Flat scores, only at ``index[name]`` (flat indices) where given: what the iterative remover
        ranks once a layer is sparse, without multiplying the pruned majority."""
        weights = self._sync(mask)
        out = {}
        for (n, w), g in zip(weights.items(), self._grads(weights)):
            if g is None:
                g = torch.zeros_like(w)
            i = index.get(n)
            if i is None:
                out[n] = g.mul_(w).abs_().view(-1)
                continue
            cached = self._gathered.get(n)
            if cached is None or cached[0] is not i:
                # Weights at the slots, gathered once per new index. Slots pruned since then keep
                # their old weight here, but the remover ignores dead slots, so that is harmless.
                cached = (i, w.detach().view(-1).index_select(0, i.to(w.device)))
                self._gathered[n] = cached
            out[n] = g.view(-1).index_select(0, i.to(w.device)).mul_(cached[1]).abs_()
        return out


def _prepare(model, batch=None, *, input_shape=None) -> SynFlowScorer:
    return SynFlowScorer(model, check_input_shape(input_shape, "synflow"))


@register_method(
    "synflow",
    needs_data=False,
    needs_input_shape=True,
    default_iterations=100,
    family="init_data_free",
    year=2020,
    description="|dR/dw * w| for R = sum of outputs of the float64 |w| network on ones (Tanaka et al. 2020)",
    prepare=_prepare,
)
def synflow(model, mask, batch=None, *, input_shape=None) -> Scores:
    """Synaptic flow ``|dR/dw * w|`` (Tanaka et al. 2020, §6, eq. (2)-(3), Algorithm 1).

    On a float64 copy of ``model`` in eval mode whose every parameter and BatchNorm buffer is replaced
    by its absolute value, ``R`` is the sum of the outputs for an all-ones input of shape
    ``(1, *input_shape)``. No data: ``batch`` is ignored. Pruned with the lowest scores removed, over
    100 iterations by default (the iteration is what avoids layer collapse, Tanaka et al. 2020, Theorem 3).
    """
    return _prepare(model, batch, input_shape=input_shape)(mask)
