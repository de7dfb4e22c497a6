"""The registry of pruning criteria, and the one decorator that adds a criterion.

A criterion is a plain function ``fn(model, mask, batch, **options) -> {param_name: Tensor}``: it
scores every parameter that ``mask`` covers (same names, and for unstructured criteria the same
shapes), on the *masked* network (pruned weights count as zero), and leaves ``model`` as it found it.
Its metadata tells :func:`prunelab.prune` how to use the scores (Frankle et al. 2021, §3: a pruning
method is a ``score`` function plus ``remove``):

``needs_data``
    it needs ``batch=(inputs, targets)`` (SNIP, GraSP) or not (random, magnitude, SynFlow);
``needs_input_shape``
    it builds its own input and needs ``input_shape`` (SynFlow's all-ones input);
``default_iterations``
    iterations used when ``prune(iterations=None)`` (100 for SynFlow and iterative SNIP, else 1);
``prune_highest``
    remove the highest scores instead of the lowest (GraSP, Frankle et al. 2021, App. C.1);
``default_scope``
    ``"global"`` or ``"layer"`` (the structured criteria of Paganini & Forde 2020, §3.1 are local);
``structured``
    scores are per channel (see :class:`Scores.groups`);
``family`` and ``year``
    which kind of criterion it is (a key of :data:`prunelab.catalog.FAMILIES`: ``"init_data"`` for
    SNIP, ``"init_data_free"`` for SynFlow, ``"after_training"`` for magnitude, ...) and the year of the
    work it comes from; ``prunelab list methods`` groups the criteria by them;
``revives``
    every iteration ranks all the weights the starting mask keeps, so that a weight an earlier iteration
    pruned may come back (FORCE, de Jorge et al. 2021, §3); by default removal is permanent;
``prepare``
    optional ``prepare(model, batch, **options) -> scorer(mask)`` doing one-time work shared by the
    iterations of one ``prune`` call (SynFlow's float64 copy is made once, not once per iteration).

Adding a criterion takes one decorated function::

    @prunelab.register_method("taylor", needs_data=True)
    def taylor(model, mask, batch, *, loss_fn=None):
        ...
        return {name: (grad * weight) ** 2 for ...}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from prunelab.catalog import FAMILIES
from prunelab.registry import Registry
from prunelab.validate import SCOPES, check_int, check_name, check_options


class Scores(dict):
    """``{param_name: Tensor}`` as returned by a criterion, plus how entries group into channels.

    ``groups`` maps a parameter name to the tensor dimension whose slices are pruned whole (for
    ``l1_channel`` with the default input axis: ``{"features.3.weight": 1, ...}``). Entries in a
    group carry the same score. Parameters not in ``groups`` are pruned weight by weight.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor] = (), groups: Mapping[str, int] | None = None):
        super().__init__(tensors)
        self.groups: dict[str, int] = dict(groups or {})


@dataclass(frozen=True)
class Method:
    """A registered pruning criterion and what :func:`prunelab.prune` needs to know about it."""

    name: str
    fn: Callable = field(repr=False)
    needs_data: bool = False
    needs_input_shape: bool = False
    default_iterations: int = 1
    prune_highest: bool = False
    default_scope: str = "global"
    structured: bool = False
    description: str = ""
    prepare: Callable | None = field(default=None, repr=False)
    family: str | None = None
    year: int | None = None
    revives: bool = False
    builds_mask: bool = False

    @property
    def options(self) -> tuple[str, ...]:
        """Keyword options the criterion accepts (beyond ``model, mask, batch``)."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return tuple(p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    @property
    def text_options(self) -> dict[str, object]:
        """The options a run's settings may give as ``NAME=VALUE`` text, with their defaults: all but those
        :func:`prunelab.prune` or the run sets itself (``seed``, ``sparsity``, ``input_shape``, the batch's) and
        ``loss_fn``, which is code."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return {p.name: p.default for p in params
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in _NOT_TEXT}

    def parse_options(self, items) -> dict[str, object]:
        """``["steps=5", "lr=0.05"]`` -> ``{"lr": 0.05, "steps": 5}``: each value typed like the option's default
        (bool: true/false; int; float; else a number if it reads as one, or the text), sorted by name; a
        ``ValueError`` names a malformed item, an unknown option or a value of the wrong type."""
        known = self.text_options
        out: dict[str, object] = {}
        for item in items:
            name, sep, text = str(item).partition("=")
            name, text = name.strip(), text.strip()
            if not sep or not name or not text:
                raise ValueError(f"a criterion option is NAME=VALUE (e.g. steps=5), got {item!r}")
            check_options(self.name, [name], known)
            if name in out:
                raise ValueError(f"{self.name}: option {name!r} is given twice")
            out[name] = _typed(self.name, name, text, known[name])
        return dict(sorted(out.items()))

    def scorer(self, model, batch, **options) -> Callable:
        """A callable ``scorer(mask) -> Scores`` for repeated scoring of the same model and batch."""
        if self.prepare is not None:
            return self.prepare(model, batch, **options)
        return lambda mask: self.fn(model, mask, batch, **options)


METHODS: Registry[Method] = Registry("pruning method")

# Options a run's settings never give as text: prune() and the run pass them (or they are code).
_NOT_TEXT = ("seed", "sparsity", "input_shape", "score_batch_size", "distributed", "loss_fn")


def option_text(value: object) -> str:
    """An option's value as ``NAME=VALUE`` text writes it (``true``/``false`` for booleans): the form a run's
    settings keep and ``prunelab list options`` shows."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _typed(method: str, name: str, text: str, default: object) -> object:
    """``text`` as the type of ``default`` (a number where the default is None)."""
    def number():
        try:
            return int(text)
        except ValueError:
            return float(text)

    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            try:
                return number()
            except ValueError:
                return text
        return text
    except ValueError:
        kind = ("true or false" if isinstance(default, bool) else
                {int: "an integer", float: "a number"}.get(type(default), type(default).__name__))
        raise ValueError(f"{method}: option {name} must be {kind} (default {default!r}), got {text!r}") from None


def register_method(
    name: str,
    *,
    needs_data: bool,
    needs_input_shape: bool = False,
    default_iterations: int = 1,
    prune_highest: bool = False,
    default_scope: str = "global",
    structured: bool = False,
    description: str = "",
    prepare: Callable | None = None,
    family: str | None = None,
    year: int | None = None,
    revives: bool = False,
    builds_mask: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn(model, mask, batch, **options)`` as the pruning criterion ``name``.

    ``builds_mask``: the criterion builds its own mask to the target sparsity (it takes ``sparsity``) and its
    scores only encode that mask (0/1, or the order a search reached the weights), not a ranking of every
    weight: NPB, PHEW. :func:`prunelab.prune` refuses to combine it with an N:M pattern, whose choice within
    each group would then be decided by position.

    Returns the function unchanged, so decorators stack (``snip`` and ``iterative_snip`` are the
    same function under two names with different default iterations).
    """
    check_name("default_scope", default_scope, SCOPES)
    check_int(default_iterations, "default_iterations", 1)
    if family is not None:
        check_name("family", family, FAMILIES)
    if year is not None:
        check_int(year, "year", 1900, "the year of the work the criterion comes from")

    def add(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters)
        if len(params) < 3:
            raise ValueError(f"a pruning criterion takes (model, mask, batch, **options); {fn.__name__} takes {params}")
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        method = Method(
            name=name,
            fn=fn,
            needs_data=needs_data,
            needs_input_shape=needs_input_shape,
            default_iterations=default_iterations,
            prune_highest=prune_highest,
            default_scope=default_scope,
            structured=structured,
            description=doc,
            prepare=prepare,
            family=family,
            year=year,
            revives=bool(revives),
            builds_mask=bool(builds_mask),
        )
        METHODS.register(name, method)
        return fn

    return add


def get_method(name: str) -> Method:
    """The registered criterion ``name``; ``ValueError`` listing the valid names otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"a pruning method is named by a string, got {type(name).__name__}")
    return METHODS.get(name)


def methods() -> dict[str, Method]:
    """All registered criteria with their metadata, by name."""
    return {n: METHODS.get(n) for n in METHODS.names()}
