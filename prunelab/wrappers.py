"""Wrapper prefixes are not part of a name: models wrapped by ``torch.compile``, DDP and DataParallel.

``torch.compile(model)`` returns an ``OptimizedModule`` that holds the model as ``_orig_mod``;
``DistributedDataParallel`` and ``nn.DataParallel`` hold it as ``module``. Their ``named_parameters``
carry that prefix (``_orig_mod.fc.weight``, ``module.fc.weight``), so a mask keyed by one model's names
would not fit the same network wrapped or unwrapped. prunelab names a parameter as the innermost model
does: coverage, masks and their binding look through wrappers with :func:`unwrap`, and a mask whose
names were taken from a wrapped model is read against another with :func:`resolve_names`. This module is
the one place that knows the wrappers.

A wrapper type is recognized by its qualified class name (``torch._dynamo.eval_frame.OptimizedModule``),
so nothing here imports ``torch._dynamo`` or ``torch.distributed``; :func:`register_wrapper` adds
another. FSDP (version 1) is not a wrapper of this kind: it flattens parameters and inserts its prefix
at every wrapped submodule; FSDP2's ``fully_shard`` keeps the module and its names, so it needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

__all__ = ["register_wrapper", "resolve_names", "unwrap", "wrapper_prefix"]

# qualified class name -> the attribute that holds the wrapped model
_WRAPPERS: dict[str, str] = {
    "torch._dynamo.eval_frame.OptimizedModule": "_orig_mod",
    "torch.nn.parallel.data_parallel.DataParallel": "module",
    "torch.nn.parallel.distributed.DistributedDataParallel": "module",
}


def register_wrapper(cls: type, attribute: str) -> type:
    """Declare ``cls`` a wrapper that holds the model it wraps (the only child whose names count) as ``attribute``."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_wrapper needs an nn.Module subclass, got {cls!r}")
    _WRAPPERS[f"{cls.__module__}.{cls.__qualname__}"] = attribute
    return cls


def _attribute(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        attribute = _WRAPPERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if attribute is not None:
            return attribute
    return None


def _layers(model: nn.Module) -> tuple[nn.Module, str]:
    prefix = ""
    while (attribute := _attribute(model)) is not None and isinstance(getattr(model, attribute, None), nn.Module):
        model, prefix = getattr(model, attribute), f"{prefix}{attribute}."
    return model, prefix


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside any wrappers (``torch.compile``, DDP, DataParallel, nested), or ``model`` itself.
    It shares its parameters and modules with the wrapper: what is done to one is done to the other."""
    return _layers(model)[0]


def wrapper_prefix(model: nn.Module) -> str:
    """What the wrappers add in front of a name (``"module._orig_mod."``; ``""`` for a plain model)."""
    return _layers(model)[1]


def resolve_names(names: Iterable[str], valid: Iterable[str]) -> dict[str, str]:
    """``{name: the valid name it means}`` for each of ``names`` that is valid as it is, or once the wrapper
    prefixes (``_orig_mod.``, ``module.``) in front of it are dropped; names that are neither are left out
    (the caller says what is wrong). A valid name always means itself, so a model's own submodule called
    ``module`` keeps its name."""
    valid = set(valid)
    attributes = tuple(f"{a}." for a in set(_WRAPPERS.values()))
    out = {}
    for name in names:
        if not isinstance(name, str):
            continue
        candidate = name
        while candidate not in valid and candidate.startswith(attributes):
            candidate = candidate.partition(".")[2]
        if candidate in valid:
            out[name] = candidate
    return out
