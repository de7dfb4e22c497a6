"""Which parameters a mask covers: a registry of layer types, and a report of what is left out.

A layer type declares which of its parameters are *weights* (the matrices and kernels that every
paper prunes: Lee et al. 2019, Wang et al. 2020, Tanaka et al. 2020 and Frankle et al. 2021 all
prune the weights of convolutions and linear layers) and which are *biases*. Its role says when it
is covered:

``layer``
    covered by default: convolutions, linear and bilinear layers, ``nn.MultiheadAttention``
    (``in_proj_weight`` or ``q/k/v_proj_weight``; ``out_proj`` is a linear layer) and
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (every ``weight_ih_l*``, ``weight_hh_l*`` and ``weight_hr_l*``,
    ``_reverse`` included); their biases with ``include_bias=True``.
``embedding``
    ``nn.Embedding``/``nn.EmbeddingBag`` tables, covered with ``include_embeddings=True``: a token's
    row is its input, so pruning an embedding changes what the network can read.
``norm``
    normalization layers, every parameter, with ``include_norm=True``: PyTorch's BatchNorm, GroupNorm,
    LayerNorm, RMSNorm (and their subclasses, timm's ``LayerNorm2d``...), and, by name, any other layer
    whose class name ends with ``Norm`` (a trailing ``1d``/``2d``/``3d`` aside: ``LlamaRMSNorm``,
    ``T5LayerNorm``, timm's ``RmsNorm2d``) and whose own parameters all have one dimension (a scale or
    shift per channel): a norm layer of another library is never mistaken for a weight matrix.

Layer types of other libraries that prunelab knows without importing them (:data:`KNOWN_ELSEWHERE`,
matched by qualified class name the first time coverage meets one): ``transformers``' ``Conv1D``
(GPT-2's attention and MLP layers, a linear layer storing its weight as ``(in, out)``).

``include=[...]`` adds any parameter by its exact name (a positional embedding, a custom
``nn.Parameter``) or by a glob pattern (``"*.attn.*"``, :func:`fnmatch.fnmatchcase`), and
``exclude=[...]`` drops some the same way; a pattern that matches nothing is an error, like an unknown
name. Exclusion wins over a pattern in ``include``; a name given exactly in ``include`` and excluded
too is an error. What ``exclude`` or ``filter`` leaves out was left out on purpose: no warning.

A tensor shared by several modules (an output layer tied to the embedding table: GPT-2, T5, most
language models) is one parameter, named as ``named_parameters`` names it first, listed with all its
owners in :attr:`Coverage.ties`, and takes the role of its most restrictive owner: an owner whose role
needs an option (embedding, norm, bias) wins over a layer, so a tied table stays out unless
``include_embeddings=True``; an owner of no known type says nothing of the tensor.

Wrapper prefixes (``_orig_mod.`` of ``torch.compile``, ``module.`` of DDP and DataParallel) are not
part of a name (:mod:`prunelab.wrappers`). A custom layer type joins the registry with
:func:`register_layer_type`. :func:`coverage` says what a mask would cover and which weight tensors
(two or more dimensions) it leaves out, and why.

A rule also says where a layer's weights keep their channels (``out_axis``, ``in_axis``; grouped
convolutions), how a fused tensor splits into parts (attention's query, key and value rows, a
recurrent layer's gates) and which tensors are biases. Structured criteria, collapse warnings and the
analyses (neuron collapse, effective sparsity, conservation) ask the rule through the helpers below
(:func:`channel_axes`, :func:`is_bias`, :func:`split_fused`, ...), in the spirit of Torch-Pruning's
per-layer-type pruning functions, so that a type registered here is treated like a built-in one
everywhere, or refused with an error that names what its rule lacks.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from prunelab.layer_rules import (  # the rules' public names, also importable from here as before
    KNOWN_ELSEWHERE,
    LayerRule,
    channel_axes,
    channel_groups,
    is_bias,
    is_bias_name,
    is_convolution,
    layer_rule,
    parameter_owners,
    register_layer_type,
    split_fused,
    tied_parameters,
)
from prunelab.validate import check_options, closest
from prunelab.wrappers import resolve_names, unwrap

__all__ = [
    "COVERAGE_OPTIONS",
    "Coverage",
    "CoverageWarning",
    "LayerRule",
    "LeftOut",
    "channel_axes",
    "channel_groups",
    "coverage",
    "is_bias",
    "is_bias_name",
    "is_convolution",
    "KNOWN_ELSEWHERE",
    "layer_rule",
    "mask_coverage",
    "parameter_owners",
    "prunable_parameters",
    "register_layer_type",
    "split_fused",
    "tied_parameters",
]

COVERAGE_OPTIONS = ("include_bias", "include_norm", "include_embeddings", "include", "exclude", "filter")


class CoverageWarning(UserWarning):
    """Weight tensors of the model that no mask option covers are left out of the mask."""


# ---- what a mask covers -----------------------------------------------------------------------

# What one owner says of a shared parameter, most restrictive first: a role that needs an option wins over a
# layer (a tied embedding table stays an embedding table), and an owner of no known type says nothing.
_PRECEDENCE = ("embedding", "norm", "bias", "covered", "unrecognized")


def _classify(model: nn.Module, include_bias: bool, include_norm: bool, include_embeddings: bool) -> dict[str, str]:
    """{parameter name: why it is or is not covered by the type rules}: ``covered``, ``bias``,
    ``norm``, ``embedding`` or ``unrecognized``, in ``named_parameters`` order (shared parameters once,
    with the verdict of their most restrictive owner)."""
    role_on = {"layer": True, "embedding": include_embeddings, "norm": include_norm}
    by_id: dict[int, str] = {}
    for module in model.modules():
        rule = layer_rule(module)
        for pname, param in module.named_parameters(recurse=False):
            if rule is None:
                why = "unrecognized"
            elif rule.is_weight(pname):
                why = "covered" if role_on[rule.role] else rule.role
            elif rule.is_bias(pname):
                why = "covered" if include_bias and role_on[rule.role] else "bias"
            else:
                why = "unrecognized"
            seen = by_id.get(id(param))
            if seen is None or _PRECEDENCE.index(why) < _PRECEDENCE.index(seen):
                by_id[id(param)] = why
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


_GLOB = frozenset("*?[")


def _check_names(option: str, names, valid: list[str]) -> tuple[list[str], list[str]]:
    """(the exact names, the names the patterns match), in the model's order; a name the model lacks or a
    pattern that matches nothing is a ValueError naming the closest parameter. A name with a wrapper prefix
    (``module.fc.weight``) means the parameter without it."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ValueError(f"{option} must be a list of parameter names or glob patterns, got {names!r}")
    names = list(names)
    resolved = resolve_names(names, valid)
    exact, matched = [], set()
    for n in names:
        if n in resolved:
            exact.append(resolved[n])
            continue
        near = closest(n, valid)  # not the whole list: a model has thousands of parameters
        hint = f"; did you mean {near!r}?" if near else ""
        if not (isinstance(n, str) and _GLOB.intersection(n)):
            raise ValueError(f"{option}: the model has no parameter {n!r}{hint}")
        found = [v for v in valid if fnmatch.fnmatchcase(v, n)]
        if not found:
            raise ValueError(f"{option}: the pattern {n!r} matches no parameter of the model{hint}")
        matched.update(found)
    return exact, [v for v in valid if v in matched]


def _select(model: nn.Module, options: Mapping[str, object]) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """(covered parameters, {name: reason} for every parameter left out), once the option keys are checked."""
    check_options("coverage", options, COVERAGE_OPTIONS)
    return _select_checked(model, **options)


def _select_checked(
    model: nn.Module,
    include_bias: bool = False,
    include_norm: bool = False,
    include_embeddings: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    filter: Callable[[str, nn.Parameter], bool] | None = None,  # noqa: A002 - public option name
) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """(covered parameters, {name: reason} for every parameter left out)."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    include, include_matched = _check_names("include", include, list(params))
    exclude = set().union(*_check_names("exclude", exclude, list(params)))
    both = sorted(exclude.intersection(include))
    if both:
        raise ValueError(f"{both[0]!r} is both in include and in exclude; name it in one of them")
    why = _classify(model, include_bias, include_norm, include_embeddings)
    for n in (*include, *include_matched):
        why[n] = "covered"
    chosen, left = {}, {}
    for name, reason in why.items():
        if name in exclude:
            reason = "excluded"
        elif filter is not None and _asked(reason, params[name]) and not filter(name, params[name]):
            reason = "filtered"  # a weight the filter rejects was left out on purpose: no warning
        if reason == "covered":
            chosen[name] = params[name]
        else:
            left[name] = reason
    return chosen, left


def _asked(reason: str, param: nn.Parameter) -> bool:
    """Whether ``filter`` decides of a parameter: one covered so far, or a weight tensor of no known layer type
    (which would be warned about: rejecting it says the user leaves it out on purpose)."""
    return reason == "covered" or (reason == "unrecognized" and param.dim() >= 2)


def prunable_parameters(model: nn.Module, **options) -> dict[str, nn.Parameter]:
    """The parameters a mask covers, in ``named_parameters`` order (see the module docstring).

    Options: ``include_bias``, ``include_norm``, ``include_embeddings`` (booleans), ``include`` and
    ``exclude`` (exact parameter names or glob patterns), and ``filter(name, param)``, which has the last
    word (it is asked of the tensors of no known layer type too, so rejecting them silences the warning).
    """
    return _select(model, options)[0]


@dataclass(frozen=True)
class LeftOut:
    """A weight tensor (two or more dimensions) that the mask leaves out, and why."""

    name: str
    shape: tuple[int, ...]
    reason: str  # embedding | bias | norm | excluded | filtered | unrecognized

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


_REASONS = {
    "embedding": "embedding table (include_embeddings=True covers it)",
    "bias": "bias (include_bias=True covers it)",
    "norm": "normalization (include_norm=True covers it)",
    "excluded": "excluded (exclude=[...], or the options that made the mask)",
    "filtered": "rejected by filter",
    "unrecognized": "not a weight of a known layer type (include=[name] covers it)",
}


@dataclass(frozen=True)
class Coverage:
    """What a mask over ``model`` with the given options covers; see :func:`coverage`."""

    covered: dict[str, tuple[int, ...]]
    left_out: tuple[LeftOut, ...]
    total: int = field(default=0)  # parameters of the model (shared ones once)
    # {name: every name of it} of each shared tensor (tied_parameters): one entry, the role of its most
    # restrictive owner
    ties: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def covered_numel(self) -> int:
        return sum(math.prod(s) for s in self.covered.values())

    @property
    def covered_share(self) -> float:
        """Fraction of the model's parameters that the mask covers."""
        return self.covered_numel / self.total if self.total else 0.0

    @property
    def unexpected(self) -> tuple[LeftOut, ...]:
        """Weight tensors left out although no option asked for it: the ones :func:`prune` warns about."""
        return tuple(t for t in self.left_out if t.reason == "unrecognized")

    def to_dict(self) -> dict:
        """JSON-ready summary (what a run's result records); ``ties`` only when the model has any, so the
        record of a model without them is what it always was."""
        out = {
            "covered_tensors": len(self.covered),
            "covered_parameters": self.covered_numel,
            "total_parameters": self.total,
            "covered_share": self.covered_share,
            "left_out": [
                {"name": t.name, "shape": list(t.shape), "parameters": t.numel, "reason": t.reason}
                for t in self.left_out
            ],
        }
        if self.ties:
            out["ties"] = {n: list(names) for n, names in self.ties.items()}
        return out

    def _status(self, name: str) -> str:
        if name in self.covered:
            return "covered"
        reason = next((t.reason for t in self.left_out if t.name == name), None)
        return f"left out ({reason})" if reason else "left out"

    def __str__(self) -> str:
        lines = [
            f"mask covers {len(self.covered)} tensors, {self.covered_numel:,} of {self.total:,} parameters "
            f"({100 * self.covered_share:.1f}%)"
        ]
        if self.left_out:
            lines.append("weight tensors left out:")
            for t in self.left_out:
                share = 100 * t.numel / self.total if self.total else 0.0
                shape = "x".join(map(str, t.shape))
                lines.append(f"  {t.name} ({shape}, {t.numel:,} = {share:.2f}%): {_REASONS[t.reason]}")
        if self.ties:
            lines.append("shared tensors (one entry each, the role of the most restrictive owner):")
            for name, names in self.ties.items():
                lines.append(f"  {name} = {' = '.join(names[1:])}: {self._status(name)}")
        return "\n".join(lines)

    def warn_unexpected(self, what: str = "the mask", stacklevel: int = 3) -> None:
        """One :class:`CoverageWarning` line naming the weight tensors no option covers, if any."""
        missing = self.unexpected
        if not missing:
            return
        count = sum(t.numel for t in missing)
        names = ", ".join(f"{t.name} ({'x'.join(map(str, t.shape))})" for t in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        warnings.warn(
            f"{what} leaves out {len(missing)} weight tensor(s) of no known layer type: {names}{more} "
            f"({100 * count / max(self.total, 1):.2f}% of the parameters); cover them with include=[...] "
            "or silence this with exclude=[...] or filter=",
            CoverageWarning,
            stacklevel=stacklevel,
        )


def _coverage(model: nn.Module, chosen: Iterable[str], left: dict[str, str]) -> Coverage:
    params = dict(model.named_parameters())
    left_out = tuple(
        LeftOut(n, tuple(params[n].shape), reason) for n, reason in left.items() if params[n].dim() >= 2
    )
    return Coverage(
        covered={n: tuple(params[n].shape) for n in chosen},
        left_out=left_out,
        total=sum(p.numel() for p in params.values()),
        ties=tied_parameters(model),
    )


def mask_coverage(model: nn.Module, names: Iterable[str]) -> Coverage:
    """The coverage of an existing mask over ``names`` (a run's mask, a loaded file): what a run's
    result and ``prunelab analyze`` record. A weight covered by default but not by the mask counts as
    excluded."""
    model = unwrap(model)
    names = list(names)
    names = set(resolve_names(names, dict(model.named_parameters())).values())
    why = _classify(model, include_bias=False, include_norm=False, include_embeddings=False)
    left = {n: ("excluded" if reason == "covered" else reason) for n, reason in why.items() if n not in names}
    return _coverage(model, [n for n in why if n in names], left)


def coverage(model: nn.Module, **options) -> Coverage:
    """Which parameters a mask over ``model`` covers, and which weight tensors it leaves out.

    ``options`` are those of :func:`prunable_parameters`. Tensors of two or more dimensions that are
    not covered are listed with a reason (embedding table, bias, normalization, excluded, filtered,
    or unrecognized: a parameter of no registered layer type). ``print(prunelab.coverage(model))``
    shows a table.
    """
    chosen, left = _select(model, options)
    return _coverage(unwrap(model), chosen, left)
