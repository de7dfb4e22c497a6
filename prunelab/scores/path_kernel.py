"""PX (Path eXclusion): keep the weights that carry most of a path-kernel bound on the NTK trace
(Iurada et al. 2024).

A ReLU network is a sum over its input-to-output paths ``p`` (Iurada et al. 2024, §3, after the path
decomposition of the NTK): ``f_k(x) = Σ_{p → k} v_p(θ) · a_p(x) · x_{i(p)}``, where ``v_p = Π_{θ ∈ p} θ`` is the
path's value (data-independent), ``a_p(x) ∈ {0, 1}`` says whether every ReLU on the path is active for ``x``
and ``x_{i(p)}`` is the input the path starts from. The trace of the NTK splits accordingly into a
data-dependent factor, through the activation patterns, and a data-independent one, through the squared
weights; PX scores each weight by its share of the product of the two (§3, the PX saliency)::

    R(θ) = Σ_x Σ_k  z1_k(x) · z2_k(θ²),   z1_k(x) = Σ_{p → k} a_p(x) · x_{i(p)}²,   z2_k = Σ_{p → k} Π_{θ ∈ p} θ²

    S(θ_j) = θ_j² · ∂R/∂(θ_j²)  =  Σ_x Σ_k z1_k(x) · Σ_{p ∋ j, p → k} Π_{θ ∈ p} θ²    (≥ 0)

Both factors are forward passes of copies of the masked network, as in the authors' code
(github.com/iurada/px-ntk-pruning, ``lib/pruners.py``, two network copies as in Fig. 1 of the paper):
``z1`` is the network with every weight and bias set to 1 (pruned weights 0) run on ``x²`` with each ReLU
replaced by multiplication with its activation pattern recorded on the real network and batch; ``z2`` is
the network with every weight and bias squared run on an all-ones input with the ReLUs removed (a linear
network). The derivative is one backward pass through ``z2``. PX is iterated, 100 rounds with the
exponential schedule by default (the authors' CIFAR-10 script), which the paper credits with avoiding layer
collapse, as for SynFlow.

Normalization layers, our choice, following the path decomposition (a norm layer is no connection): in ``z1``
(the count of active paths) every normalization layer (BatchNorm, LayerNorm, GroupNorm, ...) is the identity,
passing its input through unchanged, so its scale, shift and statistics never scale or shift the path counts;
in ``z2`` its parameters and running statistics are squared with every other tensor, so an eval-mode BatchNorm
multiplies a channel by ``γ² / √(σ⁴ + ε) ≈ (γ / σ)²``: the square of the scale it contributes to every path
through that channel, once folded into the path values. All three passes (the activation patterns, ``z1``
and ``z2``) run with every module in eval mode.

This is not what the authors' code does (github.com/iurada/px-ntk-pruning, ``lib/pruners.py``): it runs its
``z1``/``z2`` copies in train mode, so their BatchNorms normalize with the statistics of the batch passing
through them, and it leaves untouched every tensor whose name contains ``bn`` or ``fc`` (in their models, the
BatchNorms and the output layer: they keep their values in both copies instead of being set to 1 or squared).
Here the output layer is treated as every other layer, as in the path decomposition.

Other choices where the paper leaves the model open: a bias counts as a weight from a constant input 1 (set to 1
in ``z1``, squared in ``z2``). Leaky ReLU gates are their slopes (squared in ``z1``, as the squared Jacobian of
the trace needs). Functions without a path decomposition (GELU, SiLU, tanh, sigmoid, ...) are refused with a
``ValueError``; pooling layers act as they are (the code does the same). ``z1`` and ``z2`` are computed in
float64: products of squared weights under- or overflow in float32 on deep networks, as SynFlow's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from prunelab.batches import as_batches, logits, model_device, model_dtype
from prunelab.layer_rules import layer_rule, parameter_owners
from prunelab.masks import Mask
from prunelab.scores.batching import score_batches
from prunelab.scores.isolation import eval_mode, masked_leaves
from prunelab.scores.registry import Scores, register_method

_RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}
_LEAKY = {F.leaky_relu, torch._C._nn.leaky_relu, torch._C._nn.leaky_relu_, F.leaky_relu_}
_IN_PLACE = {torch.relu_, torch.Tensor.relu_, F.relu_, torch._C._nn.leaky_relu_, F.leaky_relu_}
# Nonlinearities that are not gates (no path decomposition): refused by name.
_NOT_PATHS: dict[Callable, str] = {
    F.gelu: "GELU", F.silu: "SiLU", F.mish: "Mish", F.elu: "ELU", F.selu: "SELU", F.celu: "CELU",
    F.softplus: "Softplus", F.hardswish: "Hardswish", F.hardsigmoid: "Hardsigmoid", torch.tanh: "tanh",
    torch.sigmoid: "sigmoid", torch.Tensor.tanh: "tanh", torch.Tensor.sigmoid: "sigmoid", F.tanh: "tanh",
    F.sigmoid: "sigmoid", F.relu6: "ReLU6", F.hardtanh: "Hardtanh",
    # attention multiplies two activations (no path is a product of weights) and normalizes them
    F.softmax: "softmax", torch.softmax: "softmax", torch.Tensor.softmax: "softmax",
    F.scaled_dot_product_attention: "scaled dot-product attention",
    # a recurrent layer's gates (sigmoid, tanh) run inside one kernel, out of the gates' sight
    torch.lstm: "an LSTM", torch.gru: "a GRU", torch.rnn_tanh: "a tanh RNN", torch.rnn_relu: "a ReLU RNN",
}


def _slope_of_leaky(args, kwargs) -> float:
    slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
    return float(slope)


class _Gates(TorchFunctionMode):
    """Records (``mode="record"``), applies (``"apply"``) or removes (``"linear"``) the network's ReLU gates."""

    def __init__(self, mode: str, gates: list[torch.Tensor] | None = None):
        super().__init__()
        self.mode = mode
        self.gates = [] if gates is None else gates
        self.used = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NOT_PATHS:
            raise ValueError(
                f"px: the network applies {_NOT_PATHS[func]}, which has no path decomposition; PX (Iurada et al. "
                "2024, §3) scores networks whose nonlinearities are ReLU (or leaky ReLU) gates; score this model "
                "with snip, grasp or synflow"
            )
        if func not in _RELU and func not in _LEAKY:
            return func(*args, **kwargs)
        x = args[0]
        in_place = func in _IN_PLACE or bool(kwargs.get("inplace", False))
        if self.mode == "record":
            slope = 0.0 if func in _RELU else _slope_of_leaky(args, kwargs)
            with torch.no_grad():
                gate = torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))
            self.gates.append(gate.double())
            return func(*args, **kwargs)
        if self.mode == "linear":
            return x
        if self.used >= len(self.gates) or self.gates[self.used].shape != x.shape:
            raise ValueError("px: the network took another path through its activations on the second pass than "
                             "on the first (data-dependent control flow?); PX needs the same ReLUs in the same order")
        gate = self.gates[self.used].to(x.dtype).pow(2)  # (a_p)²: the squared Jacobian of the NTK trace
        self.used += 1
        return x.mul_(gate) if in_place else x * gate


def _numeric(what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def check(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            raise ValueError(f"px squares the network's inputs (Iurada et al. 2024, §3) and needs floating inputs; "
                             f"got a {t.dtype} tensor {what}")
        return t.double()
    return check


def _norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The normalization layers of ``model`` (role ``norm`` in :mod:`prunelab.layer_rules`), with their names."""
    return [(n, m) for n, m in model.named_modules() if (rule := layer_rule(m)) is not None and rule.role == "norm"]


@contextlib.contextmanager
def _norms_as_identity(model: nn.Module) -> Iterator[None]:
    """Every normalization layer of ``model`` returns its input unchanged for the block (forward hooks, removed
    after): ``z1`` counts active paths, which a norm layer's scale, shift and statistics must not change."""
    handles = [m.register_forward_hook(lambda m, args, out: args[0]) for _, m in _norms(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _transformed(model: nn.Module, mask: Mask, leaves: dict, weight: Callable, other: Callable,
                 norm: Callable) -> dict:
    """Float64 tensors for a copy of the network: covered weights from ``leaves`` through ``weight``; the
    parameters and floating buffers (running statistics) of normalization layers through ``norm``; every other
    parameter through ``other``; other buffers as they are."""
    owners = parameter_owners(model)
    tensors = {n: b.detach().double() if b.is_floating_point() else b for n, b in model.named_buffers()}
    for prefix, module in _norms(model):
        for local, b in module.named_buffers(recurse=False):
            name = f"{prefix}.{local}" if prefix else local
            if name in tensors and b.is_floating_point():
                tensors[name] = norm(tensors[name])
    for name, p in model.named_parameters():
        if name in leaves:
            tensors[name] = weight(leaves[name])
            continue
        module = owners.get(name, (None, name))[0]
        rule = layer_rule(module)
        p = p.detach().double()
        tensors[name] = norm(p) if rule is not None and rule.role == "norm" else other(p)
    return tensors


@register_method(
    "px",
    needs_data=True,
    default_iterations=100,
    description="w^2 * dR/d(w^2), R = path-kernel bound on the NTK trace from data and |w|^2 (Iurada et al. 2024)",
    family="init_data",
    year=2024,
)
def px(model, mask, batch, *, score_batch_size: int | None = None, distributed: bool = False) -> Scores:
    """PX's saliency ``θ² · ∂R/∂θ²`` with ``R = Σ_x Σ_k z1_k(x) · z2_k(θ²)`` (Iurada et al. 2024, §3; see the
    module docstring): ``z1`` the all-ones network on ``x²`` through the activation patterns of ``batch``,
    ``z2`` the squared-weight linear network on ones. Data-driven: ``batch=(inputs, targets)`` (the targets are
    not used; inputs must be floating). Iterated over 100 rounds by default (the authors' script).

    ``z1`` is a sum over examples in eval mode, so ``score_batch_size`` (micro-batches) and ``distributed``
    (the batch shared out over the ranks of a DDP job, ``z1`` summed over them) give the same scores."""
    params = mask.check_compatible(model)
    batches = score_batches(batch, "px", score_batch_size, distributed)
    pieces = batches.local
    device, dtype = model_device(model), model_dtype(model)
    kept = masked_leaves(params, mask)
    ones = {n: mask[n].to(device, torch.float64) for n in params}
    z1 = None
    with eval_mode(model), torch.no_grad():
        for piece in pieces:
            piece = piece.to(device, dtype)
            tensors = {n: b.clone() for n, b in model.named_buffers()}
            tensors.update({n: w.detach() for n, w in kept.items()})
            gates = _Gates("record")
            with gates:
                piece.forward(model, tensors)
            apply = _Gates("apply", gates.gates)
            with apply, _norms_as_identity(model):
                out = logits(piece.forward(model, _transformed(model, mask, ones, lambda m: m, torch.ones_like,
                                                               lambda p: p),
                                           prepare=lambda t: _numeric("as input")(t).pow(2)))
            if apply.used != len(gates.gates):
                raise ValueError("px: the network took another path through its activations on the second pass")
            part = out.sum(0)
            z1 = part if z1 is None else z1 + part
    squares = {n: (w.detach().double() ** 2).requires_grad_(True) for n, w in kept.items()}
    with eval_mode(model), _Gates("linear"):
        first = (pieces or as_batches(batch, "px"))[0].to(device, dtype)  # a rank without a piece: any example
        one = first.split(1)[0]  # z2 does not depend on the input: one all-ones example is enough
        z2 = logits(one.forward(model, _transformed(model, mask, squares, lambda s: s, lambda p: p * p,
                                                         lambda p: p * p),
                                prepare=lambda t: torch.ones_like(_numeric("as input")(t))))
    if z1 is None:
        z1 = torch.zeros_like(z2.sum(0)).detach()
    if batches.world_size > 1:
        z1 = batches.sum_over_ranks([z1])[0]
    r = (z1 * z2.sum(0)).sum()
    names = list(squares)
    grads = torch.autograd.grad(r, [squares[n] for n in names], allow_unused=True)
    out = Scores()
    for n, g in zip(names, grads):
        s = squares[n].detach()
        score = torch.zeros_like(s) if g is None else g * s
        out[n] = score.to(params[n].dtype if params[n].is_floating_point() else torch.float32)
    return out
