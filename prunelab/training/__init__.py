"""Training engine: durations, settings and recipes, optimizers and LR schedules, checkpoints, the loop."""

from prunelab.training.checkpoints import (
    CheckpointFolder,
    CorruptCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from prunelab.training.durations import Duration, Step, iterations
from prunelab.training.optim import lr_factor, make_optimizer
from prunelab.training.settings import OPTIMIZERS, TrainSettings, recipe
from prunelab.training.trainer import Diverged, TrainResult, evaluate, resolve_device, train

__all__ = [
    "CheckpointFolder",
    "CorruptCheckpoint",
    "Diverged",
    "Duration",
    "Step",
    "OPTIMIZERS",
    "TrainResult",
    "TrainSettings",
    "evaluate",
    "iterations",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "recipe",
    "resolve_device",
    "save_checkpoint",
    "train",
]
