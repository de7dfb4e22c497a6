"""Optimizers and the iteration-wise learning-rate schedule (step drops plus optional linear warm-up)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prunelab.training.durations import iterations
from prunelab.training.settings import TrainSettings


def make_optimizer(params: Iterable[torch.nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.optimizer!r}")  # unreachable: TrainSettings validates


def lr_factor(step: int, s: TrainSettings, iters_per_epoch: int) -> float:
    """Multiplier of the base LR at iteration ``step`` (0-based): warm-up, then gamma per milestone passed.

    A pure function of the step, so training can start at any step (the prune-at-step-t protocol of
    Frankle et al. 2021, §6 replays the whole schedule from 0; a rewound network continues from t) without replaying.
    """
    warm = iterations(s.warmup, iters_per_epoch)
    factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
    drops = sum(1 for m in s.milestones if step >= iterations(m, iters_per_epoch))
    return factor * s.gamma**drops


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor
