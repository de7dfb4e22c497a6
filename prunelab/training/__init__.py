"""Training engine: durations, settings and recipes, optimizers and LR schedules, checkpoints, the loop.

Names resolve on first access (PEP 562): the settings, durations and run-time options import no torch, so the
command line builds its flags and answers ``--help`` without it; the loop, optimizers and checkpoints import
torch when first asked for.
"""

import importlib

_HOMES = {
    "CheckpointFolder": "checkpoints",
    "CorruptCheckpoint": "checkpoints",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "Duration": "durations",
    "Step": "durations",
    "iterations": "durations",
    "lr_factor": "optim",
    "make_optimizer": "optim",
    "OPTIMIZERS": "settings",
    "TrainSettings": "settings",
    "recipe": "settings",
    "Diverged": "loop",
    "TrainResult": "loop",
    "evaluate": "callbacks",
    "resolve_device": "devices",
    "train": "trainer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
