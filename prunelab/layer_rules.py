"""Layer rules: what prunelab knows of each layer type, in one registry.

A layer type declares which of its parameters are *weights* (the matrices and kernels that every
paper prunes: Lee et al. 2019, Wang et al. 2020, Tanaka et al. 2020 and Frankle et al. 2021 all
prune the weights of convolutions and linear layers) and which are *biases*, its role (``layer``,
``embedding``, ``norm``: when a mask covers it, see :mod:`prunelab.coverage`), where its weights keep
their channels (``out_axis``, ``in_axis``; grouped convolutions), and how a fused tensor splits into
parts (attention's query, key and value rows, a recurrent layer's gates). Structured criteria, collapse
warnings and the analyses (neuron collapse, effective sparsity, conservation) ask the rule through the
helpers here (:func:`channel_axes`, :func:`is_bias`, :func:`split_fused`, ...), in the spirit of
Torch-Pruning's per-layer-type pruning functions, so that a type registered with
:func:`register_layer_type` is treated like a built-in one everywhere, or refused with an error that
names what its rule lacks.

Norm layers of other libraries are known by name: any layer whose class name ends with ``Norm`` (a
trailing ``1d``/``2d``/``3d`` aside: ``LlamaRMSNorm``, ``T5LayerNorm``, timm's ``RmsNorm2d``) and whose own
parameters all have one dimension. Layer types of other libraries that prunelab knows without importing
them (:data:`KNOWN_ELSEWHERE`, matched by qualified class name the first time a rule is asked for one):
``transformers``' ``Conv1D`` (GPT-2's attention and MLP layers, a linear layer storing its weight as
``(in, out)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.validate import check_int, check_name
from prunelab.wrappers import unwrap

__all__ = [
    "KNOWN_ELSEWHERE",
    "LayerRule",
    "channel_axes",
    "channel_groups",
    "is_bias",
    "is_bias_name",
    "is_convolution",
    "layer_rule",
    "parameter_owners",
    "register_layer_type",
    "split_fused",
    "tied_parameters",
]

ROLES = ("layer", "embedding", "norm")
NamePredicate = Callable[[str], bool]


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
