"""What the trainer callbacks share: a fixed mask or a :class:`~prunelab.MaskUpdates` schedule, started
when training begins (or resumes from a saved mask), stepped around each optimizer step.

The callbacks of :mod:`prunelab.integrations.huggingface` and :mod:`prunelab.integrations.lightning` only
translate their trainer's hooks into the four calls here (:meth:`MaskDriver.start`,
:meth:`~MaskDriver.before_backward`, :meth:`~MaskDriver.after_step`, :attr:`~MaskDriver.mask`), so both
trainers prune the same way as prunelab's own training loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule, MaskUpdates

__all__ = ["MaskDriver", "DriverProperties"]


class MaskDriver:
    """A fixed ``mask`` or a ``schedule`` (exactly one), applied to a model once training starts.

    ``loss_fn(output, targets)`` is the loss RigL's dense gradient uses when it grows after the step
    (``RigL(grow_gradient="after_step")``); ``coverage_options`` (``include_embeddings``, ``exclude``, ...)
    choose what the schedule's initial mask covers.
    """

    def __init__(self, mask: Mask | None = None, schedule: MaskSchedule | None = None,
                 loss_fn: Callable | None = None, **coverage_options):
        if (mask is None) == (schedule is None):
            raise ValueError("give either mask=prunelab.Mask (applied as it is) or schedule=prunelab.GradualMagnitude"
                             "/SET/RigL (the mask changes during training), not both and not neither")
        if mask is not None and not isinstance(mask, Mask):
            raise ValueError(f"mask must be a prunelab.Mask (e.g. prunelab.prune(...) or Mask.load(path)), "
                             f"got {type(mask).__name__}")
        if schedule is not None and not isinstance(schedule, MaskSchedule):
            raise ValueError(f"schedule must be a prunelab.MaskSchedule (GradualMagnitude, SET, RigL), "
                             f"got {type(schedule).__name__}")
        if mask is not None and coverage_options:
            raise ValueError(f"coverage options ({', '.join(sorted(coverage_options))}) choose what a schedule's "
                             "initial mask covers; a given mask already says what it covers")
        self.fixed, self.schedule, self.loss_fn = mask, schedule, loss_fn
        self.coverage_options = coverage_options
        self.updates: MaskUpdates | None = None
        self._mask: Mask | None = None

    @property
    def mask(self) -> Mask | None:
        """The mask applied now (None before :meth:`start`)."""
        return self.updates.mask if self.updates is not None else self._mask

    @property
    def update_count(self) -> int:
        """How many times the schedule changed the mask since :meth:`start` (0 for a fixed mask)."""
        return self.updates.updates if self.updates is not None else 0

    @property
    def needs_step_gradients(self) -> bool:
        return self.schedule is not None and self.schedule.needs_step_gradients

    @property
    def needs_batch(self) -> bool:
        """Whether an update needs the step's batch (RigL growing by the gradient after the step)."""
        return self.schedule is not None and self.schedule.needs_batch and not self.schedule.needs_step_gradients

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, resumed: Mask | None = None) -> Mask:
        """Apply the mask to ``model``: ``resumed`` (the mask saved with the checkpoint training resumes
        from) if given, else the fixed mask or the schedule's initial mask. Returns the applied mask."""
        if self.schedule is None:
            self._mask = (resumed if resumed is not None else self.fixed).apply(model)
            return self._mask
        self.updates = MaskUpdates(model, self.schedule, optimizer, mask=resumed, loss_fn=self.loss_fn,
                                   **({} if resumed is not None else self.coverage_options))
        return self.updates.mask

    def due(self, step: int) -> bool:
        return self.updates is not None and self.schedule.due(step)

    def before_backward(self, step: int) -> None:
        """Before the backward pass of optimizer step ``step`` (counted from 1)."""
        if self.updates is not None:
            self.updates.before_backward(step)

    def after_step(self, step: int, batch=None) -> bool:
        """After optimizer step ``step``: update the mask if the schedule says so; returns whether it did."""
        if self.updates is None:
            return False
        return self.updates.after_step(step, batch=batch)


class DriverProperties:
    """What a trainer callback holding a :class:`MaskDriver` as ``self.driver`` tells its user."""

    driver: MaskDriver

    @property
    def mask(self) -> Mask | None:
        """The mask applied now (None before training begins)."""
        return self.driver.mask

    @property
    def update_count(self) -> int:
        """How many times the schedule changed the mask since training began (0 for a fixed mask)."""
        return self.driver.update_count
