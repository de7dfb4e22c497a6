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
from collections.abc import Callable, Iterable
from typing import Any

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


# ---- the hyperparameters of an experiment -------------------------------------------------------

ABLATIONS = ["shuffle", "reinit", "invert", "fixed_variance", "sign", "sigma_sign"]
LOTTERY_ABLATIONS = ["shuffle", "reinit"]  # Frankle et al. 2021, App. F
REWIND_CHOICES = ["finetune", "sign", "sigma_sign"]  # besides a duration such as "0it" or "1000it"
SCHEDULES = ["exponential", "linear"]
SCOPES = ["global", "layer"]
# Upper bounds that catch a mistyped number before it starts days of work: 100x the pruning iterations of
# the papers (SynFlow and iterative SNIP use 100; Tanaka et al. 2020, §6), and levels past which
# (1 - rate)^levels leaves no weight of any network at the smallest rate anyone uses.
MAX_PRUNE_ITERATIONS = 10_000
MAX_LEVELS = 100
STRUCTURES = ["unstructured", "l1", "l2", "linf", "lneginf", "random", "random_unstructured", "hybrid", "fc_only"]


# ---- where name-valued fields take their choices from (read when help is shown) ------------------

def _model_names() -> list[str]:
    from prunelab import models

    return models.names()


def _initializers() -> list[str]:
    from prunelab.models.initializers import INITIALIZERS

    return INITIALIZERS.names()


def _fan_modes() -> list[str]:
    from prunelab.models.initializers import FAN_MODES

    return FAN_MODES


def _bn_inits() -> list[str]:
    from prunelab.models.initializers import BN_INITS

    return BN_INITS


def _dataset_names() -> list[str]:
    from prunelab import data

    return data.names()


def _methods() -> list[str]:
    from prunelab.scores import methods

    return list(methods())


def _distributions() -> list[str]:
    from prunelab.densities import DISTRIBUTIONS

    return list(DISTRIBUTIONS)


def _by_method(attribute: str, usual: Any) -> str:
    """"100 for iterative_snip, synflow; 1 otherwise": a criterion default that some criteria change."""
    from prunelab.scores import methods

    others: dict[Any, list[str]] = {}
    for name, method in methods().items():
        value = getattr(method, attribute)
        if value != usual:
            others.setdefault(value, []).append(name)
    return "".join(f"{v} for {', '.join(names)}; " for v, names in others.items()) + f"{usual} otherwise"


def _default_iterations() -> str:
    return "the criterion's own: " + _by_method("default_iterations", 1)


def _default_scope() -> str:
    return "layer with --distribution or --like, else the criterion's own: " + _by_method("default_scope", "global")


@dataclasses.dataclass(frozen=True)
class ModelHparams:
    model: str = option("lenet_300_100", help="network (also wide ResNets: wrn_<depth>_<k>)",
                        choices=_model_names)
    init: str = option("kaiming_normal", help="weight initializer", choices=_initializers)
    init_mode: str = option("fan_in", help="fan the initializer's variance is scaled by", choices=_fan_modes)
    bn_init: str = option("uniform", help="BatchNorm scale init: U[0, 1) or ones", choices=_bn_inits)


@dataclasses.dataclass(frozen=True)
class DataHparams:
    dataset: str = option("fashion_mnist", help="dataset (prunelab list datasets)", choices=_dataset_names)
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
        from prunelab.data.datasets import check_label_fraction

        object.__setattr__(self, "random_labels", check_label_fraction(self.random_labels))  # 1 and 1.0: one run
        n = self.train_examples
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"train_examples must be a positive whole number of training examples, got {n!r}")


@dataclasses.dataclass(frozen=True)
class PruneHparams:
    """One-shot or iterative pruning at step ``prune_at`` ("0it" = initialization, "end" = after training)."""

    method: str = option("magnitude", help="pruning criterion (prunelab list methods)", choices=_methods)
    sparsity: float = option(0.9, help="fraction of the covered weights pruned, in [0, 1)")
    prune_at: str = option("0it", help="step whose dense weights are pruned: 0it = initialization, a duration such "
                           "as 1000it, or end = after training")
    iterations: int | None = option(None, help="rounds of scoring and pruning to the target (Tanaka et al. 2020, "
                                    "Alg. 1)", unset=_default_iterations)
    schedule: str = option("exponential", help="density schedule over the rounds", choices=lambda: SCHEDULES)
    scope: str | None = option(None, help="rank all layers together (global) or each layer on its own",
                               choices=lambda: SCOPES, unset=_default_scope)
    ablation: str | None = option(None, help="ablation applied to the mask or weights (Frankle et al. 2021, §5)",
                                  choices=lambda: ABLATIONS, unset="none")
    reinit_init: str | None = option(None, help="initializer the reinit ablation draws the pruned network's weights "
                                     "from; Lee et al. 2019, §5.5 train every pruned network from Glorot (VS-X) "
                                     "weights: xavier_normal", choices=_initializers,
                                     unset="the model's own (model.init)")
    # SNIP/GraSP batch: 10 examples per class, not augmented (Frankle et al. 2021, App. B.2)
    batch_per_class: int = option(10, help="examples per class in the batch of data-driven criteria (Frankle et al. "
                                  "2021, App. B.2)")
    # What the mask covers (prunelab.coverage): biases, embedding tables, and parameters by exact name.
    include_bias: bool = option(False, help="prune biases too")
    include_embeddings: bool = option(False, help="prune embedding tables too")
    include: tuple[str, ...] = option((), help="parameter names the mask covers besides the default ones")
    exclude: tuple[str, ...] = option((), help="parameter names the mask leaves out")
    # Per-layer densities instead of one ranking: uniform | er | erk (Evci et al. 2020, §3), or those of
    # another mask (Frankle et al. 2021, §5's random baseline): like = a criterion (its run on the same
    # replicate, sparsity and step), a run id, or a mask file.
    distribution: str | None = option(None, help="per-layer densities instead of one global ranking (Evci et al. "
                                      "2020, §3)", choices=_distributions, unset="none")
    like: str | None = option(None, help="per-layer densities of another mask: a criterion (its run on this "
                              "replicate), a run id or a mask file (Frankle et al. 2021, §5)", unset="none")
    # An execution setting like the device, outside the run's identity: the score is the same sum
    # (prunelab.scores.batching), except that train-mode BatchNorm normalizes each micro-batch alone, which
    # prune() reports with a MicroBatchWarning.
    score_batch_size: int | None = option(None, help="SNIP/GraSP score at most this many examples per forward "
                                          "pass, to fit GPU memory (the same score; not part of the run id)",
                                          unset="the whole scoring batch at once", identity=False)

    def __post_init__(self) -> None:
        from prunelab.registry import check_name
        from prunelab.scores import get_method
        from prunelab.scores.batching import check_score_batch_size

        get_method(self.method)  # unknown criterion: the registry's message, with the closest name
        _canonical(self, floats=("sparsity",), durations=("prune_at",) if self.prune_at != "end" else ())
        for name in ("include", "exclude"):  # a set of names: the same set, the same run
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))
        check_name("schedule", self.schedule, SCHEDULES)
        if self.scope is not None:
            check_name("scope", self.scope, SCOPES)
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.iterations is not None and self.iterations > MAX_PRUNE_ITERATIONS:
            raise ValueError(f"iterations must be <= {MAX_PRUNE_ITERATIONS:,} (the papers use 100), "
                             f"got {self.iterations}")
        if self.batch_per_class < 1:
            raise ValueError(f"batch_per_class must be >= 1, got {self.batch_per_class}")
        if self.ablation is not None:
            check_name("ablation", self.ablation, ABLATIONS)
        if self.reinit_init is not None:
            check_name("reinit_init", self.reinit_init, _initializers())
            if self.ablation != "reinit":
                got = "none" if self.ablation is None else repr(self.ablation)
                raise ValueError(f"reinit_init {self.reinit_init!r} is the initializer of the reinit ablation, so it "
                                 f"needs ablation 'reinit' (got {got})")
        if self.prune_at != "end":
            _check_duration(self.prune_at, "prune_at")
        if self.distribution is not None:
            from prunelab.densities import DISTRIBUTIONS

            check_name("distribution", self.distribution, list(DISTRIBUTIONS))
        if self.distribution is not None and self.like is not None:
            raise ValueError("give distribution or like, not both: like takes the layer densities of another mask")
        check_score_batch_size(self.score_batch_size)


    def coverage_options(self) -> dict[str, Any]:
        """The options of :func:`prunelab.coverage` this run sets (none by default)."""
        names = ("include_bias", "include_embeddings", "include", "exclude")
        return {n: getattr(self, n) for n in names if getattr(self, n)}


@dataclasses.dataclass(frozen=True)
class LotteryHparams:
    """Lottery-ticket rewinding (one level) and iterative magnitude pruning (several),
    Frankle et al. 2021, §3 and Paganini & Forde 2020, §3."""

    levels: int = option(1, help="pruning levels: 1 = one-shot, more = iterative magnitude pruning")
    rate: float = option(0.2, help="fraction of the remaining weights pruned per level")
    rewind_to: str = option("0it", help="step the kept weights are rewound to before retraining (a duration), or "
                            "finetune = keep the trained weights, sign / sigma_sign = reinitialize with the trained "
                            "signs", choices=lambda: REWIND_CHOICES)
    structure: str = option("unstructured", help="what is pruned: weights, or channels by a norm (Paganini & Forde "
                            "2020, §3.1)", choices=lambda: STRUCTURES)
    scope: str = option("global", help="rank all layers together (global) or each layer on its own",
                        choices=lambda: SCOPES)
    ablation: str | None = option(None, help="ablation of the ticket (Frankle et al. 2021, App. F)",
                                  choices=lambda: LOTTERY_ABLATIONS, unset="none")

    def __post_init__(self) -> None:
        from prunelab.registry import check_name

        _canonical(self, floats=("rate",),
                   durations=("rewind_to",) if self.rewind_to not in REWIND_CHOICES else ())
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels must be in [1, {MAX_LEVELS}], got {self.levels}")
        if not 0 < self.rate < 1:
            raise ValueError(f"rate must be in (0, 1), got {self.rate}")
        if self.rewind_to not in REWIND_CHOICES:
            _check_duration(self.rewind_to, "rewind_to", extra=REWIND_CHOICES)
        check_name("structure", self.structure, STRUCTURES)
        check_name("scope", self.scope, SCOPES)
        if self.ablation is not None:
            check_name("lottery ablation", self.ablation, LOTTERY_ABLATIONS)


@dataclasses.dataclass(frozen=True)
class GradualHparams:
    """Gradual magnitude pruning during training (Zhu & Gupta 2018, §3): the cubic schedule from
    ``initial_sparsity`` at ``start`` to ``sparsity`` at ``end``, pruning every ``every`` steps."""

    sparsity: float = option(0.9, help="final sparsity, in [0, 1)")
    initial_sparsity: float = option(0.0, help="sparsity at the first pruning step")
    start: str = option("0it", help="step of the first pruning, a duration")
    end: str | None = option(None, help="step of the last pruning, a duration",
                             unset="75% of training, rounded down to a multiple of every after start")
    every: str = option("100it", help="interval between pruning steps, a duration")
    scope: str = option("global", help="rank all layers together (global) or each layer on its own",
                        choices=lambda: SCOPES)

    def __post_init__(self) -> None:
        from prunelab.registry import check_name

        _canonical(self, floats=("sparsity", "initial_sparsity"),
                   durations=("start", "every") + (("end",) if self.end is not None else ()))
        if not 0 <= self.sparsity < 1 or not 0 <= self.initial_sparsity <= self.sparsity:
            raise ValueError(f"need 0 <= initial_sparsity <= sparsity < 1, got {self.initial_sparsity} and "
                             f"{self.sparsity}")
        for name in ("start", "every") + (("end",) if self.end is not None else ()):
            _check_duration(getattr(self, name), name)
        check_name("scope", self.scope, SCOPES)


@dataclasses.dataclass(frozen=True)
class DynamicHparams:
    """Dynamic sparse training, SET (Mocanu et al. 2018) and RigL (Evci et al. 2020, §3): every ``every``
    steps until ``end`` each layer drops ``drop_fraction`` of its weights (RigL: annealed to 0 by a
    cosine) and grows as many, starting from a random mask at the ``distribution`` layer densities."""

    sparsity: float = option(0.9, help="sparsity kept throughout training, in [0, 1)")
    drop_fraction: float = option(0.3, help="fraction of each layer's weights dropped and regrown per update")
    every: str = option("100it", help="interval between mask updates, a duration")
    end: str | None = option(None, help="step of the last mask update, a duration",
                             unset="75% of training (Evci et al. 2020, §3: T_end)")
    distribution: str = option("erk", help="layer densities of the initial random mask (Evci et al. 2020, §3)",
                               choices=_distributions)

    def __post_init__(self) -> None:
        from prunelab.densities import DISTRIBUTIONS
        from prunelab.registry import check_name

        _canonical(self, floats=("sparsity", "drop_fraction"),
                   durations=("every",) + (("end",) if self.end is not None else ()))
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 < self.drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in (0, 1), got {self.drop_fraction}")
        for name in ("every",) + (("end",) if self.end is not None else ()):
            _check_duration(getattr(self, name), name)
        check_name("distribution", self.distribution, list(DISTRIBUTIONS))


def _canonical(obj: Any, floats: tuple[str, ...] = (), durations: tuple[str, ...] = ()) -> None:
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


def _check_duration(text: str, what: str, extra: list[str] = ()) -> None:
    from prunelab.training.durations import Step

    try:
        Step.parse(text)
    except ValueError:
        others = "".join(f", {e!r}" for e in extra)
        raise ValueError(f"{what} {text!r} is not a duration like '0it', '1000it' or '2ep'{others}") from None


SECTIONS = {"model": ModelHparams, "dataset": DataHparams, "training": None, "pruning": PruneHparams,
            "lottery": LotteryHparams, "gradual": GradualHparams, "dynamic": DynamicHparams}


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

    return typing.get_type_hints(SECTIONS[section] or TrainSettings)


def check_section(path, section: str, values: Any, grid: bool = False) -> dict[str, Any]:
    """Validate one table: known keys, right types. With ``grid``, a list (of values) is an axis to sweep."""
    from prunelab.registry import unknown_name_message

    if section not in SECTIONS:
        raise ValueError(f"config {path}: " + unknown_name_message("section", section, list(SECTIONS)))
    if not isinstance(values, dict):
        raise ValueError(f"config {path}: [{section}] must be a table")
    hints = section_fields(section)
    for key, value in values.items():
        if key not in hints:
            raise ValueError(f"config {path}: " + unknown_name_message(f"key in [{section}]", key, list(hints)))
        values = grid_values(value, hints[key]) if grid else [value]
        if not values:
            raise ValueError(f"config {path}: [{section}] {key} is an empty list; an axis of the grid needs at least "
                             "one value")
        for v in values:
            _check_type(path, section, key, v, hints[key])
    return values


def grid_values(value: Any, tp: Any) -> list[Any]:
    """The values of a sweep axis: a list is an axis, except for tuple fields, where a list of lists is."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        return value if isinstance(value, list) and value and all(isinstance(v, list) for v in value) else [value]
    return value if isinstance(value, list) else [value]


def load_toml(path) -> dict[str, Any]:
    """Read a config: tables [model], [dataset], [training], [pruning], [lottery] and a top-level ``seed``.

    Unknown tables or keys and values of the wrong type raise ValueError naming them.
    """
    out: dict[str, Any] = {}
    for section, values in read_toml(path).items():
        if section == "seed":
            from prunelab.training.settings import check_seed

            out["seed"] = check_seed(values, f"config {path}: seed")
            continue
        if section not in SECTIONS:
            from prunelab.registry import unknown_name_message

            raise ValueError(f"config {path}: " + unknown_name_message("section", section, [*SECTIONS, "seed"]))
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
