"""prunelab: neural-network pruning research, centred on pruning at initialization."""

from prunelab.masks import Mask, prunable_parameters

__all__ = ["Mask", "prunable_parameters"]
__version__ = "0.1.0"
