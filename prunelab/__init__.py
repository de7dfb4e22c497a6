"""prunelab: neural-network pruning research, centred on pruning at initialization."""

from prunelab.masks import Mask, prunable_parameters
from prunelab.pruning import LayerCollapseWarning, density_schedule, prune, remove, score
from prunelab.scores import Method, Scores, get_method, methods, register_method

__all__ = [
    "LayerCollapseWarning",
    "Mask",
    "Method",
    "Scores",
    "density_schedule",
    "get_method",
    "methods",
    "prunable_parameters",
    "prune",
    "register_method",
    "remove",
    "score",
]
__version__ = "0.1.0"
