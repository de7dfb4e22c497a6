"""Hyperparameter dataclasses -> CLI flags, TOML overrides, and a canonical run hash.

A run's identity is a hash of its *non-default* fields only (OpenLTH's rule), so adding a field
with a default to any dataclass never changes the hash of an existing run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from typing import Any


def nondefault_fields(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` whose values differ from their defaults, as JSON-ready values."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
        )
        if value != default:
            out[f.name] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return nondefault_fields(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def run_hash(kind: str, **parts: Any) -> str:
    """Stable hex id for a run of ``kind`` from its parts (dataclasses contribute non-default fields)."""
    canonical = {"kind": kind}
    for key, value in parts.items():
        value = _jsonable(value)
        if value not in ({}, None):
            canonical[key] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- CLI flags generated from dataclasses -------------------------------------------------------

def _flag(name: str, prefix: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _parse_optional(inner):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else inner(text)

    parse.__name__ = getattr(inner, "__name__", "value")
    return parse


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", group: str | None = None) -> None:
    """One flag per field of ``cls``; defaults are None so that only flags given on the command line override.

    Booleans get ``--x/--no-x`` (never ``type=bool``, which treats the string "False" as true).
    Tuples take several values (``--milestones 80ep 120ep``).
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag, dest = _flag(f.name, prefix), prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"(default: {default})"
        if tp is bool:
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            target.add_argument(flag, dest=dest, nargs="*", type=inner, default=None, help=help_text)
        else:
            kind = _parse_optional(tp) if optional else tp
            target.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def dataclass_from_flags(cls: type, args: argparse.Namespace, base: Any = None, prefix: str = "") -> Any:
    """``base`` (or the defaults) with every flag the user gave applied."""
    changes = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, prefix + f.name, None)
        if value is not None:
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    if base is None:
        return cls(**changes)
    return dataclasses.replace(base, **changes)
