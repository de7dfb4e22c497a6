"""Conservation of synaptic saliency (Tanaka et al. 2020, §4, Theorems 1-2, Figs. 3-4).

Synaptic saliency is any score of the form ``S = dR/dtheta * theta`` (Tanaka et al. 2020, eq. (1)). For a network
whose activations are homogeneous (``phi(x) = phi'(x) x``: ReLU, leaky ReLU, identity, max- and
average-pooling), Theorem 1 says that the saliency entering a hidden neuron (its incoming weights
and its bias) equals the saliency leaving it (its outgoing weights), and Theorem 2 that every set of
parameters separating input from output carries the same total: in a plain chain of layers each
layer's total score is the same, so the *average* score of a layer is inversely proportional to its
size (Tanaka et al. 2020, Fig. 4), which is why one-shot gradient criteria empty the largest layers first.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from prunelab.layer_rules import channel_axes, channel_groups, is_bias, layer_rule, parameter_owners

# Modules and functions through which a neuron stays a neuron (unary, channel-preserving), by kind.
_HOMOGENEOUS_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Flatten,
)
_OTHER_ACTIVATIONS = (
    nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SELU, nn.SiLU, nn.Softplus, nn.ReLU6, nn.Hardtanh,
    nn.Hardswish, nn.Mish, nn.CELU,
)
_HOMOGENEOUS_FUNCTIONS = {
    F.relu, torch.relu, F.leaky_relu, F.dropout, torch.flatten,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}
_OTHER_FUNCTIONS = {torch.tanh, torch.sigmoid, F.gelu, F.elu, F.silu, F.softplus, F.relu6, F.hardtanh}
_HOMOGENEOUS_METHODS = {"relu", "relu_", "flatten", "contiguous"}
_OTHER_METHODS = {"tanh", "sigmoid"}


def _pass_kind(node: fx.Node, current: fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    """"homogeneous", "other" (channel-preserving but not homogeneous), "batchnorm", or None (stop)."""
    if not node.args or node.args[0] is not current:
        return None
    if any(isinstance(a, fx.Node) for a in list(node.args[1:]) + list(node.kwargs.values())):
        return None  # a second tensor input (a sum, a product): no longer one neuron's signal
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return "batchnorm"
        if isinstance(m, _HOMOGENEOUS_MODULES):
            return "homogeneous"
        if isinstance(m, _OTHER_ACTIVATIONS):
            return "other"
    elif node.op == "call_function":
        if node.target in _HOMOGENEOUS_FUNCTIONS:
            return "homogeneous"
        if node.target in _OTHER_FUNCTIONS:
            return "other"
        if node.target is F.batch_norm:
            return "batchnorm"
    elif node.op == "call_method":
        if node.target in _HOMOGENEOUS_METHODS:
            return "homogeneous"
        if node.target in _OTHER_METHODS:
            return "other"
    return None


def _neuron_weight(module: nn.Module, node: fx.Node) -> str | None:
    """The local name of ``module``'s one weight when it is a layer of neurons, else None.

    A layer of neurons, in the sense of Tanaka et al. 2020, §4, is a layer type (role ``"layer"`` of
    :func:`prunelab.register_layer_type`) with a single weight tensor that reads a single input: a
    convolution or linear layer, or a custom type registered like one. Attention (three inputs),
    recurrent layers (several weights) and bilinear layers (two inputs) are not.
    """
    rule = layer_rule(module)
    if rule is None or rule.role != "layer":
        return None
    weights = [n for n, _ in module.named_parameters(recurse=False) if rule.is_weight(n)]
    inputs = [a for a in [*node.args, *node.kwargs.values()] if isinstance(a, fx.Node)]
    return weights[0] if len(weights) == 1 and len(inputs) == 1 else None


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, which also keeps every registered layer type whole (one ``call_module`` node), as
    it keeps ``torch.nn``'s own: a custom layer is then a layer of neurons, not the matmul inside it."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        rule = layer_rule(m)
        return (rule is not None and rule.role == "layer") or super().is_leaf_module(m, module_qualified_name)


def _describe(node: fx.Node) -> str:
    if node.op == "output":
        return "the network output"
    target = node.target
    if target in (operator.add, torch.add, "add", "add_", operator.iadd):
        return "a sum (residual connection)"
    name = getattr(target, "__name__", target)
    return f"{node.op} {name!r}"


def _trace_pairs(model: nn.Module, scores: Mapping[str, torch.Tensor]):
    """{producer weight name: [(consumer weight name, kinds seen on the path)]}, skipped {name: why}."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as e:  # data-dependent control flow, unsupported ops
        raise ValueError(
            f"conservation could not trace {type(model).__name__} with torch.fx ({type(e).__name__}: {e}); pass "
            "pairs={producer_weight: [consumer_weights]} naming which layers feed which"
        ) from e
    modules = dict(model.named_modules())
    layer_nodes = {}
    for n in graph.nodes:
        local = _neuron_weight(modules[n.target], n) if n.op == "call_module" else None
        if local is not None and f"{n.target}.{local}" in scores:
            layer_nodes[n] = f"{n.target}.{local}"
    pairs, skipped, output_layers = {}, {}, set()
    for node, pname in layer_nodes.items():
        found, stop = [], None
        stack = [(node, frozenset())]
        while stack and stop is None:
            current, kinds = stack.pop()
            for user in current.users:
                if user in layer_nodes:
                    found.append((layer_nodes[user], kinds))
                    continue
                kind = _pass_kind(user, current, modules)
                if kind is None:
                    stop = user
                    break
                stack.append((user, kinds | {kind}))
        if stop is not None and stop.op == "output" and not found:
            output_layers.add(pname)
        elif stop is not None:
            skipped[pname] = f"its output reaches {_describe(stop)}, so its units are not plain hidden neurons"
        elif found:
            pairs[pname] = found
    return pairs, skipped, output_layers


def _axes(owner: tuple[nn.Module, str], s: torch.Tensor) -> tuple[int, int]:
    """(output axis, input axis) of a scored weight, from its layer rule (PyTorch's (out, in, ...) for a
    tensor of no layer type, named in pairs=)."""
    return channel_axes(*owner, s.dim(), "conservation") or (0, 1)


def _incoming(owner: tuple[nn.Module, str], s: torch.Tensor) -> torch.Tensor:
    """Per unit of a layer, the score of its incoming weights: everything but its output axis, summed."""
    out_axis = _axes(owner, s)[0]
    return s.movedim(out_axis, 0).reshape(s.shape[out_axis], -1).sum(dim=1)


def _outgoing(consumer: tuple[nn.Module, str], s: torch.Tensor, n_out: int) -> torch.Tensor | str:
    """Per producer unit, the consumer's score summed over the weights that read that unit."""
    if channel_groups(consumer[0]) != 1:
        return "grouped convolution"
    in_axis = _axes(consumer, s)[1]
    per_input = s.movedim(in_axis, 0).reshape(s.shape[in_axis], -1).sum(dim=1)
    if per_input.numel() == n_out:
        return per_input
    if s.dim() == 2 and per_input.numel() % n_out == 0:
        # A matrix (a linear layer) reading a flattened (channels, positions...) map, channel-major as
        # torch.flatten orders it.
        return per_input.reshape(n_out, -1).sum(dim=1)
    return f"{per_input.numel()} consumer inputs do not group into {n_out} producer units"


def conservation(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    *,
    pairs: Mapping[str, Sequence[str]] | None = None,
    rtol: float = 1e-4,
) -> dict:
    """Per hidden neuron, incoming vs outgoing score (Tanaka et al. 2020, Theorem 1, Fig. 3); per layer, total score
    and size (Tanaka et al. 2020, Theorem 2, Fig. 4).

    ``scores`` maps parameter names to score tensors, e.g. from :func:`prunelab.score`. A hidden
    neuron is an output unit (linear) or output channel (convolution) of a layer whose weight is
    scored (its layer rule says which axis holds them, so a custom type registered with ``out_axis``
    and ``in_axis`` counts like a built-in one; one registered without them is a ``ValueError``),
    when everything between that layer and the layers it feeds is unary and channel-wise
    (activations, pooling, BatchNorm, dropout, flatten): found by tracing ``model`` with torch.fx, or
    given as ``pairs={producer_weight: [consumer_weights]}``. Its incoming score is the sum of its
    row of the producer's weight scores (plus its bias score if the bias is scored), its outgoing
    score the sum of the consumers' weight scores that read it (for a linear layer after a flatten,
    the columns of its channel). Units whose output meets a residual sum are listed in ``skipped``.

    **Exact** (up to rounding) when the scores are synaptic saliency ``dR/dw * w`` for one scalar
    ``R`` of the output (SynFlow's ``|dR/dw * w|`` on its all-positive network qualifies; so does
    the signed ``dL/dw * w``), every activation on the path is homogeneous (ReLU, leaky ReLU,
    pooling, identity), no BatchNorm is on the path, and every bias of a producer is scored (or there
    are none). Theorem 2's equal per-layer totals further need each layer to separate input from
    output (a plain chain, no skip connections). **Only approximate** otherwise: an unscored bias
    takes its share of the incoming saliency; BatchNorm in train mode makes the output invariant to
    the scale of the incoming weights (incoming saliency near 0), in eval mode it adds a shift;
    non-homogeneous activations (tanh, GELU) break ``phi(x) = phi'(x) x``; SNIP's ``|dL/dw * w|`` and
    GraSP's Hessian-gradient scores are not of the form ``dR/dw * w`` (Tanaka et al. 2020, §4: "closely related").

    Returns ``{"neurons": {producer: {"incoming", "outgoing", "consumers"}}, "incoming", "outgoing"
    (all hidden neurons concatenated, float64, for a scatter plot), "max_abs_error",
    "max_relative_error" (largest ``|in - out|`` over the largest ``|score|`` of a neuron),
    "conserved" (all close within ``rtol`` of that scale), "exact" (the structural conditions above
    hold), "caveats" (why not), "skipped", "layer_total", "layer_size", "layer_mean"}``.
    """
    params = dict(model.named_parameters())
    owners = parameter_owners(model)
    missing = [n for n in scores if n not in params]
    if missing:
        raise ValueError(
            f"scores name {len(missing)} parameter(s) that {type(model).__name__} lacks, e.g. {missing[0]!r}"
        )
    caveats: list[str] = []
    skipped: dict[str, str] = {}
    if pairs is None:
        traced, skipped, _ = _trace_pairs(model, scores)
    else:
        traced = {}
        for p, cs in pairs.items():
            for n in [p, *cs]:
                if n not in scores:
                    raise ValueError(f"pairs names {n!r}, which has no scores")
            traced[p] = [(c, frozenset()) for c in cs]
        caveats.append("pairs given by hand: the path between layers (BatchNorm, activations) was not inspected")

    neurons: dict[str, dict] = {}
    for pname, consumers in traced.items():
        producer, _ = owners[pname]
        incoming = _incoming(owners[pname], scores[pname].detach().to(torch.float64))
        prefix = pname.rpartition(".")[0]
        for local, _ in producer.named_parameters(recurse=False):
            if not is_bias(producer, local):
                continue
            bias_name = f"{prefix}.{local}" if prefix else local
            if bias_name in scores:
                incoming = incoming + scores[bias_name].detach().to(torch.float64).reshape(-1)
            else:
                caveats.append(f"{pname}: its bias is not scored, so incoming saliency misses the bias share")
        outgoing = torch.zeros_like(incoming)
        reason = None
        for cname, kinds in consumers:
            if "batchnorm" in kinds:
                caveats.append(f"{pname} -> {cname}: BatchNorm on the path (not homogeneous: scale-invariant/shifted)")
            if "other" in kinds:
                caveats.append(f"{pname} -> {cname}: a non-homogeneous activation on the path")
            out = _outgoing(owners[cname], scores[cname].detach().to(torch.float64), incoming.numel())
            if isinstance(out, str):
                reason = f"{cname}: {out}"
                break
            outgoing = outgoing + out.to(outgoing.device)
        if reason is not None:
            skipped[pname] = reason
            continue
        neurons[pname] = {"incoming": incoming, "outgoing": outgoing, "consumers": [c for c, _ in consumers]}
    if skipped:
        caveats.append(
            f"{len(skipped)} layer(s) feed sums or other merges (e.g. residual connections): a single layer then "
            "does not separate input from output, so per-layer totals need not be equal (Theorem 2)"
        )
    if not neurons:
        raise ValueError(
            "conservation found no hidden neuron: no scored layer feeds another scored layer through unary, "
            f"channel-wise operations only (skipped: {skipped or 'none'}); pass pairs= to name them"
        )
    incoming = torch.cat([v["incoming"].cpu() for v in neurons.values()])
    outgoing = torch.cat([v["outgoing"].cpu() for v in neurons.values()])
    err = (incoming - outgoing).abs()
    scale = float(torch.maximum(incoming.abs(), outgoing.abs()).max())
    max_abs = float(err.max())
    max_rel = max_abs / scale if scale > 0 else 0.0
    totals = {n: float(s.detach().to(torch.float64).sum()) for n, s in scores.items()}
    sizes = {n: s.numel() for n, s in scores.items()}
    return {
        "neurons": neurons,
        "incoming": incoming,
        "outgoing": outgoing,
        "max_abs_error": max_abs,
        "max_relative_error": max_rel,
        "conserved": bool(max_abs <= rtol * scale),
        "exact": not caveats,
        "caveats": caveats,
        "skipped": skipped,
        "layer_total": totals,
        "layer_size": sizes,
        "layer_mean": {n: totals[n] / sizes[n] if sizes[n] else 0.0 for n in totals},
    }
