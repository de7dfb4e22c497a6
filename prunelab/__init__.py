"""prunelab: neural-network pruning research, centred on pruning at initialization.

Every public name is imported on first access (PEP 562), not by ``import prunelab``: the command line's
light commands (``--version``, ``--help``, ``list``, ``ls``, ``show``, ``export``) import this package and
must not pay the seconds that torch takes to import; ``prunelab.Mask``, ``from prunelab import prune`` and
``dir(prunelab)`` work exactly as if everything had been imported up front.
"""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Batch": "batches",
    "Coverage": "coverage",
    "CoverageWarning": "coverage",
    "coverage": "coverage",
    "mask_coverage": "coverage",
    "prunable_parameters": "coverage",
    "register_layer_type": "coverage",
    "tied_parameters": "coverage",
    "layer_densities": "densities",
    "register_distribution": "densities",
    "FlopCount": "flops",
    "flops": "flops",
    "Mask": "masks",
    "remove_mask": "masks",
    "LayerCollapseWarning": "pruning",
    "density_schedule": "pruning",
    "prune": "pruning",
    "remove": "pruning",
    "score": "pruning",
    "Method": "scores",
    "Scores": "scores",
    "get_method": "scores",
    "methods": "scores",
    "register_method": "scores",
    "GradualMagnitude": "sparse_training",
    "MaskSchedule": "sparse_training",
    "MaskUpdates": "sparse_training",
    "RigL": "sparse_training",
    "SET": "sparse_training",
    "unwrap": "wrappers",
}

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

# Subpackages and modules reachable as attributes after a bare ``import prunelab`` (``prunelab.analysis``,
# ``prunelab.masks``, ...), each imported on first access.
_LAZY_SUBMODULES = ("ablations", "analysis", "data", "experiments", "integrations", "models", "reports", "training",
                    "batches", "densities", "io", "layer_rules", "mask_binding", "masks", "options", "pruning",
                    "registry", "scores", "sparse_training", "tensors", "validate", "wrappers")

# Functions named like the module that defines them: ``prunelab.coverage`` is the function, as it always was,
# even after ``import prunelab.coverage`` (which would otherwise bind the module over it).
_SHADOWED_MODULES = frozenset(name for name, module in _EXPORTS.items() if name == module)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _LAZY_SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_LAZY_SUBMODULES))


class _Package(_types.ModuleType):
    """The package's module type: the import system's binding of a submodule (``prunelab.coverage`` the module)
    is ignored for the names in :data:`_SHADOWED_MODULES`, which stay the functions of the public API."""

    def __setattr__(self, name, value):
        if name in _SHADOWED_MODULES and isinstance(value, _types.ModuleType):
            return  # the module stays reachable as sys.modules["prunelab.coverage"]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
