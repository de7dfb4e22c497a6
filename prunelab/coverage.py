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
    normalization layers, every parameter, with ``include_norm=True``.

``include=[names]`` adds any parameter by its exact name (a positional embedding, a custom
``nn.Parameter``) and ``exclude=[names]`` drops one. A custom layer type joins the registry with
:func:`register_layer_type`. :func:`coverage` says what a mask would cover and which weight tensors
(two or more dimensions) it leaves out, and why.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "COVERAGE_OPTIONS",
    "Coverage",
    "CoverageWarning",
    "LeftOut",
    "coverage",
    "mask_coverage",
    "prunable_parameters",
    "register_layer_type",
]

ROLES = ("layer", "embedding", "norm")
COVERAGE_OPTIONS = ("include_bias", "include_norm", "include_embeddings", "include", "exclude", "filter")

NamePredicate = Callable[[str], bool]


class CoverageWarning(UserWarning):
    """Weight tensors of the model that no mask option covers are left out of the mask."""


@dataclass(frozen=True)
class LayerRule:
    role: str
    is_weight: NamePredicate
    is_bias: NamePredicate


_RULES: dict[type, LayerRule] = {}


def _predicate(names: Iterable[str] | NamePredicate) -> NamePredicate:
    if callable(names):
        return names
    chosen = frozenset(names)
    return chosen.__contains__


def register_layer_type(
    cls: type,
    *,
    role: str = "layer",
    weights: Iterable[str] | NamePredicate = ("weight",),
    biases: Iterable[str] | NamePredicate = ("bias",),
) -> type:
    """Declare which parameters of layer type ``cls`` (and its subclasses) a mask covers.

    ``weights`` and ``biases`` are the local parameter names, or a predicate on them. ``role`` is
    ``"layer"`` (covered by default), ``"embedding"`` (with ``include_embeddings=True``) or ``"norm"``
    (with ``include_norm=True``). Usable as a class decorator with keyword arguments only
    (``functools.partial``) or called directly; returns ``cls``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_layer_type needs an nn.Module subclass, got {cls!r}")
    _RULES[cls] = LayerRule(role, _predicate(weights), _predicate(biases))
    return cls


def layer_rule(module: nn.Module) -> LayerRule | None:
    """The rule of the nearest registered type of ``module`` (its own class first), or None."""
    for cls in type(module).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return None


def _everything(_name: str) -> bool:
    return True


def _nothing(_name: str) -> bool:
    return False


def _recurrent_weight(name: str) -> bool:
    return name.startswith(("weight_ih_l", "weight_hh_l", "weight_hr_l"))


def _recurrent_bias(name: str) -> bool:
    return name.startswith(("bias_ih_l", "bias_hh_l"))


for _cls in (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear):
    register_layer_type(_cls)
register_layer_type(
    nn.MultiheadAttention,
    weights=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    biases=("in_proj_bias", "bias_k", "bias_v"),
)
register_layer_type(nn.RNNBase, weights=_recurrent_weight, biases=_recurrent_bias)
for _cls in (nn.Embedding, nn.EmbeddingBag):
    register_layer_type(_cls, role="embedding", biases=())
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()  # torch >= 2.4
)
for _cls in NORM_TYPES:
    register_layer_type(_cls, role="norm", weights=_everything, biases=_nothing)


# ---- what a mask covers -----------------------------------------------------------------------

def _classify(model: nn.Module, include_bias: bool, include_norm: bool, include_embeddings: bool) -> dict[str, str]:
    """{parameter name: why it is or is not covered by the type rules}: ``covered``, ``bias``,
    ``norm``, ``embedding`` or ``unrecognized``, in ``named_parameters`` order (shared parameters once)."""
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
            # A parameter shared by two modules is covered when either of its owners covers it.
            if by_id.get(id(param)) != "covered":
                by_id[id(param)] = why
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def _check_names(option: str, names, valid: list[str]) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ValueError(f"{option} must be a list of parameter names, got {names!r}")
    names = list(names)
    for n in names:
        if n not in valid:
            close = difflib.get_close_matches(str(n), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{option}: the model has no parameter {n!r}{hint}")
    return names


def _select(
    model: nn.Module,
    include_bias: bool = False,
    include_norm: bool = False,
    include_embeddings: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    filter: Callable[[str, nn.Parameter], bool] | None = None,  # noqa: A002 - public option name
) -> tuple[dict[str, nn.Parameter], dict[str, str]]:
    """(covered parameters, {name: reason} for every parameter left out)."""
    params = dict(model.named_parameters())
    include = _check_names("include", include, list(params))
    exclude = set(_check_names("exclude", exclude, list(params)))
    both = sorted(exclude.intersection(include))
    if both:
        raise ValueError(f"{both[0]!r} is both in include and in exclude; name it in one of them")
    why = _classify(model, include_bias, include_norm, include_embeddings)
    for n in include:
        why[n] = "covered"
    chosen, left = {}, {}
    for name, reason in why.items():
        if name in exclude:
            reason = "excluded"
        elif reason == "covered" and filter is not None and not filter(name, params[name]):
            reason = "filtered"
        if reason == "covered":
            chosen[name] = params[name]
        else:
            left[name] = reason
    return chosen, left


def prunable_parameters(model: nn.Module, **options) -> dict[str, nn.Parameter]:
    """The parameters a mask covers, in ``named_parameters`` order (see the module docstring).

    Options: ``include_bias``, ``include_norm``, ``include_embeddings`` (booleans), ``include`` and
    ``exclude`` (exact parameter names), and ``filter(name, param)``, which has the last word.
    """
    unknown = sorted(set(options) - set(COVERAGE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown coverage option {unknown[0]!r} (valid: {', '.join(COVERAGE_OPTIONS)})")
    return _select(model, **options)[0]


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
        """JSON-ready summary (what a run's result records)."""
        return {
            "covered_tensors": len(self.covered),
            "covered_parameters": self.covered_numel,
            "total_parameters": self.total,
            "covered_share": self.covered_share,
            "left_out": [
                {"name": t.name, "shape": list(t.shape), "parameters": t.numel, "reason": t.reason}
                for t in self.left_out
            ],
        }

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
            "or silence this with exclude=[...]",
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
    )


def mask_coverage(model: nn.Module, names: Iterable[str]) -> Coverage:
    """The coverage of an existing mask over ``names`` (a run's mask, a loaded file): what a run's
    result and ``prunelab analyze`` record. A weight covered by default but not by the mask counts as
    excluded."""
    names = set(names)
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
    unknown = sorted(set(options) - set(COVERAGE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown coverage option {unknown[0]!r} (valid: {', '.join(COVERAGE_OPTIONS)})")
    chosen, left = _select(model, **options)
    return _coverage(model, chosen, left)
