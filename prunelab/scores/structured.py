"""Structured criteria: whole channels by norm or at random, and the hybrid of Paganini & Forde 2020, §3.1.

"Structured pruning removes entire units or channels ... along the input axis" (Paganini & Forde 2020, §3.1): for a
convolution weight ``(out, in, kh, kw)`` an input channel ``c`` is the slice ``w[:, c]`` (every
filter's kernel for that channel); for a linear weight ``(out, in)`` it is the column ``w[:, c]`` (an
input feature). ``axis="output"`` prunes ``w[c]`` instead (a filter / an output unit). Each channel
gets one score, broadcast to all its entries, and :class:`~prunelab.scores.registry.Scores.groups`
tells :func:`prunelab.remove` to keep or remove the channel whole. Tensors with one dimension
(biases, normalization parameters when covered) have no channels and are scored entry by entry.
Grouped convolutions take only the axis whose dimension holds every channel (``axis="output"``,
or ``"input"`` for a transposed one); the other raises a ``ValueError`` (see :func:`_check_grouped`).
Paganini & Forde (2020) prune locally (``default_scope="layer"``).

Where the channels are is the layer type's rule (:func:`prunelab.coverage.channel_axes`: ``out_axis``
and ``in_axis`` of :func:`prunelab.register_layer_type`, ``convolution=True`` for groups and the hybrid),
as Torch-Pruning keeps one pruning function per layer type: a registered custom layer is pruned along
its own axes, and one registered without them is refused with a ``ValueError`` naming the call that
fixes it.

Norms: ``l1_channel``, ``l2_channel``, ``linf_channel`` (largest ``|w|`` of the channel) and
``lneginf_channel`` (smallest ``|w|``). Paganini & Forde's (2020) text and tables name the last structured variant
"L_{-inf}" (``torch.nn.utils.prune.ln_structured`` with ``n=-inf``), so ``lneginf_channel`` is the
one that reproduces it; ``linf_channel`` is the usual max-norm that the issue's name suggests.
"""

from __future__ import annotations

import torch
from torch import nn

from prunelab.layer_rules import channel_axes, channel_groups, is_convolution, parameter_owners
from prunelab.scores.registry import Scores, register_method

_AXES = ("input", "output")


def _check_axis(axis: str) -> None:
    if axis not in _AXES:
        raise ValueError(f"axis must be 'input' (the default of Paganini & Forde 2020) or 'output', got {axis!r}")


def channel_dim(module: nn.Module | None, param: torch.Tensor, axis: str, name: str = "weight") -> int | None:
    """The tensor dimension indexing input (or output) channels of ``param`` (local name ``name`` in
    ``module``), from the layer type's rule; None without channels."""
    _check_axis(axis)
    axes = channel_axes(module, name, param.dim(), "structured pruning")
    if axes is None:
        return None
    out_axis, in_axis = axes
    return in_axis if axis == "input" else out_axis


def _check_grouped(name: str, module: nn.Module | None, dim: int | None, axis: str) -> None:
    """Refuse the axis whose weight dimension holds channels per group, not channels.

    A grouped convolution (``groups > 1``; depthwise when ``groups == in_channels``) stores
    ``(out, in/groups, ...)`` (``(in, out/groups, ...)`` when transposed): slice ``c`` of dimension 1
    is channel ``c`` *of every group*, ``groups`` different channels ranked by one pooled norm, and a
    depthwise layer has a single such slice, so removing it would empty the layer. Dimension 0 holds
    every channel, so the other axis is well defined.
    """
    groups = channel_groups(module)
    if dim == 1 and groups > 1:
        other = "output" if axis == "input" else "input"
        raise ValueError(
            f"{name!r} belongs to a grouped convolution (groups={groups}), whose dimension 1 holds channels "
            f"per group, so whole {axis} channels are not slices of it; prune its {other} channels with "
            f"axis={other!r}, or leave it out with exclude=[{name!r}]"
        )


def _channel_scores(model, mask, norm: str, axis: str, seed: int = 0, only_convs: bool = False) -> Scores:
    _check_axis(axis)
    params = mask.check_compatible(model)
    owners = parameter_owners(model)
    gen = torch.Generator().manual_seed(int(seed))
    out = Scores()
    for name, p in params.items():
        module, local = owners.get(name, (None, name))
        if only_convs and not is_convolution(module):
            dim = None
        else:
            dim = channel_dim(module, p, axis, local)
        _check_grouped(name, module, dim, axis)
        w = p.detach()
        keep = mask[name]
        if not bool(keep.all()):
            w = w * keep.to(w.device)
        if dim is None:  # no channels: entry by entry
            if norm == "random":
                out[name] = torch.rand(p.shape, generator=gen, dtype=torch.float64).to(p.device)
            else:
                out[name] = w.abs()
            continue
        others = [d for d in range(w.dim()) if d != dim]
        if norm == "l1":
            s = w.abs().sum(dim=others)
        elif norm == "l2":
            s = w.pow(2).sum(dim=others).sqrt()
        elif norm == "linf":
            s = w.abs().amax(dim=others)
        elif norm == "lneginf":
            s = w.abs().amin(dim=others)
        else:  # random
            s = torch.rand(w.shape[dim], generator=gen, dtype=torch.float64).to(p.device)
        view = [1] * w.dim()
        view[dim] = w.shape[dim]
        out[name] = s.reshape(view).expand(w.shape)  # a view: one score per channel, no copy
        out.groups[name] = dim
    return out


def _register_norm(name: str, norm: str, what: str):
    def fn(model, mask, batch=None, *, axis: str = "input") -> Scores:
        return _channel_scores(model, mask, norm, axis)

    fn.__name__ = name
    fn.__doc__ = (
        f"Whole channels scored by the {what} of their weights (Paganini & Forde 2020, §3.1, structured "
        f"{what} pruning); ``axis='input'`` (default) or ``'output'``."
    )
    register_method(
        name,
        needs_data=False,
        default_scope="layer",
        structured=True,
        family="structured",
        year=2020,
        description=f"channels by the {what} of their weights (Paganini & Forde 2020, §3.1)",
    )(fn)
    return fn


l1_channel = _register_norm("l1_channel", "l1", "L1 norm")
l2_channel = _register_norm("l2_channel", "l2", "L2 norm")
linf_channel = _register_norm("linf_channel", "linf", "L-infinity norm (largest |w|)")
lneginf_channel = _register_norm("lneginf_channel", "lneginf", "L-(-infinity) norm (smallest |w|)")


@register_method(
    "random_channel",
    needs_data=False,
    default_scope="layer",
    structured=True,
    family="structured",
    year=2020,
    description="whole channels at random from the seed (Paganini & Forde 2020, §3.1)",
)
def random_channel(model, mask, batch=None, *, axis: str = "input", seed: int = 0) -> Scores:
    """Random structured pruning (Paganini & Forde 2020, §3.1): a uniform score per channel from ``seed``."""
    return _channel_scores(model, mask, "random", axis, seed=seed)


@register_method(
    "hybrid",
    needs_data=False,
    default_scope="layer",
    structured=True,
    family="structured",
    year=2020,
    description="L1 channels in convolutions, L1 weights in linear layers (Paganini & Forde 2020, §3.1)",
)
def hybrid(model, mask, batch=None, *, axis: str = "input") -> Scores:
    """Paganini & Forde 2020, §3.1's hybrid: convolutions lose whole channels by L1 norm, fully-connected layers
    lose single weights by magnitude (L1 unstructured)."""
    return _channel_scores(model, mask, "l1", axis, only_convs=True)
