"""Training settings and the per-model recipes of Appendix A.3 of Frankle et al. 2021.

``TrainSettings`` is a frozen dataclass so it can be hashed into a run's identity by the experiment
layer; every field has a default, and adding a field with a default never changes an existing hash.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from prunelab.options import default_of, option, show_value
from prunelab.training.durations import Step
from prunelab.validate import check_fraction, check_name

OPTIMIZERS = ["sgd", "adam", "adamw"]
# Mixed-precision modes by name (prunelab.training.precision maps them to dtypes). ``amp=True``, the only
# mode before these, keeps its meaning (and its runs their hashes): float16 with loss scaling on CUDA,
# bfloat16 elsewhere.
AMP_MODES = ["bf16", "fp16"]

# torch takes 64-bit seeds; protocols add small offsets (ablation streams, lottery levels) to a replicate's
# seed, so seeds stop well below 2**63.
MAX_SEED = 2**62


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` if it is an integer torch accepts (0 <= seed <= 2**62), else a one-line ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{what} must be an integer in [0, 2**62], got {seed!r}")
    return seed


@dataclass(frozen=True)
class TrainSettings:
    train: str = option("40ep", help="total length of the schedule, a duration such as 160ep or 1000it")
    batch_size: int = option(128, help="examples per optimizer step")
    optimizer: str = option("sgd", help="optimizer", choices=lambda: OPTIMIZERS)
    lr: float = option(0.1, help="peak learning rate")
    momentum: float = option(0.0, help="momentum of sgd (adam and adamw use their default betas)")
    nesterov: bool = option(False, help="Nesterov momentum (sgd)")
    weight_decay: float = option(0.0, help="weight decay (L2 for sgd and adam, decoupled for adamw)")
    milestones: tuple[str, ...] = option((), help="steps at which the learning rate drops by gamma, as durations")
    gamma: float = option(0.1, help="learning-rate factor at each milestone")
    warmup: str = option("0it", help="linear warm-up of the learning rate from 0, as a duration")
    eval_every: str = option("1ep", help="test-set evaluation interval, as a duration (also at the end)")
    data_seed: int | None = option(None, help="seed of the data order and augmentation",
                                   unset="the replicate's seed")
    # part of the run's identity (numerics); True keeps the meaning it had before the named modes
    amp: bool | str = option(False, help="mixed precision: bf16 (bfloat16), fp16 (float16 with loss scaling), "
                             "or on alone: fp16 on CUDA, bf16 elsewhere", choices=lambda: AMP_MODES)

    def __post_init__(self) -> None:
        # Canonical values, so that equal settings hash equally whether they came from TOML or flags
        # ("1" and "1.0", "0ep" and "0it").
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        for name in ("train", "warmup", "eval_every"):
            object.__setattr__(self, name, str(Step.parse(getattr(self, name))))
        object.__setattr__(self, "milestones", tuple(str(Step.parse(m)) for m in self.milestones))
        self.validate()

    def validate(self) -> None:
        if Step.parse(self.train) == Step(0, 0):
            raise ValueError("training length must be positive, e.g. '40ep'")
        if Step.parse(self.eval_every) == Step(0, 0):
            raise ValueError("eval_every must be positive, e.g. '1ep'")
        check_name("optimizer", self.optimizer, OPTIMIZERS)
        if not isinstance(self.amp, bool):
            if not isinstance(self.amp, str):
                raise ValueError(f"amp must be true, false or one of {', '.join(AMP_MODES)}, got {self.amp!r}")
            check_name("amp mode", self.amp, AMP_MODES)
        if not self.batch_size >= 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        check_fraction(self.momentum, "momentum", "[0, 1)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.data_seed is not None:
            check_seed(self.data_seed, "data seed")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {self.weight_decay}")
        check_fraction(self.gamma, "gamma", "(0, 1]", "the factor of each learning-rate drop")

    def replace(self, **changes) -> TrainSettings:
        return dataclasses.replace(self, **changes)

    def data_seed_of(self, seed: int) -> int:
        """The seed of the data (order, augmentation, random labels) of a replicate of seed ``seed``."""
        return seed if self.data_seed is None else self.data_seed


_CIFAR = dict(train="160ep", batch_size=128, momentum=0.9, lr=0.1, milestones=("80ep", "120ep"), weight_decay=1e-4)
_TINY = dict(train="200ep", batch_size=256, momentum=0.9, lr=0.2, milestones=("100ep", "150ep"), weight_decay=1e-4)
_IMAGENET = dict(
    train="90ep", batch_size=1024, momentum=0.9, lr=0.4, milestones=("30ep", "60ep", "80ep"), weight_decay=1e-4
)

# Models outside Appendix A.3, with recipes of our choosing for Fashion-MNIST-sized data (README).
_MODEL_RECIPES = {
    # AdamW with warm-up, as vision transformers are usually trained (Dosovitskiy et al. 2021, App. B.1).
    "vit_tiny": dict(train="10ep", batch_size=128, optimizer="adamw", lr=1e-3, weight_decay=0.05, warmup="1ep",
                     milestones=("7ep", "9ep")),
    "lstm": dict(train="10ep", batch_size=128, optimizer="adam", lr=1e-3, milestones=("7ep",)),
}


def recipe(model: str, dataset: str) -> TrainSettings:
    """Default hyperparameters of Appendix A.3 (Frankle et al. 2021): LeNet 40 epochs, batch 128, SGD lr 0.1,
    no momentum;
    CIFAR ResNets/VGGs 160 epochs, momentum 0.9, lr 0.1 dropped 10x at 80 and 120, weight decay 1e-4;
    (modified) ResNet-18 on TinyImageNet 200 epochs, batch 256, lr 0.2, drops at 100 and 150;
    ResNet-50 on ImageNet 90 epochs, batch 1024, lr 0.4, drops at 30, 60, 80.
    Models outside the appendix (the Conv-k lottery nets, wide ResNets) take the nearest recipe;
    ``vit_tiny`` and ``lstm`` have recipes of their own (AdamW / Adam, 10 epochs).
    """
    if model in _MODEL_RECIPES:
        return TrainSettings(**_MODEL_RECIPES[model])
    if model.startswith("lenet"):
        return TrainSettings()
    if dataset == "imagenet":
        return TrainSettings(**_IMAGENET)
    if dataset == "tiny_imagenet":
        return TrainSettings(**_TINY)
    if dataset in ("mnist", "fashion_mnist") and model.startswith("conv"):
        return TrainSettings()
    return TrainSettings(**_CIFAR)


# (model, dataset) pairs whose recipes the help text quotes: one per recipe of Appendix A.3, and ours.
RECIPE_EXAMPLES = [("lenet_300_100", "fashion_mnist"), ("resnet20", "cifar10"), ("resnet18_modified", "tiny_imagenet"),
                   ("resnet50", "imagenet"), *((m, "fashion_mnist") for m in _MODEL_RECIPES)]


def recipe_default(name: str) -> str:
    """What the CLI's default of training field ``name`` is: the same in every recipe, or each recipe's value
    ("the recipe of the model: 40ep for lenet_300_100/fashion_mnist; 160ep for resnet20/cifar10; ...")."""
    by_value: dict[str, list[str]] = {}
    for model, dataset in RECIPE_EXAMPLES:
        where = model if model in _MODEL_RECIPES else f"{model}/{dataset}"
        by_value.setdefault(show_value(getattr(recipe(model, dataset), name)), []).append(where)
    if len(by_value) == 1:
        value = default_of(next(f for f in dataclasses.fields(TrainSettings) if f.name == name))
        return next(iter(by_value)) if value is not None else ""
    return "the recipe of the model: " + "; ".join(f"{v} for {', '.join(w)}" for v, w in by_value.items())


# ---- a training shorter than its recipe's schedule ---------------------------------------------------
# What a smoke test (``--train 100it``) expects: the recipe's warm-up and learning-rate drops are the recipe's
# choice, not the user's, so they follow the length the user gave, at the same fractions of training; a value
# the user gave is never changed, and one past the end is refused with every conflict in one line.

_FLAGS = {"warmup": "--warmup", "milestones": "--milestones"}


def _schedule(s: TrainSettings) -> dict[str, tuple[str, ...]]:
    return {"warmup": (s.warmup,), "milestones": s.milestones}


def _one_unit(s: TrainSettings) -> bool:
    """Whether the length and every schedule step are all in epochs or all in iterations: then which of them
    lie past the end is known without the iterations per epoch (without reading the data)."""
    steps = [Step.parse(v) for v in (s.train, s.warmup, *s.milestones)]
    steps = [x for x in steps if x != Step(0, 0)]
    return all(x.iterations == 0 for x in steps) or all(x.epochs == 0 for x in steps)


def schedule_conflicts(s: TrainSettings, iters_per_epoch: Callable[[], int]) -> dict[str, list[str]]:
    """The warm-up and milestones of ``s`` past the end of its training, by field (empty when none).
    ``iters_per_epoch`` is called only when the steps mix epochs and iterations."""
    ipe = 1 if _one_unit(s) else iters_per_epoch()
    total = Step.parse(s.train).to_iterations(ipe)
    return {name: past for name, values in _schedule(s).items()
            if (past := [v for v in values if Step.parse(v).to_iterations(ipe) > total])}


def _shown(value: str, iters_per_epoch: Callable[[], int]) -> str:
    """``1ep (469 it)``; ``100it`` as it is."""
    step = Step.parse(value)
    return value if step.epochs == 0 else f"{value} ({step.to_iterations(iters_per_epoch()):,} it)"


def _listed(conflicts: dict[str, list[str]], iters_per_epoch: Callable[[], int]) -> str:
    """``warmup 1ep (469 it) and milestones 7ep (3,283 it), 9ep (4,221 it)``."""
    names = {"warmup": "warmup", "milestones": "milestone"}
    return " and ".join(f"{names[name]}{'s' if len(values) > 1 else ''} "
                        f"{', '.join(_shown(v, iters_per_epoch) for v in values)}"
                        for name, values in conflicts.items())


def schedule_error(s: TrainSettings, conflicts: dict[str, list[str]], iters_per_epoch: Callable[[], int],
                   recipe_part: str = "") -> ValueError:
    """The one-line refusal of a schedule whose ``conflicts`` lie past the end of training: every one of
    them, and the flags that fix them."""
    flags = " and ".join(_FLAGS[name] for name in conflicts)
    verb = "is" if sum(len(v) for v in conflicts.values()) == 1 else "are"
    return ValueError(f"{_listed(conflicts, iters_per_epoch)} {verb} past the end of training "
                      f"{_shown(s.train, iters_per_epoch)}: give {flags} within it, or a longer --train{recipe_part}")


def check_schedule(s: TrainSettings, iters_per_epoch: Callable[[], int]) -> None:
    """ValueError naming every warm-up and milestone past the end of training in one line."""
    if conflicts := schedule_conflicts(s, iters_per_epoch):
        raise schedule_error(s, conflicts, iters_per_epoch)


def fit_schedule(s: TrainSettings, recipe_settings: TrainSettings, iters_per_epoch: Callable[[], int],
                 recipe_name: str = "the recipe") -> tuple[TrainSettings, str | None]:
    """``s`` with the recipe's schedule scaled to a training too short for it, and the one-line note that
    says so; ``s`` itself and None when nothing lies past its end (every training that ran before).

    A schedule field is the recipe's when its value is the recipe's (``recipe_settings``): only those scale,
    all together (warm-up and milestones keep their fractions of training, ``7ep`` of ``10ep`` becoming
    ``70it`` of ``100it``), in epochs when that is exact, else in iterations. A field the user set that lies
    past the end is refused: one line lists every conflict, the recipe's beside the user's."""
    conflicts = schedule_conflicts(s, iters_per_epoch)
    if not conflicts:
        return s, None
    theirs = [name for name, values in _schedule(s).items()
              if values == _schedule(recipe_settings)[name] and any(Step.parse(v) != Step(0, 0) for v in values)]
    if users := {name: values for name, values in conflicts.items() if name not in theirs}:
        recipe_part = {name: values for name, values in conflicts.items() if name in theirs}
        also = (f" ({recipe_name}'s {_listed(recipe_part, iters_per_epoch)} would be scaled to it)"
                if recipe_part else "")
        raise schedule_error(s, users, iters_per_epoch, also)
    total, length = Step.parse(s.train), Step.parse(recipe_settings.train)
    n_total, n_length = total.to_iterations(iters_per_epoch()), length.to_iterations(iters_per_epoch())

    def scaled(value: str) -> str:
        v = Step.parse(value)
        if total.iterations == v.iterations == length.iterations == 0:
            epochs = Fraction(v.epochs * total.epochs, length.epochs)
            if epochs.denominator == 1:
                return f"{epochs.numerator}ep"
        return f"{round(Fraction(v.to_iterations(iters_per_epoch()) * n_total, n_length))}it"

    changes: dict[str, object] = {}
    if "warmup" in theirs:
        changes["warmup"] = scaled(s.warmup)
    if "milestones" in theirs:
        changes["milestones"] = tuple(scaled(m) for m in s.milestones)
    fitted = dataclasses.replace(s, **changes)
    what = "; ".join(f"{name} {', '.join(_schedule(s)[name])} -> {', '.join(_schedule(fitted)[name])}"
                     for name in changes)
    def length_of(step: Step, n: int) -> str:
        return str(step) if step.epochs == 0 else f"{step} ({n:,} it)"

    note = (f"training {length_of(total, n_total)} is shorter than {recipe_name}'s schedule of "
            f"{length_of(length, n_length)}: its {what}, scaled to the same fractions of training "
            f"({' and '.join(_FLAGS[n] for n in changes)} to choose them)")
    return fitted, note
