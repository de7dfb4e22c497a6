"""The one validated reader of the JSON files of a run folder: ``hparams.json``, ``result.json``,
``provenance.json``.

Every command that reads a run (``ls``, ``show``, ``analyze``, ``report``, ``sweep``, the protocols,
:func:`prunelab.reports.tables.runs_table`) goes through :func:`read`, so a damaged file — bytes that
are not UTF-8, text that is not JSON, JSON of the wrong shape or with fields of the wrong type — is
always reported the same way: :class:`DamagedRunFile`, a ``ValueError`` whose one-line message names
the file and says what is wrong. What a caller does with it is its own decision (a writer sets the
file aside and recomputes, a lister skips the run with a warning).

A schema is a small tree of checks: :class:`Table` (required and optional keys, unknown keys allowed
so that newer versions may add fields), :class:`OneOf` (a closed set of strings), :class:`ListOf`,
:class:`MapOf`, :class:`Maybe` (or null) and the scalar checks ``STR``, ``INT``, ``NUM``, ``BOOL``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DamagedRunFile(ValueError):
    """A run file that cannot be decoded or does not have the shape prunelab writes."""

    def __init__(self, path: str | os.PathLike, why: str):
        super().__init__(f"{path} is damaged: {why}")
        self.path, self.why = Path(path), why


# ---- schema checks: each returns None when the value fits, else a short reason --------------------

Check = Callable[[Any], "str | None"]


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _scalar(name: str, test: Callable[[Any], bool]) -> Check:
    def check(value):
        return None if test(value) else f"must be {name}, not {_type_name(value)}"

    return check


STR = _scalar("a string", lambda v: isinstance(v, str))
BOOL = _scalar("a boolean", lambda v: isinstance(v, bool))
INT = _scalar("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUM = _scalar("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
ANY_TABLE = _scalar("an object", lambda v: isinstance(v, dict))


def Maybe(check: Check) -> Check:  # noqa: N802 - reads as a type
    return lambda v: None if v is None else check(v)


def OneOf(*choices: str) -> Check:  # noqa: N802
    def check(value):
        if isinstance(value, str) and value in choices:
            return None
        shown = repr(value) if isinstance(value, str) and len(value) < 40 else _type_name(value)
        return f"must be one of {', '.join(choices)}, not {shown}"

    return check


def ListOf(item: Check) -> Check:  # noqa: N802
    def check(value):
        if not isinstance(value, list):
            return f"must be a list, not {_type_name(value)}"
        for i, v in enumerate(value):
            if (why := item(v)) is not None:
                return f"[{i}] {why}"
        return None

    return check


def MapOf(item: Check) -> Check:  # noqa: N802
    def check(value):
        if not isinstance(value, dict):
            return f"must be an object, not {_type_name(value)}"
        for k, v in value.items():
            if (why := item(v)) is not None:
                return f"[{k!r}] {why}" if len(k) < 80 else f"[...] {why}"
        return None

    return check


@dataclass(frozen=True)
class Table:
    """A JSON object with ``required`` and ``optional`` keys; ``when`` adds keys required for one value of
    a discriminating key (``("kind", "prune"): {"pruning": ...}``). Unknown keys are allowed."""

    required: dict[str, Check] = field(default_factory=dict)
    optional: dict[str, Check] = field(default_factory=dict)
    when: dict[tuple[str, str], dict[str, Check]] = field(default_factory=dict)

    def __call__(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"must be an object, not {_type_name(value)}"
        required = dict(self.required)
        for (key, expected), extra in self.when.items():
            if value.get(key) == expected:
                required.update(extra)
        for key, check in required.items():
            if key not in value:
                return f"has no {key!r}"
            if (why := check(value[key])) is not None:
                return f"{key} {why}"
        for key, check in self.optional.items():
            if key in value and (why := check(value[key])) is not None:
                return f"{key} {why}"
        return None


# ---- the files of a run folder: their names, in one place ---------------------------------------------

HPARAMS_JSON = "hparams.json"  # written first
PROVENANCE_JSON = "provenance.json"
METRICS = "metrics.jsonl"
MASK = "mask.pt"
CHECKPOINTS = "checkpoints"
RESULT_JSON = "result.json"  # written last
ERROR = "error.txt"
LOCK = ".lock"

STATUSES = ("done", "diverged", "failed")


def _hparams_schema() -> Table:
    """``hparams.json``: the replicate, plus the keys each protocol's kind adds (from the registry)."""
    from prunelab.experiments.protocols import PROTOCOLS

    protocols = [PROTOCOLS.get(name) for name in PROTOCOLS]
    return Table(
        required={
            "kind": OneOf(*(p.kind for p in protocols)),
            "model": Table({"model": STR}, {"init": STR, "init_mode": STR, "bn_init": STR}),
            "dataset": Table({"dataset": STR}, {"augment": BOOL, "random_labels": NUM, "train_examples": Maybe(INT)}),
            "training": ANY_TABLE,
            "seed": INT,
        },
        optional={"id": STR},
        when={("kind", p.kind): p.hparams_schema() for p in protocols if p.hparams_schema()},
    )


RESULT = Table(
    required={"status": OneOf(*STATUSES)},
    optional={
        "id": STR, "kind": STR, "error": STR,
        "test_accuracy": Maybe(NUM), "test_loss": Maybe(NUM), "dense_accuracy": Maybe(NUM), "sparsity": Maybe(NUM),
        "wall_time": Maybe(NUM), "finished_at": Maybe(NUM), "started_at": Maybe(NUM),
        "steps": INT, "step": Maybe(INT), "level": INT, "prune_step": INT, "rewind_step": INT,
        "layer_sparsity": MapOf(NUM), "layer_collapse": ListOf(STR),
    },
    when={("status", "done"): {"test_accuracy": NUM}},
)

PROVENANCE = Table(required={"sessions": ListOf(Table(required={"started_at": STR}))})

SCHEMAS = {HPARAMS_JSON: _hparams_schema, RESULT_JSON: lambda: RESULT, PROVENANCE_JSON: lambda: PROVENANCE}


def read(path: str | os.PathLike, schema: Check | None = None) -> dict[str, Any] | None:
    """The JSON object in ``path`` checked against ``schema`` (by default the one of its file name), or
    None when the file does not exist.

    Raises :class:`DamagedRunFile` for undecodable bytes, invalid JSON or the wrong shape, and
    ``OSError`` (naming the file) when it cannot be read at all (no permission, a folder).
    """
    path = Path(path)
    schema = schema or SCHEMAS[path.name]()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedRunFile(path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedRunFile(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise DamagedRunFile(path, "JSON nested too deeply") from None
    why = schema(value)
    if why is not None:
        raise DamagedRunFile(path, why if isinstance(value, dict) else f"the file {why}")
    return value
