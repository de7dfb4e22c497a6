"""Hyperparameter dataclasses -> CLI flags, TOML overrides, and a canonical run hash.

A run's identity is a hash of its *non-default* fields only (OpenLTH's rule), so adding a field
with a default to any dataclass never changes the hash of an existing run.

This module holds what every protocol shares: identity and hash, flags, TOML reading, and the sections
of the replicate ([model], [dataset], [training]). Each protocol's own dataclass lives beside the
protocol (:mod:`prunelab.experiments.protocols`), and the config sections are read from the registry
(:func:`sections`), so a new protocol touches no line here. The protocols' dataclasses stay importable
from here by name (``from prunelab.experiments.hparams import PruneHparams``), imported on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from prunelab import catalog
from prunelab.options import describe, is_execution_field, option


def identity_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict(obj)`` without its execution fields: what ``hparams.json`` records."""
    return {k: v for k, v in dataclasses.asdict(obj).items()
            if not is_execution_field(next(f for f in dataclasses.fields(obj) if f.name == k))}


def nondefault_fields(obj: Any) -> dict[str, Any]:
    """The fields of dataclass ``obj`` whose values differ from their defaults, as JSON-ready values
    (execution fields left out: they never enter a run's identity)."""
    out = {}
    for f in dataclasses.fields(obj):
        if is_execution_field(f):
            continue
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


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", group: str | None = None,
                        required: Iterable[str] = (), defaults: Callable[[str], str] | None = None) -> None:
    """One flag per field of ``cls``; defaults are None so that only flags given on the command line override.

    Each flag's help is the field's description (:func:`prunelab.options.option`), its valid names and its
    default; ``defaults(name)`` replaces the dataclass's default in the help where the caller resolves
    it otherwise (the training recipe of the model). Booleans get ``--x/--no-x`` (never ``type=bool``,
    which treats the string "False" as true). Tuples take several values (``--milestones 80ep 120ep``).
    """
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        flag, dest = _flag(f.name, prefix), prefix + f.name
        default = (defaults(f.name) or None) if defaults else None
        help_text = describe(f, default, required=f.name in set(required)).replace("%", "%%")  # argparse's % format
        if tp is bool:
            target.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif set(typing.get_args(tp)) == {bool, str}:
            add_switch_with_mode(target, flag, dest, help_text)
        elif typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            target.add_argument(flag, dest=dest, nargs="*", type=inner, default=None, help=help_text,
                                metavar=f.name.upper().rstrip("S"))
        else:
            kind = _parse_optional(tp) if optional else tp
            target.add_argument(flag, dest=dest, type=kind, default=None, help=help_text,
                                metavar=_metavar(f.name, tp))


def _metavar(name: str, tp: Any) -> str:
    """NAME for name-valued and path fields, the type for numbers (--lr FLOAT), else the field's name."""
    return {int: "INT", float: "FLOAT"}.get(tp, name.upper())


def add_switch_with_mode(target, flag: str, dest: str, help_text: str, default: Any = None) -> None:
    """A switch that may name a mode: ``--amp`` (True), ``--amp bf16`` (the string), ``--no-amp`` (False)."""
    target.add_argument(flag, dest=dest, nargs="?", const=True, default=default, metavar="MODE",
                        help=f"{help_text}; a mode name, or alone: on in its default mode")
    target.add_argument("--no-" + flag[2:], dest=dest, action="store_const", const=False, help=argparse.SUPPRESS)


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


# ---- where name-valued fields take their choices from (read when help is shown) ------------------
# Shared by the replicate's sections below and by the protocols' own dataclasses
# (prunelab.experiments.protocols), which import them from here. Read through prunelab.catalog: the live
# registry once it is imported, else its table, so that --help never imports torch.

def model_names() -> list[str]:
    return catalog.names("models")


def initializer_names() -> list[str]:
    return catalog.names("initializers")


def _fan_modes() -> list[str]:
    return catalog.names("fan_modes")


def _bn_inits() -> list[str]:
    return catalog.names("bn_inits")


def dataset_names() -> list[str]:
    return catalog.names("datasets")


def method_names() -> list[str]:
    return catalog.names("methods")


def distribution_names() -> list[str]:
    return catalog.names("distributions")


@dataclasses.dataclass(frozen=True)
class ModelHparams:
    model: str = option("lenet_300_100", help="network (also wide ResNets: wrn_<depth>_<k>; timm:NAME and "
                        "torchvision:NAME, those libraries' models at their own initialization)",
                        choices=model_names)
    init: str = option("kaiming_normal", help="weight initializer", choices=initializer_names)
    init_mode: str = option("fan_in", help="fan the initializer's variance is scaled by", choices=_fan_modes)
    bn_init: str = option("uniform", help="BatchNorm scale init: U[0, 1) or ones", choices=_bn_inits)

    def build(self, num_classes: int, input_shape, seed: int = 0, init: str | None = None):
        """The network these settings name, for ``num_classes`` and ``input_shape``, initialized from ``seed``
        (``init``: another initializer, as the reinit ablation draws)."""
        from prunelab import models

        return models.create(self.model, num_classes=num_classes, input_shape=input_shape, seed=seed,
                             init=init or self.init, init_mode=self.init_mode, bn_init=self.bn_init)


@dataclasses.dataclass(frozen=True)
class DataHparams:
    dataset: str = option("fashion_mnist", help="dataset (prunelab list datasets)", choices=dataset_names)
    augment: bool = option(True, help="the dataset's training augmentation (CIFAR: flip + 4 px shift; Tiny "
                           "ImageNet, ImageNet: random resized crop + flip; none for the MNIST family)")
    # Fitting random labels (Zhang et al. 2017, §2; Lee et al. 2019, §5.6): only the training labels; the
    # test set and the batch that data-driven criteria score keep the true ones (Runner.training_data).
    random_labels: float = option(0.0, help="fraction of the training labels replaced by classes drawn uniformly "
                                  "at random, fixed once per data seed (Zhang et al. 2017, §2: 1 = all random); "
                                  "the test set and the pruning score keep the true labels")
    train_examples: int | None = option(None, help="train on this many training examples, a random subset drawn "
                                        "once and the same for every seed (random labels are then drawn within "
                                        "it); the test set is untouched", unset="all of them")

    def __post_init__(self) -> None:
        from prunelab.validate import check_label_fraction

        object.__setattr__(self, "random_labels", check_label_fraction(self.random_labels))  # 1 and 1.0: one run
        n = self.train_examples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"train_examples must be a positive whole number of training examples, got {n!r}")


def canonicalize(obj: Any, floats: tuple[str, ...] = (), durations: tuple[str, ...] = ()) -> None:
    """Normalize fields in place so that equal settings hash equally ("1" vs "1.0", "0ep" vs "0it")."""
    from prunelab.training.durations import Step

    for name in floats:
        value = getattr(obj, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            object.__setattr__(obj, name, float(value))
    for name in durations:
        try:
            object.__setattr__(obj, name, str(Step.parse(getattr(obj, name))))
        except ValueError:
            pass  # reported with the field's own message below


def check_duration(text: str, what: str, extra: list[str] = ()) -> None:
    """A one-line error unless ``text`` is a duration ("0it", "1000it", "2ep"); ``extra`` lists the other
    words the field accepts, for the message."""
    from prunelab.training.durations import Step

    try:
        Step.parse(text)
    except ValueError:
        others = "".join(f", {e!r}" for e in extra)
        raise ValueError(f"{what} {text!r} is not a duration like '0it', '1000it' or '2ep'{others}") from None


# ---- config sections: the replicate's, then one per registered protocol ---------------------------

REPLICATE_SECTIONS = ("model", "dataset", "training")  # "training": TrainSettings, resolved by the recipe


def sections() -> dict[str, type | None]:
    """TOML section -> its dataclass: the replicate's ([model], [dataset], [training]: None, the training
    settings) and the section of every registered protocol that has one, in registration order."""
    from prunelab.experiments.protocols import PROTOCOLS

    out: dict[str, type | None] = {"model": ModelHparams, "dataset": DataHparams, "training": None}
    for name in PROTOCOLS:
        protocol = PROTOCOLS.get(name)
        if protocol.section is not None:
            out.setdefault(protocol.section, protocol.hparams)
    return out


# Names that moved beside their protocol, importable from here as before (imported on first use: the
# protocols import this module, so importing them at the top would be a cycle).
_MOVED = {
    "PruneHparams": "prune_at", "ABLATIONS": "prune_at", "MAX_PRUNE_ITERATIONS": "prune_at",
    "LotteryHparams": "lottery", "LOTTERY_ABLATIONS": "lottery", "REWIND_CHOICES": "lottery",
    "STRUCTURES": "lottery", "MAX_LEVELS": "lottery",
    "GradualHparams": "sparse", "DynamicHparams": "sparse",
}


def __getattr__(name: str) -> Any:
    if name == "SECTIONS":  # the sections as the registry holds them now
        return sections()
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"prunelab.experiments.protocols.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def config_toml(sections: dict[str, Any], seed: int | None = None, header: Iterable[str] = ()) -> str:
    """Settings as a TOML config that ``--config`` reads back: one table per section (dataclass instances),
    every key with its one-line description as a comment; a None value is a commented-out line saying
    what None means. ``header`` lines become comments at the top."""
    lines = [f"# {h}" for h in header]
    if seed is not None:
        lines.append(f"seed = {seed}  # replicate seed: initialization and data order")
    for section, obj in sections.items():
        lines += ["", f"[{section}]"]
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            about = describe(f, default="")
            if value is None:
                lines.append(f"# {f.name} = (not set: {describe(f).rpartition('default: ')[2]})  # {about}")
            else:
                lines.append(f"{f.name} = {_toml_value(value)}  # {about}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """A TOML literal of a setting: booleans, integers, floats, strings and tuples of strings (JSON's string
    escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def read_toml(path) -> dict[str, Any]:
    """The raw TOML table of a file; one-line errors for a missing or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"config {path} is not UTF-8 text (byte at offset {e.start})") from None


def section_fields(section: str) -> dict[str, Any]:
    """Field name -> type of a config section."""
    from prunelab.training.settings import TrainSettings

    return typing.get_type_hints(sections()[section] or TrainSettings)


def check_section(path, section: str, values: Any, grid: bool = False) -> dict[str, Any]:
    """Validate one table: known keys, right types; the table itself when it is valid. With ``grid``, a list
    (of values) is an axis to sweep."""
    from prunelab.validate import check_name, unknown_name_message

    known = sections()
    try:
        check_name("section", section, known)
    except ValueError as e:
        raise ValueError(f"config {path}: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config {path}: [{section}] must be a table")
    hints = section_fields(section)
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"config {path}: " + unknown_name_message(f"key in [{section}]", key, list(hints)))
        axis = grid_values(value, hints[key]) if grid else [value]
        if not axis:
            raise ValueError(f"config {path}: [{section}] {key} is an empty list; an axis of the grid needs at least "
                             "one value")
        for v in axis:
            _check_type(path, section, key, v, hints[key])
    return values


def grid_values(value: Any, tp: Any) -> list[Any]:
    """The values of a sweep axis: a list is an axis, except for tuple fields, where a list of lists is."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        return value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
    return value if isinstance(value, list) else [value]


def load_toml(path) -> dict[str, Any]:
    """Read a config: tables [model], [dataset], [training], one per protocol ([pruning], [lottery], ...: see
    :func:`sections`) and a top-level ``seed``.

    Unknown tables or keys and values of the wrong type raise ValueError naming them.
    """
    out: dict[str, Any] = {}
    for section, values in read_toml(path).items():
        if section == "seed":
            from prunelab.training.settings import check_seed

            out["seed"] = check_seed(values, f"config {path}: seed")
            continue
        known = sections()
        if section not in known:
            from prunelab.validate import unknown_name_message

            raise ValueError(f"config {path}: " + unknown_name_message("section", section, [*known, "seed"]))
        check_section(path, section, values)
        out[section] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return out


def _check_type(path, section, key, value, tp) -> None:
    tp, optional = _unwrap_optional(tp)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if typing.get_origin(tp) is tuple:
        good = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        good = ok.get(tp, lambda v: True)(value)
    if not good:
        name = getattr(tp, "__name__", str(tp))
        raise ValueError(f"config {path}: [{section}] {key} must be {name}, got {value!r}")
