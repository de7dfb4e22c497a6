"""prunelab: neural-network pruning research, centred on pruning at initialization."""

from prunelab.coverage import (
    Coverage,
    CoverageWarning,
    coverage,
    mask_coverage,
    prunable_parameters,
    register_layer_type,
)
from prunelab.densities import layer_densities, register_distribution
from prunelab.flops import FlopCount, flops
from prunelab.masks import Mask, remove_mask
from prunelab.pruning import LayerCollapseWarning, density_schedule, prune, remove, score
from prunelab.scores import Method, Scores, get_method, methods, register_method
from prunelab.sparse_training import SET, GradualMagnitude, MaskSchedule, MaskUpdates, RigL

__all__ = [
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
]
__version__ = "0.1.0"
