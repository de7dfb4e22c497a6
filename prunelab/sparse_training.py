"""Masks that change during training: gradual magnitude pruning, SET and RigL.

Pruning at initialization fixes the mask before training; the methods here change it while the
network trains, which Frankle et al. 2021 (§7) name as the next step beyond the methods they study:

``GradualMagnitude``
    Zhu & Gupta 2018 (§3, eq. 1): the sparsity rises from ``s_i`` at step ``t_0`` to ``s_f`` at step
    ``t_0 + n Δt`` along ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n Δt))^3``, pruning the
    smallest magnitudes every ``Δt`` steps (globally or per layer), never reviving a weight.
``SET``
    Mocanu et al. 2018 (§2, "Sparse Evolutionary Training"): every ``Δt`` steps each layer drops the
    fraction ``ζ`` of its kept weights with the smallest magnitude and regrows as many at random.
``RigL``
    Evci et al. 2020 (§3, Algorithm 1): every ``Δt`` steps until ``T_end`` each layer drops the
    smallest magnitudes and grows the positions with the largest dense-gradient magnitude, the drop
    fraction annealed from ``α`` to 0 with ``α/2 (1 + cos(π t / T_end))``.

SET and RigL keep each layer's number of weights and start from a random mask at the
Erdős–Rényi-Kernel layer densities (Evci et al. 2020, §3) by default. Newly grown weights start at
exactly zero, and the optimizer state (momentum, Adam's moments) of every position whose membership changed
is reset to zero: a dropped weight must not drift away from zero on its old momentum, and a regrown
one starts fresh (Evci et al. 2020, §3). Between updates the mask is an ordinary applied mask (see
:mod:`prunelab.mask_binding`), so pruned weights stay exact zeros with every optimizer.

Use in any training loop, after each optimizer step::

    updates = prunelab.MaskUpdates(model, prunelab.RigL(sparsity=0.9, end=7500), optimizer)
    for step, (x, y) in enumerate(batches, start=1):
        optimizer.zero_grad(); loss_fn(model(x), y).backward(); optimizer.step()
        updates.after_step(step, batch=(x, y))

A step is the number of optimizer steps completed; an update "at step t" happens after step t.
Every choice is a pure function of the step, the weights, the batch and the seed, so a run resumed
from a checkpoint (weights, optimizer state and current mask) continues bitwise as it would have.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunelab.masks import Mask
from prunelab.pruning.api import prune
from prunelab.pruning.selection import first_k
from prunelab.pruning.targets import num_to_prune
from prunelab.scores.gradient import loss_gradients
from prunelab.validate import SCOPES, check_fraction, check_int, check_name

__all__ = ["GradualMagnitude", "MaskSchedule", "MaskUpdates", "RigL", "SET", "reset_optimizer_state"]

GROW_GRADIENTS = ("after_step", "step")  # which dense gradient RigL grows by (see RigL)


@dataclass(frozen=True)
class MaskSchedule(ABC):
    """When and how a mask changes during training; subclasses define the two abstract methods.

    ``every``: steps between updates (Δt); ``start``/``end``: first and last step at which an update
    may happen (``end=None``: no last step).
    """

    every: int = 100
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        check_int(self.every, "every", 1, "steps between mask updates")
        check_int(self.start, "start", 0, "the first update step")
        if self.end is not None and check_int(self.end, "end", 0, "the last update step") < self.start:
            raise ValueError(f"end ({self.end}) must not come before start ({self.start})")

    def due(self, step: int) -> bool:
        """Whether the mask is updated after optimizer step ``step``."""
        if step < max(self.start, 1) or (self.end is not None and step > self.end):
            return False
        return (step - self.start) % self.every == 0

    def update_steps(self, total_steps: int) -> list[int]:
        """The steps in ``1..total_steps`` after which the mask changes."""
        return [t for t in range(1, total_steps + 1) if self.due(t)]

    @abstractmethod
    def initial_mask(self, model: nn.Module, **coverage_options) -> Mask:
        """The mask training starts from."""

    @abstractmethod
    def next_mask(self, step: int, model: nn.Module, mask: Mask, batch: Any = None,
                  loss_fn: Callable | None = None, gradients: Mapping[str, torch.Tensor] | None = None) -> Mask:
        """The mask after the update at ``step``, from the current weights (and, for RigL, the step's batch
        or the dense gradients of the step, as :attr:`needs_step_gradients` asks)."""

    def density(self, step: int, initial_density: float) -> float:
        """Overall density during the steps after ``step`` (constant unless the schedule prunes)."""
        return initial_density

    needs_batch: ClassVar[bool] = False  # next_mask needs the step's batch (a dense gradient)

    @property
    def needs_step_gradients(self) -> bool:
        """Whether next_mask needs the dense gradients of the training step itself (captured by
        :class:`MaskUpdates` before the mask zeroes their pruned entries)."""
        return False


# ---- gradual magnitude pruning (Zhu & Gupta 2018) ----------------------------------------------

@dataclass(frozen=True)
class GradualMagnitude(MaskSchedule):
    """Zhu & Gupta 2018, §3: cubic sparsity schedule from ``initial_sparsity`` at ``start`` to
    ``sparsity`` at ``end``, pruning by magnitude every ``every`` steps; ``scope`` global or layer.

    ``end`` is required (the step at which the final sparsity is reached); ``(end - start)`` should
    be a multiple of ``every`` so that the last update lands on ``end`` (it is checked).
    """

    sparsity: float = 0.9
    initial_sparsity: float = 0.0
    scope: str = "global"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.sparsity, "sparsity", meaning="the final fraction of weights pruned")
        check_fraction(self.initial_sparsity, "initial_sparsity", meaning="the fraction pruned at start")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity {self.initial_sparsity} exceeds the final sparsity {self.sparsity}")
        if self.end is None:
            raise ValueError("gradual pruning needs end, the step at which the final sparsity is reached")
        if (self.end - self.start) % self.every:
            raise ValueError(
                f"end - start = {self.end - self.start} steps is not a multiple of every = {self.every}; the "
                "last pruning step would miss the final sparsity"
            )
        check_name("scope", self.scope, SCOPES)

    def sparsity_at(self, step: int) -> float:
        """s_t of Zhu & Gupta's (2018) eq. (1): s_i before ``start``, s_f from ``end`` on."""
        if step <= self.start:
            return self.initial_sparsity
        if step >= self.end:
            return self.sparsity
        done = (step - self.start) // self.every * self.every  # the schedule moves only at update steps
        frac = done / (self.end - self.start)
        return self.sparsity + (self.initial_sparsity - self.sparsity) * (1.0 - frac) ** 3

    def density(self, step: int, initial_density: float) -> float:
        return 1.0 - self.sparsity_at(step)

    def initial_mask(self, model: nn.Module, **coverage_options) -> Mask:
        if self.initial_sparsity == 0:
            return Mask.ones(model, **coverage_options)
        return prune(model, "magnitude", self.initial_sparsity, scope=self.scope, **coverage_options)

    def next_mask(self, step, model, mask, batch=None, loss_fn=None, gradients=None) -> Mask:
        return prune(model, "magnitude", self.sparsity_at(step), scope=self.scope, mask=mask)


# ---- dynamic sparse training: SET and RigL --------------------------------------------------------

@dataclass(frozen=True)
class _DropAndGrow(MaskSchedule):
    """Per layer: drop the ``k`` kept weights of smallest magnitude, grow ``k`` pruned positions.

    ``k = round(f(t) · kept)`` with the drop fraction ``f`` of the subclass. Candidates for growth are
    the positions inactive after the drop, as in Evci et al. 2020, Algorithm 1, so a weight dropped now
    may be grown back at once; its membership then did not change, and it keeps its value and optimizer
    state (as in Evci et al.'s (2020) code, which zeroes only connections that were inactive before the
    update). Ties are broken by position.
    """

    sparsity: float = 0.9
    drop_fraction: float = 0.3
    distribution: str = "erk"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.sparsity, "sparsity", meaning="the fraction of weights pruned")
        check_fraction(self.drop_fraction, "drop_fraction", "(0, 1)", "the fraction of kept weights replaced")

    def initial_mask(self, model: nn.Module, **coverage_options) -> Mask:
        """A random mask at the layer densities of ``distribution`` (ERK by default, Evci et al. 2020, §3)."""
        return prune(model, "random", self.sparsity, distribution=self.distribution, seed=self.seed,
                     **coverage_options)

    def fraction(self, step: int) -> float:
        return self.drop_fraction

    @abstractmethod
    def grow_scores(self, step: int, model: nn.Module, mask: Mask, batch, loss_fn,
                    gradients: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Per tensor, a score per position: the largest scores among inactive positions grow."""

    def next_mask(self, step, model, mask, batch=None, loss_fn=None, gradients=None) -> Mask:
        """Drop and grow by the ranking of :mod:`prunelab.pruning` (:func:`~prunelab.pruning.selection.first_k`:
        exact counts, ties by position) and its rounding (:func:`~prunelab.pruning.targets.num_to_prune`)."""
        params = mask.check_compatible(model)
        grow = self.grow_scores(step, model, mask, batch, loss_fn, gradients)
        f = self.fraction(step)
        out = {}
        for name, keep in mask.items():
            keep = keep.reshape(-1)
            k = num_to_prune(f, int(keep.count_nonzero()))
            if k == 0:
                out[name] = mask[name]
                continue
            w = _nan_as_largest(params[name].detach().reshape(-1).abs())
            kept = keep.to(w.device)
            dropped = first_k(w, kept, k, highest=False)  # the k smallest |w| among kept positions
            inactive = ~kept | dropped
            g = _nan_as_largest(grow[name].detach().reshape(-1).to(w.device))
            grown = first_k(g, inactive, k, highest=True)  # the k largest scores among positions now inactive
            out[name] = ((kept & ~dropped) | grown).to(keep.device).view(mask[name].shape)
        return Mask(out)


def _nan_as_largest(values: torch.Tensor) -> torch.Tensor:
    """NaN ranked as the largest value (as a sort ranks it). A NaN weight or gradient means the step diverged,
    which the training loop reports at its next check (every 25 steps on a GPU); the update before it must not
    fail on the NaN instead."""
    if values.is_floating_point() and bool(torch.isnan(values.sum())):
        return values.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)
    return values


@dataclass(frozen=True)
class SET(_DropAndGrow):
    """Sparse Evolutionary Training (Mocanu et al. 2018): constant drop fraction ``ζ = 0.3``,
    random regrowth (seeded by ``seed`` and the step, so a resumed run regrows the same positions)."""

    def grow_scores(self, step, model, mask, batch, loss_fn, gradients=None):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return {name: torch.rand(keep.shape, generator=g, dtype=torch.float64) for name, keep in mask.items()}


@dataclass(frozen=True)
class RigL(_DropAndGrow):
    """Rigging the Lottery (Evci et al. 2020): drop fraction ``α/2 (1 + cos(π t / T_end))`` with
    ``α = drop_fraction`` and ``T_end = end``; growth by the magnitude of the dense gradient of the
    loss on the step's batch.

    ``grow_gradient`` says which dense gradient: ``"after_step"`` (the default, and what every RigL run of
    prunelab so far used) takes it at the weights after the optimizer step, in one extra forward and
    backward pass per update; ``"step"`` reuses the gradient of the training step itself, captured before
    the mask zeroes its pruned entries, as Evci et al.'s Algorithm 1 (the gradient of ``L_t`` at the step's
    weights) and JaxPruner do, at no extra cost."""

    grow_gradient: str = "after_step"

    needs_batch: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.end is None:
            raise ValueError("RigL needs end (T_end), the step after which the mask stops changing "
                             "(Evci et al. 2020 use 75% of training)")
        check_name("grow_gradient", self.grow_gradient, GROW_GRADIENTS)

    @property
    def needs_step_gradients(self) -> bool:
        return self.grow_gradient == "step"

    def fraction(self, step: int) -> float:
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end))

    def grow_scores(self, step, model, mask, batch, loss_fn, gradients=None):
        if self.needs_step_gradients:
            if gradients is None:
                raise ValueError("RigL(grow_gradient='step') grows by the training step's dense gradients: drive it "
                                 "with MaskUpdates.before_backward(step) before the step's backward pass")
            return {n: gradients[n].abs() for n in mask}
        if batch is None:
            raise ValueError("RigL grows where the dense gradient is largest: pass the step's batch=(inputs, targets)")
        return {n: g.abs() for n, g in dense_gradients(model, mask, batch, loss_fn).items()}


def dense_gradients(model: nn.Module, mask: Mask, batch, loss_fn: Callable | None = None
                    ) -> dict[str, torch.Tensor]:
    """dL/dw of the masked network for every weight the mask covers, pruned positions included, in the
    model's current train/eval mode: :func:`prunelab.scores.gradient.loss_gradients`, the gradient pass of
    SNIP, so the model's gradients, BatchNorm statistics and mask hooks are untouched."""
    return loss_gradients(model, mask, batch, loss_fn=loss_fn, batchnorm_train=False)


# ---- applying an update -------------------------------------------------------------------------

@torch.no_grad()
def reset_optimizer_state(optimizer: torch.optim.Optimizer, positions: Mapping[nn.Parameter, torch.Tensor]) -> None:
    """Zero every per-weight optimizer state tensor (momentum, Adam's moments, ...) at ``positions``
    (a bool tensor per parameter); scalar state such as Adam's step count is left alone."""
    for p, where in positions.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                value.masked_fill_(where.to(value.device), 0)


class MaskUpdates:
    """Drives a :class:`MaskSchedule` in a training loop: applies its initial mask to ``model`` at
    construction and, after each due optimizer step, computes the next mask, zeroes every weight
    whose membership changed (dropped ones and regrown ones alike), resets their optimizer state and
    applies the new mask. ``mask`` continues from an existing mask instead of the initial one
    (resuming from a checkpoint).

    A schedule that grows by the training step's own dense gradients (``RigL(grow_gradient="step")``)
    needs :meth:`before_backward` called before each step's backward pass: on update steps it captures
    each covered weight's incoming gradient before the mask zeroes its pruned entries."""

    def __init__(self, model: nn.Module, schedule: MaskSchedule, optimizer: torch.optim.Optimizer | None = None,
                 mask: Mask | None = None, loss_fn: Callable | None = None, **coverage_options):
        if not isinstance(schedule, MaskSchedule):
            raise ValueError(f"schedule must be a MaskSchedule (GradualMagnitude, SET, RigL), got {schedule!r}")
        self.model, self.schedule, self.optimizer, self.loss_fn = model, schedule, optimizer, loss_fn
        self.mask = (mask if mask is not None else schedule.initial_mask(model, **coverage_options)).apply(model)
        self.updates = 0
        self._captured: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._capturing: int | None = None  # the step whose gradients the hooks capture

    def before_backward(self, step: int) -> None:
        """Before the backward pass of optimizer step ``step`` (counted from 1): when the schedule needs the
        step's dense gradients and ``step`` is an update step, capture them as the backward pass computes
        them (a hook on each covered weight that runs before the gradient accumulates into ``.grad``).
        Called again for the same step (gradient accumulation: one backward pass per micro-batch), it keeps
        the hooks, and the captured gradients add up as ``.grad`` does."""
        if self._hooks and self._capturing == step:
            return
        self._release()
        self._captured = {}
        if not (self.schedule.needs_step_gradients and self.schedule.due(step)):
            return
        self._capturing = step
        params = self.mask.check_compatible(self.model)
        for name, p in params.items():
            def capture(grad: torch.Tensor, name: str = name) -> None:
                # a copy: the tensor may become .grad, which the mask then multiplies in place
                seen = self._captured.get(name)
                self._captured[name] = grad.detach().clone() if seen is None else seen.add_(grad.detach())
            self._hooks.append(p.register_hook(capture))

    def _release(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._capturing = None

    def after_step(self, step: int, batch=None) -> bool:
        """Update the mask if ``step`` is an update step; returns whether it was."""
        self._release()
        captured, self._captured = self._captured, {}
        if not self.schedule.due(step):
            return False
        gradients = None
        if self.schedule.needs_step_gradients:
            missing = sorted(set(self.mask) - set(captured))
            if missing and len(missing) < len(self.mask):  # weights the loss does not reach: zero gradient
                captured.update({n: torch.zeros_like(p) for n, p in self.mask.check_compatible(self.model).items()
                                 if n in missing})
            gradients = captured or None
        new = self.schedule.next_mask(step, self.model, self.mask, batch, self.loss_fn, gradients)
        self.replace(new)
        self.updates += 1
        return True

    @torch.no_grad()
    def replace(self, new: Mask) -> None:
        params = new.check_compatible(self.model)
        changed = {params[n]: (new[n] != self.mask[n]) for n in new}
        for p, where in changed.items():
            p.masked_fill_(where.to(p.device), 0.0)  # regrown weights start at exactly zero
        if self.optimizer is not None:
            reset_optimizer_state(self.optimizer, changed)
        self.mask = new.apply(self.model)
