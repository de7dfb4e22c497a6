"""What the registries hold, for the commands that answer without importing torch.

The registries of criteria, models, datasets, initializers, ... fill themselves as their modules are
imported, and those modules import torch, which takes seconds. ``prunelab list``, ``--help`` and the
choices of the flags need only names and one-line descriptions, so they are kept here as tables, and
``tests/test_cli_startup.py`` compares every table with its live registry: a new criterion or model fails
that test until its line is added here (``python -m prunelab.catalog`` prints the tables as they should be).

Once a registry's module is imported (a run, or a Python session that registered its own criterion), the
live registry is read instead, since it may hold more than the table.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

# ---- the tables: name, one-line description, citation -------------------------------------------------

METHODS = [
    ("random", "uniform random scores from the seed", "Frankle et al. 2021, §3"),
    ("magnitude", "|w|", "Han et al. 2015; Frankle et al. 2021, §3"),
    ("snip", "|dL/dw * w| on a batch", "Lee et al. 2019"),
    ("iterative_snip", "SNIP |dL/dw * w| re-scored over 100 iterations", "Frankle et al. 2021, App. G"),
    ("grasp", "-w * (H g), pruning the highest scores", "Wang et al. 2020; Frankle et al. 2021, App. C"),
    ("grasp_abs", "|-w * (H g)|, pruning the lowest magnitudes", "Frankle et al. 2021, App. H"),
    ("lamp", "w^2 / sum of w'^2 over w and those after it, its tensor sorted by |w|", "Lee et al. 2021"),
    ("npb", "1 for the weights kept by node-path balancing, optimized layer by layer", "Pham et al. 2023"),
    (
        "ntk_sap",
        "|d/dm of ||f(x; w*m) - f(x; (w+dw)*m)||^2| at redrawn weights on noise",
        "Wang et al. 2023",
    ),
    (
        "px",
        "w^2 * dR/d(w^2), R = path-kernel bound on the NTK trace from data and |w|^2",
        "Iurada et al. 2024",
    ),
    ("phew", "the union of random walks input<->output biased by |w|, up to the budget", "Patil & Dovrolis 2021"),
    ("force", "|w * dL/dw| at the pruned network, pruned weights too: they can come back", "de Jorge et al. 2021"),
    ("iter_snip_dejorge", "SNIP |dL/dw * w| re-scored over 60 steps, removal permanent", "de Jorge et al. 2021"),
    ("prospr", "|dL(w_M)/dc|, the meta-gradient through M SGD steps from w = c * theta", "Alizadeh et al. 2022"),
    ("l1_channel", "channels by the L1 norm of their weights", "Paganini & Forde 2020, §3.1"),
    ("l2_channel", "channels by the L2 norm of their weights", "Paganini & Forde 2020, §3.1"),
    ("linf_channel", "channels by the L-infinity norm (largest |w|) of their weights", "Paganini & Forde 2020, §3.1"),
    (
        "lneginf_channel",
        "channels by the L-(-infinity) norm (smallest |w|) of their weights",
        "Paganini & Forde 2020, §3.1",
    ),
    ("random_channel", "whole channels at random from the seed", "Paganini & Forde 2020, §3.1"),
    ("hybrid", "L1 channels in convolutions, L1 weights in linear layers", "Paganini & Forde 2020, §3.1"),
    ("synflow", "|dR/dw * w| for R = sum of outputs of the float64 |w| network on ones", "Tanaka et al. 2020"),
]
MODELS = [
    ("conv2", "Conv-2: 64, 64, pool; fc 256, 256, classes", "Frankle & Carbin 2019, Fig. 2"),
    ("conv4", "Conv-4: 64, 64, pool, 128, 128, pool; fc 256, 256, classes", "Frankle & Carbin 2019, Fig. 2"),
    ("conv6", "Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool", "Frankle & Carbin 2019, Fig. 2"),
    (
        "lenet_300_100",
        "Input flattened -> 300 -> 100 -> classes, ReLU after both hidden layers",
        "LeCun et al. 1998; Frankle et al. 2021, App. A.1, K",
    ),
    (
        "lenet5",
        "LeNet-5-Caffe as used by SNIP (Lee et al. 2019, §5.1, Table 1)",
        "Lee et al. 2019, §5.1 (SNIP's LeNet-5-Caffe)",
    ),
    ("lenet_pf", "The LeNet of Paganini & Forde 2020 (Fig. 5", "Paganini & Forde 2020, §4, Fig. 5 (their LeNet)"),
    (
        "resnet20",
        "ResNet-20 for CIFAR (n = 3); width multiplies every channel count",
        "He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)",
    ),
    (
        "resnet32",
        "ResNet-32 for CIFAR (n = 5); width multiplies every channel count",
        "He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)",
    ),
    (
        "resnet44",
        "ResNet-44 for CIFAR (n = 7); width multiplies every channel count",
        "He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)",
    ),
    (
        "resnet56",
        "ResNet-56 for CIFAR (n = 9); width multiplies every channel count",
        "He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)",
    ),
    (
        "resnet110",
        "ResNet-110 for CIFAR (n = 18); width multiplies every channel count",
        "He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)",
    ),
    (
        "resnet18",
        "torchvision's ResNet-18 (7x7 stride-2 stem, max-pool), 11,689,512...",
        "He et al. 2016; torchvision (Frankle et al. 2021, App. A.1)",
    ),
    (
        "resnet50",
        "torchvision's ResNet-50 (bottleneck blocks), 25,557,032 parameters...",
        "He et al. 2016; torchvision (Frankle et al. 2021, App. A.1)",
    ),
    (
        "resnet18_modified",
        "ResNet-18 with a 3x3 stride-1 stem (padding 1) and no max-pool, for...",
        "Tanaka et al. 2020 (SynFlow); Frankle et al. 2021, App. A.1, D.3",
    ),
    ("vit_tiny", "A small vision transformer", "Dosovitskiy et al. 2021 (ViT), scaled down"),
    (
        "lstm",
        "An LSTM over the image's rows, hidden size 128",
        "Hochreiter & Schmidhuber 1997; rows as a sequence (Le et al. 2015)",
    ),
    ("vgg11", "VGG11 for CIFAR", "Frankle et al. 2021, App. A.1 (OpenLTH cifar_vgg); Lee et al. 2019 (VGG-like)"),
    ("vgg13", "VGG13 for CIFAR", "Frankle et al. 2021, App. A.1 (OpenLTH cifar_vgg); Lee et al. 2019 (VGG-like)"),
    ("vgg16", "VGG16 for CIFAR", "Frankle et al. 2021, App. A.1 (OpenLTH cifar_vgg); Lee et al. 2019 (VGG-like)"),
    ("vgg19", "VGG19 for CIFAR", "Frankle et al. 2021, App. A.1 (OpenLTH cifar_vgg); Lee et al. 2019 (VGG-like)"),
]
# name, default iterations, default scope: what --help says a criterion does when they are not given
METHOD_DEFAULTS = [
    ("random", 1, "global"),
    ("magnitude", 1, "global"),
    ("snip", 1, "global"),
    ("iterative_snip", 100, "global"),
    ("grasp", 1, "global"),
    ("grasp_abs", 1, "global"),
    ("lamp", 1, "global"),
    ("npb", 1, "global"),
    ("ntk_sap", 20, "global"),
    ("px", 100, "global"),
    ("phew", 1, "global"),
    ("force", 60, "global"),
    ("iter_snip_dejorge", 60, "global"),
    ("prospr", 1, "global"),
    ("l1_channel", 1, "layer"),
    ("l2_channel", 1, "layer"),
    ("linf_channel", 1, "layer"),
    ("lneginf_channel", 1, "layer"),
    ("random_channel", 1, "layer"),
    ("hybrid", 1, "layer"),
    ("synflow", 100, "global"),
]
# family key -> heading of ``prunelab list methods``, in the order the groups are listed
FAMILIES = {
    "baseline": "baselines",
    "init_data": "at initialization, data-dependent",
    "init_data_free": "at initialization, data-free",
    "after_training": "after training (magnitude-based; also applicable at initialization)",
    "structured": "structured (whole channels)",
}
# name, family, year of the work the criterion comes from: how ``prunelab list methods`` groups them
METHOD_GROUPS = [
    ("random", "baseline", 2021),
    ("magnitude", "after_training", 2015),
    ("snip", "init_data", 2019),
    ("iterative_snip", "init_data", 2021),
    ("grasp", "init_data", 2020),
    ("grasp_abs", "init_data", 2021),
    ("lamp", "after_training", 2021),
    ("npb", "init_data_free", 2023),
    ("ntk_sap", "init_data_free", 2023),
    ("px", "init_data", 2024),
    ("phew", "init_data_free", 2021),
    ("force", "init_data", 2021),
    ("iter_snip_dejorge", "init_data", 2021),
    ("prospr", "init_data", 2022),
    ("l1_channel", "structured", 2020),
    ("l2_channel", "structured", 2020),
    ("linf_channel", "structured", 2020),
    ("lneginf_channel", "structured", 2020),
    ("random_channel", "structured", 2020),
    ("hybrid", "structured", 2020),
    ("synflow", "init_data_free", 2020),
]
# name, the options a run may set (--method-options NAME=VALUE) with their defaults: prunelab list options
METHOD_OPTIONS = [
    ("snip", "batchnorm_train=true"),
    ("iterative_snip", "batchnorm_train=true"),
    ("grasp", "temperature=200.0 batchnorm_train=true"),
    ("grasp_abs", "temperature=200.0 batchnorm_train=true"),
    ("npb", "alpha=0.01 beta=1.0 max_per_kernel=0 budgets=erk"),
    ("ntk_sap", "epsilon=0.01 weight_samples=1 noise_batch_size=100 init=model"),
    ("force", "batchnorm_train=true"),
    ("iter_snip_dejorge", "batchnorm_train=true"),
    ("prospr", "steps=3 lr=0.1 momentum=0.0 first_order=false batchnorm_train=true"),
    ("l1_channel", "axis=input"),
    ("l2_channel", "axis=input"),
    ("linf_channel", "axis=input"),
    ("lneginf_channel", "axis=input"),
    ("random_channel", "axis=input"),
    ("hybrid", "axis=input"),
]
DATASETS = [
    ("mnist", "handwritten digits, 60k train / 10k test, 28x28 grey", "LeCun et al. 1998"),
    ("fashion_mnist", "Zalando clothing images, 60k train / 10k test, 28x28 grey", "Xiao et al. 2017"),
    ("cifar10", "natural images in 10 classes, 50k train / 10k test, 32x32 colour", "Krizhevsky 2009"),
    ("cifar100", "natural images in 100 classes, 50k train / 10k test, 32x32 colour", "Krizhevsky 2009"),
    ("tiny_imagenet", "200 ImageNet classes, 100k train / 10k val, 64x64 colour", "Le & Yang 2015"),
    ("imagenet", "ILSVRC-2012, 1000 classes, 1.28M train / 50k val, resized to 224x224", "Russakovsky et al. 2015"),
]
INITIALIZERS = ["kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "torch_default",
                "standard_normal", "truncated_normal"]
FAN_MODES = ["fan_in", "fan_out"]
BN_INITS = ["uniform", "ones"]
DISTRIBUTIONS = ["uniform", "er", "erk"]
GROW_GRADIENTS = ["after_step", "step"]
LOGGERS = ["tensorboard", "wandb"]
EXECUTORS = ["local", "slurm"]

# ---- the live registries ----------------------------------------------------------------------------


def split_citation(text: str) -> tuple[str, str]:
    """``"|dL/dw * w| on a batch (Lee et al. 2019)"`` -> ``("|dL/dw * w| on a batch", "Lee et al. 2019")``:
    a trailing parenthesis that names a year is the citation."""
    m = re.match(r"^(.*?)\s*\(([^()]*\b(?:19|20)\d\d\b[^()]*)\)\s*$", text)
    return (m.group(1), m.group(2)) if m else (text, "")


def first_sentence(doc: str | None, limit: int = 72) -> str:
    """The first sentence of a docstring's first paragraph; when too long, its first clause (up to "; " or
    ": ") or its first ``limit`` characters."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].replace("``", "").split())
    sentence = re.split(r"(?<!et al\.)(?<=\.)\s+(?=[A-Z])", paragraph, maxsplit=1)[0].rstrip(".")
    for sep in ("; ", ": "):
        if len(sentence) > limit and sep in sentence[:limit]:
            sentence = sentence[: sentence.index(sep)]
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rsplit(" ", 1)[0].rstrip(",") + "..."


def _live_methods() -> list[tuple[str, str, str]]:
    from prunelab.scores import get_method, methods

    return [(name, *split_citation(get_method(name).description)) for name in methods()]


def _live_method_defaults() -> list[tuple[str, int, str]]:
    from prunelab.scores import methods

    return [(name, m.default_iterations, m.default_scope) for name, m in methods().items()]


def _live_method_groups() -> list[tuple[str, str | None, int | None]]:
    from prunelab.scores import methods

    return [(name, m.family, m.year) for name, m in methods().items()]


def _live_method_options() -> list[tuple[str, str]]:
    from prunelab.scores import methods
    from prunelab.scores.registry import option_text

    return [(name, " ".join(f"{k}={option_text(v)}" for k, v in m.text_options.items()))
            for name, m in methods().items() if m.text_options]


def _live_models() -> list[tuple[str, str, str]]:
    from prunelab import models

    return [(name, first_sentence(models.MODELS.get(name).__doc__), models.MODELS.meta(name).get("paper", ""))
            for name in models.names()]


def _live_datasets() -> list[tuple[str, str, str]]:
    from prunelab import data

    return [(name, data.info(name).get("description", ""), data.info(name).get("citation", ""))
            for name in data.names()]


def _initializers(attribute: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        from prunelab.models import initializers

        value = getattr(initializers, attribute)
        return value.names() if hasattr(value, "names") else list(value)

    return read


def _distributions() -> list[str]:
    from prunelab.densities import DISTRIBUTIONS

    return list(DISTRIBUTIONS)


def _grow_gradients() -> list[str]:
    from prunelab.sparse_training import GROW_GRADIENTS

    return list(GROW_GRADIENTS)


def _loggers() -> list[str]:
    from prunelab.training.loggers import LOGGERS

    return LOGGERS.names()


def _executors() -> list[str]:
    from prunelab.experiments.sweep import EXECUTORS

    return list(EXECUTORS)


# kind -> (the module whose import fills the registry, how to read it, the table)
KINDS: dict[str, tuple[str, Callable[[], list], list]] = {
    "methods": ("prunelab.scores", _live_methods, METHODS),
    "method_defaults": ("prunelab.scores", _live_method_defaults, METHOD_DEFAULTS),
    "method_groups": ("prunelab.scores", _live_method_groups, METHOD_GROUPS),
    "method_options": ("prunelab.scores", _live_method_options, METHOD_OPTIONS),
    "models": ("prunelab.models", _live_models, MODELS),
    "datasets": ("prunelab.data", _live_datasets, DATASETS),
    "initializers": ("prunelab.models.initializers", _initializers("INITIALIZERS"), INITIALIZERS),
    "fan_modes": ("prunelab.models.initializers", _initializers("FAN_MODES"), FAN_MODES),
    "bn_inits": ("prunelab.models.initializers", _initializers("BN_INITS"), BN_INITS),
    "distributions": ("prunelab.densities", _distributions, DISTRIBUTIONS),
    "grow_gradients": ("prunelab.sparse_training", _grow_gradients, GROW_GRADIENTS),
    "loggers": ("prunelab.training.loggers", _loggers, LOGGERS),
    "executors": ("prunelab.experiments.sweep", _executors, EXECUTORS),
}


def live(kind: str) -> list:
    """The registry itself (imports it, and torch)."""
    return KINDS[kind][1]()


def entries(kind: str) -> list:
    """The live registry when its module is already imported, else the table."""
    module, read, table = KINDS[kind]
    return read() if module in sys.modules else list(table)


def names(kind: str) -> list[str]:
    """The names of one registry, without importing it unless it already is."""
    return [e[0] if isinstance(e, tuple) else e for e in entries(kind)]


if __name__ == "__main__":  # the tables as the live registries would have them
    for _kind, (_, _read, _) in KINDS.items():
        _rows = [tuple(r) if isinstance(r, (tuple, list)) else r for r in _read()]
        print(f"{_kind.upper()} = {_rows!r}")
