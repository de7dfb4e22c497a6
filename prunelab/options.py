"""Hyperparameter fields that document themselves.

Each field of the hyperparameter dataclasses (``prunelab.experiments.hparams``, ``TrainSettings``) is
declared with :func:`option`: a default, a one-line description and, for name-valued fields, a function
that returns the valid names from their registry. The CLI's ``--help``, ``--print-config`` and the TOML
documentation are generated from these, so a new criterion, model or protocol appears in them by itself.

Metadata is not part of a dataclass's equality, hash or run identity (``nondefault_fields`` reads only
values and defaults), so describing a field never changes a run id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

Choices = Callable[[], Iterable[str]]


def option(default: Any = dataclasses.MISSING, *, help: str, choices: Choices | None = None,
           unset: str | Callable[[], str] | None = None, identity: bool = True) -> Any:
    """A dataclass field with its documentation.

    ``help``: one line saying what the field is. ``choices``: returns the valid names (called when help is
    shown, so registries are read as they are then). ``unset``: for an optional field, what its None
    default means ("the method's own: ..."), or a function returning that text. ``identity=False``: a
    setting that says how a run is computed, not what it computes (like the device): a flag and a TOML key,
    but never part of the run's hash or ``hparams.json``, so the same run is found whatever it is.
    """
    metadata = {"help": help, "choices": choices, "unset": unset}
    if not identity:
        metadata["identity"] = False
    return dataclasses.field(default=default, metadata=metadata)


def is_execution_field(f: dataclasses.Field) -> bool:
    """A field declared with ``identity=False``: outside the run's hash and ``hparams.json``."""
    return f.metadata.get("identity") is False


def help_of(f: dataclasses.Field) -> str:
    """The field's one-line description ('' when it has none)."""
    return f.metadata.get("help", "")


def choices_of(f: dataclasses.Field) -> list[str]:
    """The valid names of a name-valued field, from its registry ([] for other fields)."""
    provider = f.metadata.get("choices")
    return list(provider()) if provider else []


def one_of(cls: type, name: str) -> str:
    """"one of: a, b, c": the valid names of field ``name`` of dataclass ``cls``, for the help of a flag that
    takes the same names outside the dataclass (``prunelab analyze --model``)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return "one of: " + ", ".join(choices_of(f))


def unset_of(f: dataclasses.Field) -> str:
    """What None means for an optional field ('' when not said)."""
    text = f.metadata.get("unset") or ""
    return text() if callable(text) else text


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def show_value(value: Any) -> str:
    """A default as the user would type it: tuples space-separated, booleans as the flag's form."""
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def describe(f: dataclasses.Field, default: str | None = None, required: bool = False) -> str:
    """One line: description, valid names, and the default (``default`` replaces the dataclass's own, e.g. "the
    recipe of the model: ..."; "" leaves it out); what None means for an optional field."""
    parts = [help_of(f)]
    if choices_of(f):
        parts.append("one of: " + ", ".join(choices_of(f)))
    if default is None:
        value = default_of(f)
        default = unset_of(f) if value is None else show_value(value)
    if required:
        parts.append("required")
    elif default:
        parts.append(f"default: {default}")
    return "; ".join(p for p in parts if p)


def undocumented(cls: type) -> list[str]:
    """Fields of dataclass ``cls`` without a description (the tests require none)."""
    return [f.name for f in dataclasses.fields(cls) if not help_of(f).strip()]


def add_root_flag(parser) -> None:
    """``--root``: the run store folder, one flag for every command that reads or writes a store."""
    parser.add_argument("--root", default="runs", help="run store folder (default: ./runs)")
