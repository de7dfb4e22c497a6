"""Training settings and the per-model recipes of Appendix A.3 of Frankle et al. 2021.

``TrainSettings`` is a frozen dataclass so it can be hashed into a run's identity by the experiment
layer; every field has a default, and adding a field with a default never changes an existing hash.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

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
