"""Effective sparsity: kept weights that no signal can use count as pruned.

Frankle et al. 2021, App. M, and Paganini & Forde 2020, App. B ("effective
pruning rate"): a kept weight whose output never reaches the network's output cannot change what
the network computes; neither can one whose input unit never receives anything from the input.
Such weights are pruned in effect, and the *effective* sparsity counts them.

The procedure is App. M's, on a float64 copy: every covered weight becomes 1 if kept and 0 if
pruned, an all-ones example is propagated forward, and the gradient of the sum of the outputs is
taken. In such a network every activation is non-negative, so ReLUs pass everything and nothing
cancels, and the gradient of a weight from unit ``j`` to unit ``i`` is ``a_j * delta_i``: ``a_j > 0``
exactly when some path of kept weights leads from the input to ``j``, and ``delta_i > 0`` exactly
when some path leads from ``i`` to an output. A zero gradient therefore marks a weight that is
disconnected **from the output or from the input** (both directions, in one backward pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.analysis.layerwise import as_mask
from prunelab.layer_rules import is_bias, layer_rule, parameter_owners
from prunelab.mask_binding import unbound_copy
from prunelab.masks import Mask
from prunelab.validate import check_input_shape

_MAX_TO_AVG = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.MaxPool3d: nn.AvgPool3d,
}
_ADAPTIVE_MAX_TO_AVG = {
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}


def _replace(net: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent_name) if parent_name else net, child, new)


def _identity_hook(module, inputs, output):
    return inputs[0]


def _bounded_hook(module, inputs, output):
    """Divide a layer's (non-negative) output by max(1, itself), and its gradient likewise.

    Positive rescaling never turns zero into nonzero or back, so which weights get a zero gradient
    is unchanged; it only stops the counts of paths (products of fan-ins, ~1e55 in a dense ResNet-20
    and past float64's range in ResNet-110) from overflowing.
    """
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return output
    out = output / output.detach().abs().clamp(min=1.0)
    if out.requires_grad:
        out.register_hook(lambda g: g / g.detach().abs().clamp(min=1.0))
    return out


def _reachability_net(model: nn.Module, mask: Mask) -> tuple[nn.Module, dict[str, nn.Parameter], set[str]]:
    """The float64 copy of App. M, ready for one forward and backward pass; its covered parameters;
    and the covered parameters of skipped normalization layers (left as the mask has them)."""
    net = unbound_copy(model)
    net.double().eval()
    # A max-pool sends its gradient to one input of each window only (on a ones input, the first of
    # equal values), which would mark connected units as disconnected; structurally a max-pool output
    # depends on its whole window, as an average-pool output does.
    for name, module in list(net.named_modules()):
        if type(module) in _MAX_TO_AVG:
            if module.dilation not in (1, (1,), (1, 1), (1, 1, 1)) or module.return_indices:
                raise ValueError(f"effective_mask cannot analyse {name!r}: dilated or index-returning max-pool")
            new = _MAX_TO_AVG[type(module)](module.kernel_size, module.stride, module.padding, module.ceil_mode)
            _replace(net, name, new)
        elif type(module) in _ADAPTIVE_MAX_TO_AVG:
            if module.return_indices:
                raise ValueError(f"effective_mask cannot analyse {name!r}: index-returning max-pool")
            _replace(net, name, _ADAPTIVE_MAX_TO_AVG[type(module)](module.output_size))
    params = dict(net.named_parameters())
    covered = {n: params[n] for n in mask}
    owners = parameter_owners(net)
    skipped: set[str] = set()
    with torch.no_grad():
        for mname, module in net.named_modules():
            own = {f"{mname}.{p}" if mname else p: t for p, t in module.named_parameters(recurse=False)}
            rule = layer_rule(module)
            if rule is not None and rule.role == "norm":
                bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
                if bn and module.running_mean is not None and module.running_var is not None:
                    # BatchNorm as identity (times its masked scale): mean 0, variance 1 - eps.
                    module.running_mean.zero_()
                    module.running_var.fill_(1.0 - module.eps)
                    if module.weight is not None:
                        module.weight.fill_(1.0)
                    if module.bias is not None:
                        module.bias.zero_()
                else:
                    # Per-example normalization would subtract means and break the non-negativity.
                    module.register_forward_hook(_identity_hook)
                    skipped.update(n for n in own if n in covered)
                continue
            for pname, t in own.items():
                if is_bias(module, pname.rpartition(".")[2]):  # by the layer rule: in_proj_bias, bias_ih_l0, ...
                    t.zero_()  # a constant carries no signal from the input
                else:
                    t.copy_(t != 0)  # uncovered weights: 1 where nonzero
            if rule is not None and rule.role == "layer":
                module.register_forward_hook(_bounded_hook)
        for n, p in covered.items():
            if is_bias(*owners[n]) or n in skipped:
                continue  # biases stay 0; their gradient still tells whether their unit reaches an output
            p.copy_(mask[n].to(p.device, p.dtype))
    for p in net.parameters():
        p.requires_grad_(False)
    return net, {n: p for n, p in covered.items() if n not in skipped}, skipped


def effective_mask(model: nn.Module, mask: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> Mask:
    """``mask`` minus the kept weights that are disconnected from the output or from the input.

    Frankle et al. 2021, App. M, steps 1-5, on a float64 deep copy (the caller's model is not
    touched): covered weights set to 1 if kept and 0 if pruned, other weights to 1 where nonzero; all
    biases 0 (a constant carries no signal from the input; which tensors are biases is the layer rule's,
    :func:`prunelab.coverage.is_bias`: ``in_proj_bias`` and ``bias_ih_l0`` are, a custom type's as
    registered); BatchNorm made an identity (running mean 0, variance 1 - eps, scale 1, shift 0); other
    normalization layers (role ``"norm"``) skipped;
    max-pools replaced by average-pools of the same window (a max-pool's gradient reaches one
    input per window only); eval mode; one all-ones example of shape ``input_shape``; gradient of
    the sum of the outputs. A kept weight stays kept iff its gradient is nonzero, which (see the
    module docstring) happens iff its input unit is reachable from the input *and* its output unit
    reaches an output: Frankle et al. 2021, App. M's "disconnected from the output" and the "implicitly pruned"
    weights of Paganini & Forde 2020, App. B, plus weights fed by units that nothing reaches. A covered bias is kept iff
    kept and its unit reaches an output.

    Assumes activations with ``phi(0) = 0`` and ``phi(x) > 0`` for ``x > 0`` (ReLU and its kin):
    the reachability argument needs that. Each output of a layer (role ``"layer"``) is rescaled by a
    positive factor so that path counts never overflow; zeros stay zeros.
    """
    mask = as_mask(mask)
    mask.check_compatible(model)
    shape = check_input_shape(input_shape)
    net, covered, skipped = _reachability_net(model, mask)
    names = list(covered)
    leaves = [covered[n] for n in names]
    for p in leaves:
        p.requires_grad_(True)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    out = net(torch.ones((1, *shape), dtype=torch.float64, device=device))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"effective_mask needs a model that returns one tensor, got {type(out).__name__}")
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    result = {n: mask[n] for n in skipped}
    for n, g in zip(names, grads):
        keep = mask[n]
        alive = torch.zeros_like(keep) if g is None else (g != 0).to(keep.device)
        result[n] = keep & alive
    return Mask({n: result[n] for n in mask})


def effective_sparsity(model: nn.Module, mask: Mapping[str, torch.Tensor], input_shape: Sequence[int]) -> dict:
    """Actual vs effective sparsity, overall and per tensor (Frankle et al. 2021, App. M;
    Paganini & Forde 2020, App. B).

    ``actual`` counts the weights the mask prunes; ``effective`` also counts kept weights that
    :func:`effective_mask` finds disconnected. Returns ``{"actual", "effective", "total", "kept",
    "effective_kept", "per_layer": {name: {"actual", "effective", "total", "kept", "effective_kept"}}}``.
    Frankle et al. (2021, App. M) compare networks by the ratio of effective parameters (``effective_kept``), e.g.
    shuffled over unmodified.
    """
    mask = as_mask(mask)
    eff = effective_mask(model, mask, input_shape)
    per_layer = {}
    for n in mask:
        total = mask[n].numel()
        kept, ekept = int(mask[n].count_nonzero()), int(eff[n].count_nonzero())
        per_layer[n] = {
            "actual": 1.0 - kept / total if total else 0.0,
            "effective": 1.0 - ekept / total if total else 0.0,
            "total": total,
            "kept": kept,
            "effective_kept": ekept,
        }
    return {
        "actual": mask.sparsity,
        "effective": eff.sparsity,
        "total": mask.num_total,
        "kept": mask.num_kept,
        "effective_kept": eff.num_kept,
        "per_layer": per_layer,
    }


def effective_parameter_ratio(model: nn.Module, mask: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                              input_shape: Sequence[int]) -> float:
    """Effective parameters of ``mask`` over those of ``reference``: Frankle et al. 2021, App. M's ratio of the
    layerwise-shuffled network to the unmodified one (Fig. 16; at most 1.0353 in that paper)."""
    ours = effective_sparsity(model, mask, input_shape)["effective_kept"]
    theirs = effective_sparsity(model, reference, input_shape)["effective_kept"]
    if theirs == 0:
        raise ValueError("the reference mask has no effective parameter; the ratio is undefined")
    return ours / theirs
