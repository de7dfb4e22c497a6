"""prunelab: neural-network pruning research, centred on pruning at initialization."""

from prunelab.batches import Batch
from prunelab.coverage import (
    Coverage,
    CoverageWarning,
    coverage,
    mask_coverage,
    prunable_parameters,
    register_layer_type,
    tied_parameters,
)
from prunelab.densities import layer_densities, register_distribution
from prunelab.flops import FlopCount, flops
from prunelab.masks import Mask, remove_mask
from prunelab.pruning import LayerCollapseWarning, density_schedule, prune, remove, score
from prunelab.scores import Method, Scores, get_method, methods, register_method
from prunelab.sparse_training import SET, GradualMagnitude, MaskSchedule, MaskUpdates, RigL
from prunelab.wrappers import unwrap

__all__ = [
    "Batch",
    "Coverage",
    "CoverageWarning",
    "FlopCount",
    "GradualMagnitude",
    "LayerCollapseWarning",
    "Mask",
    "MaskSchedule",
    "MaskUpdates",
    "Method",
    "RigL",
    "SET",
    "Scores",
    "density_schedule",
    "flops",
    "get_method",
    "layer_densities",
    "methods",
    "coverage",
    "mask_coverage",
    "prunable_parameters",
    "prune",
    "register_distribution",
    "register_layer_type",
    "register_method",
    "remove_mask",
    "remove",
    "score",
    "tied_parameters",
    "unwrap",
]
__version__ = "0.1.0"

# ---- subpackages on first access (PEP 562) ---------------------------------------------------------
# ``prunelab.analysis``, ``prunelab.models``, ... work after a bare ``import prunelab`` without importing
# each of them up front: the data, training and report layers pull in torchvision, pandas or matplotlib,
# which a user who only prunes a model should not pay for at import time.
_LAZY_SUBMODULES = ("ablations", "analysis", "data", "experiments", "integrations", "models", "reports", "training")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module  # later accesses skip this function
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
