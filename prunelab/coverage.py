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
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prunelab.validate import check_int, check_name, check_options, closest
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

ROLES = ("layer", "embedding", "norm")
NamePredicate = Callable[[str], bool]
COVERAGE_OPTIONS = ("include_bias", "include_norm", "include_embeddings", "include", "exclude", "filter")


class CoverageWarning(UserWarning):
    """Weight tensors of the model that no mask option covers are left out of the mask."""


def _everything(_name: str) -> bool:
    return True


def _nothing(_name: str) -> bool:
    return False


def _no_parts(_name: str) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class LayerRule:
    """What prunelab knows of a layer type: which parameters are weights and biases, where a weight keeps its
    channels, and how a fused tensor splits into parts. Read it with :func:`layer_rule`; declare it with
    :func:`register_layer_type`."""

    role: str
    is_weight: NamePredicate
    is_bias: NamePredicate
    type_name: str = "?"
    out_axis: int | None = None  # weight dimension indexing output channels (filters, units)
    in_axis: int | None = None  # weight dimension indexing input channels (features)
    convolution: bool = False  # ``groups`` splits weight dimension 1; the hybrid criterion prunes its channels
    parts: Callable[[str], tuple[str, ...]] = _no_parts  # local name -> equal slices along out_axis

    @property
    def has_axes(self) -> bool:
        return self.out_axis is not None and self.in_axis is not None


_RULES: dict[type, LayerRule] = {}


def _predicate(names: Iterable[str] | NamePredicate) -> NamePredicate:
    if callable(names):
        return names
    chosen = frozenset(names)
    return chosen.__contains__


def _parts_of(parts: Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]] | None):
    if parts is None:
        return _no_parts
    if callable(parts):
        return lambda name: tuple(parts(name) or ())
    table = {k: tuple(v) for k, v in parts.items()}
    return lambda name: table.get(name, ())


def _check_axes(cls: type, out_axis, in_axis) -> None:
    if (out_axis is None) != (in_axis is None):
        raise ValueError(f"register_layer_type({cls.__name__}) needs both out_axis and in_axis, or neither")
    if out_axis is None:
        return
    for what, axis in (("out_axis", out_axis), ("in_axis", in_axis)):
        check_int(axis, what, 0, "a dimension of the layer's weight")
    if out_axis == in_axis:
        raise ValueError(f"register_layer_type({cls.__name__}): out_axis and in_axis must differ, both are {out_axis}")


def register_layer_type(
    cls: type,
    *,
    role: str = "layer",
    weights: Iterable[str] | NamePredicate = ("weight",),
    biases: Iterable[str] | NamePredicate = ("bias",),
    out_axis: int | None = None,
    in_axis: int | None = None,
    convolution: bool = False,
    parts: Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]] | None = None,
) -> type:
    """Declare what prunelab needs to know of layer type ``cls`` (and its subclasses).

    ``weights`` and ``biases`` are the local parameter names, or a predicate on them: which tensors a
    mask covers. ``role`` is ``"layer"`` (covered by default), ``"embedding"`` (with
    ``include_embeddings=True``) or ``"norm"`` (with ``include_norm=True``).

    ``out_axis`` and ``in_axis``: the dimensions of its weights that index output channels (filters,
    units) and input channels (features): ``0`` and ``1`` for ``nn.Linear`` and convolutions, ``1`` and
    ``0`` for transposed convolutions, which store ``(in, out/groups, *kernel)``. Structured criteria
    (Paganini & Forde 2020, §3.1), neuron collapse (Frankle et al. 2021, §5) and conservation (Tanaka
    et al. 2020, §4) read channels there; a layer type without them is refused by those with a
    ``ValueError`` naming this call, never guessed. ``convolution=True``: its ``groups`` attribute splits
    weight dimension 1 into groups (PyTorch's layout), and the hybrid criterion of Paganini & Forde
    (2020, §3.1) prunes its channels whole. ``parts``: ``{local name: part names}`` (or a function of
    the local name) for a fused tensor made of equal slices along ``out_axis``, e.g.
    ``nn.MultiheadAttention``'s ``in_proj_weight``: ``("query", "key", "value")``.

    Usable as a class decorator with keyword arguments only (``functools.partial``) or called
    directly; returns ``cls``.
    """
    check_name("role", role, ROLES)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_layer_type needs an nn.Module subclass, got {cls!r}")
    _check_axes(cls, out_axis, in_axis)
    _RULES[cls] = LayerRule(
        role, _predicate(weights), _predicate(biases), cls.__name__, out_axis, in_axis, bool(convolution),
        _parts_of(parts),
    )
    return cls


# Layer types of other libraries, by qualified class name -> register_layer_type's keywords: registered the
# first time a rule is asked of one, so prunelab never imports those libraries itself. A user's own
# register_layer_type call for the class wins (it is found first).
KNOWN_ELSEWHERE: dict[str, dict] = {
    # The "Conv1D" of OpenAI GPT and GPT-2 in transformers: x @ weight + bias, with weight stored (in, out).
    "transformers.pytorch_utils.Conv1D": {"out_axis": 1, "in_axis": 0},
}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def layer_rule(module: nn.Module | None) -> LayerRule | None:
    """The rule of the nearest registered type of ``module`` (its own class first); else that of a type
    :data:`KNOWN_ELSEWHERE` (registered now) or of a norm layer known by name (see the module docstring);
    else None (also for None)."""
    mro = type(module).__mro__
    for cls in mro:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    for cls in mro:
        known = KNOWN_ELSEWHERE.get(_qualified(cls))
        if known is not None:
            register_layer_type(cls, **known)
            return _RULES[cls]
    return _norm_by_name(module)


_NORM_NAME = re.compile(r"Norm(?:[123]d)?$")


def _norm_by_name(module: nn.Module | None) -> LayerRule | None:
    """A norm rule for an unregistered layer whose class name ends with ``Norm`` (``1d``/``2d``/``3d`` aside)
    and whose own parameters are all one-dimensional: how the norm layers of other libraries (``LlamaRMSNorm``,
    ``T5LayerNorm``, timm's ``RmsNorm2d``) are known without importing them. Not registered: the
    dimensions are the instance's."""
    if not isinstance(module, nn.Module) or not _NORM_NAME.search(type(module).__name__):
        return None
    own = [p for p in module._parameters.values() if p is not None]
    if not own or any(p.dim() != 1 for p in own):
        return None
    return LayerRule("norm", _everything, _nothing, type(module).__name__)


def _recurrent_weight(name: str) -> bool:
    return name.startswith(("weight_ih_l", "weight_hh_l", "weight_hr_l"))


def _recurrent_bias(name: str) -> bool:
    return name.startswith(("bias_ih_l", "bias_hh_l"))


def _gates(*names: str) -> Callable[[str], tuple[str, ...]]:
    """PyTorch stacks a recurrent layer's gates along dimension 0 of ``weight_ih``, ``weight_hh`` and their
    biases (``weight_hr``, the LSTM projection, has none)."""

    def parts(name: str) -> tuple[str, ...]:
        return names if name.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")) else ()

    return parts


# Every built-in type keeps the axes structured criteria have always used: (out, in, ...) but for
# transposed convolutions. Embedding tables keep that layout too (rows as "output", columns as
# "input"), which is what structured criteria did with include_embeddings=True before rules had axes.
_DENSE = {"out_axis": 0, "in_axis": 1}
register_layer_type(nn.modules.conv._ConvNd, convolution=True, **_DENSE)
register_layer_type(nn.modules.conv._ConvTransposeNd, convolution=True, out_axis=1, in_axis=0)
for _cls in (nn.Linear, nn.Bilinear):
    register_layer_type(_cls, **_DENSE)
_QKV = ("query", "key", "value")  # the order nn.MultiheadAttention stacks them in in_proj_weight
register_layer_type(
    nn.MultiheadAttention,
    weights=("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"),
    biases=("in_proj_bias", "bias_k", "bias_v"),
    parts={"in_proj_weight": _QKV, "in_proj_bias": _QKV},
    **_DENSE,
)
register_layer_type(nn.RNNBase, weights=_recurrent_weight, biases=_recurrent_bias, **_DENSE)
for _cls, _gate_names in (
    (nn.LSTM, ("input", "forget", "cell", "output")),
    (nn.GRU, ("reset", "update", "new")),
):
    register_layer_type(
        _cls, weights=_recurrent_weight, biases=_recurrent_bias, parts=_gates(*_gate_names), **_DENSE
    )
for _cls in (nn.Embedding, nn.EmbeddingBag):
    register_layer_type(_cls, role="embedding", biases=(), **_DENSE)
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()  # torch >= 2.4
)
for _cls in NORM_TYPES:
    register_layer_type(_cls, role="norm", weights=_everything, biases=_nothing)


# ---- what the rules say of one tensor ---------------------------------------------------------

_LEGACY_AXES = (0, 1)  # PyTorch's (out, in, ...): a tensor of no layer rule (include=[name]), a table


def channel_axes(module: nn.Module | None, name: str, ndim: int, purpose: str) -> tuple[int, int] | None:
    """``(output axis, input axis)`` of parameter ``name`` (local) of ``module``, a tensor of ``ndim``
    dimensions; None when it has no channels (one dimension). ``purpose`` names what asks, for the error
    raised when ``module`` is a layer type registered without axes (rather than a silent guess)."""
    if ndim < 2:
        return None
    rule = layer_rule(module)
    if rule is None or rule.role != "layer":
        return _LEGACY_AXES
    if not rule.has_axes:
        raise ValueError(
            f"{purpose} of {rule.type_name}'s {name!r} needs its channel axes: register_layer_type({rule.type_name}, "
            "..., out_axis=<output-channel dim>, in_axis=<input-channel dim>) (0 and 1 in nn.Linear's layout)"
        )
    if max(rule.out_axis, rule.in_axis) >= ndim:
        raise ValueError(
            f"{purpose} of {rule.type_name}'s {name!r}: its rule says out_axis={rule.out_axis}, "
            f"in_axis={rule.in_axis}, but the tensor has {ndim} dimensions"
        )
    return rule.out_axis, rule.in_axis


def channel_groups(module: nn.Module | None) -> int:
    """How many groups a convolution's weight dimension 1 is split into (1 for every other layer)."""
    rule = layer_rule(module)
    return int(getattr(module, "groups", 1)) if rule is not None and rule.convolution else 1


def is_convolution(module: nn.Module | None) -> bool:
    """Whether ``module``'s rule says it is a convolution (hybrid structured pruning, Paganini & Forde 2020, §3.1)."""
    rule = layer_rule(module)
    return rule is not None and rule.convolution


def is_bias(module: nn.Module | None, name: str) -> bool:
    """Whether parameter ``name`` (local) of ``module`` is a bias by its layer rule: a constant added to a unit,
    which carries no signal from the input (Frankle et al. 2021, App. M). A parameter of no registered
    type is a bias when it is called ``bias``."""
    rule = layer_rule(module)
    return rule.is_bias(name) if rule is not None else name == "bias"


def is_bias_name(name: str) -> bool:
    """Whether a parameter called ``name`` (full or local) is a bias of some registered layer type, for
    what only has a mask's names (no model): ``fc.bias``, ``attn.in_proj_bias``, ``rnn.bias_ih_l0``."""
    local = name.rpartition(".")[2]
    return local == "bias" or any(rule.is_bias(local) for rule in _RULES.values())


def parameter_owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{parameter name: (the module that owns it, its local name there)}``: where a name's rule is found.
    A shared parameter is listed under each name ``named_modules`` reaches it by; wrapper prefixes are left out."""
    return {
        (f"{mn}.{pn}" if mn else pn): (m, pn)
        for mn, m in unwrap(model).named_modules()
        for pn, _ in m.named_parameters(recurse=False)
    }


def tied_parameters(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """``{name: every name of it}`` for each parameter reached by more than one name (an output layer tied to
    the embedding table, a module used twice): the name is the first, the one ``named_parameters`` gives."""
    names: dict[int, list[str]] = {}
    for name, p in unwrap(model).named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {all_[0]: tuple(all_) for all_ in names.values() if len(all_) > 1}


def _fused_layout(module: nn.Module | None, local: str) -> tuple[tuple[str, ...], int] | None:
    """(part names, axis they are stacked along) of fused parameter ``local``: from ``module``'s rule, or, with
    no module, from the registered types that fuse a tensor of that name, when they all agree."""
    if module is None:
        rules = list(_RULES.values())
    else:
        rules = [rule] if (rule := layer_rule(module)) is not None else []
    found = {(rule.parts(local), rule.out_axis or 0) for rule in rules if rule.parts(local)}
    return found.pop() if len(found) == 1 else None


def split_fused(tensor: torch.Tensor, name: str, module: nn.Module | None = None) -> dict[str, torch.Tensor] | None:
    """``{part: slice}`` of a fused tensor (equal slices along its output axis, in the order its rule names
    them: ``query``, ``key``, ``value`` for ``nn.MultiheadAttention.in_proj_weight``, the gates of an LSTM
    or GRU), or None when ``name`` is not fused or ``tensor`` does not divide evenly.

    ``module`` is the owner of parameter ``name`` (then ``name`` may be local); without it (a mask
    without its model) the name alone decides, and only where every registered type agrees:
    ``in_proj_weight`` is attention's, while ``weight_ih_l0`` could be an LSTM's four gates or a GRU's three.
    """
    layout = _fused_layout(module, name.rpartition(".")[2])
    if layout is None:
        return None
    parts, axis = layout
    axis = axis if tensor.dim() > 1 else 0  # a fused bias is split like its weight's output channels
    if tensor.dim() <= axis or tensor.shape[axis] % len(parts):
        return None
    return dict(zip(parts, tensor.chunk(len(parts), dim=axis)))


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
