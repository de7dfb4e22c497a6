"""The training loop's core: :class:`Loop`, the state of one training that steps (learning rate, forward,
backward, optimizer step, divergence check), and :class:`Callback`, the interface of everything else
(:mod:`prunelab.training.callbacks`; :func:`prunelab.training.trainer.train` assembles them). Also what a loop
raises and returns (:class:`Diverged`, :class:`StopRequested`, :class:`TrainResult`), the stop request a
Slurm signal sets (:func:`request_stop`), and the warnings of a resume under other execution.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelab import batches
from prunelab.batches import Batch
from prunelab.masks import Mask
from prunelab.training import distributed
from prunelab.training.optim import lr_factor, set_lr
from prunelab.training.precision import Precision
from prunelab.training.runtime import RuntimeOptions
from prunelab.training.settings import TrainSettings


class ExecutionChangeWarning(UserWarning):
    """A run resumed under other execution than its checkpoint was written with: from that step on its bits
    are not those of an uninterrupted run (said in one line, at the resume)."""


class DeviceChangeWarning(ExecutionChangeWarning):
    """A run resumed on another kind of device than the one its checkpoint was written on."""


class CPUChangeWarning(ExecutionChangeWarning):
    """A CPU run resumed with another torch thread count or instruction set than its checkpoint was written with:
    CPU float sums are split over the threads, and ATen and oneDNN pick their kernels by instruction set."""


def cpu_execution() -> dict[str, Any]:
    """What, besides the code, fixes the bits of a CPU computation: the intra-op thread count and the vector
    instruction set torch's kernels use (``AVX2``, ``AVX512``...). Kept in every checkpoint."""
    return {"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability()}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (e.g. SNIP at 98% sparsity, Frankle et al. 2021, App. B.5)."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at step {step} (loss {loss})")
        self.step = step
        self.loss = loss


class StopRequested(KeyboardInterrupt):
    """Training stopped after a step because :func:`request_stop` asked it to (Slurm's signal ahead of a time
    limit or a preemption, :mod:`prunelab.experiments.slurm`): that step's checkpoint is on disk first, so the
    run resumes from it bitwise. A KeyboardInterrupt, so that it passes through every ``except Exception``
    and the run's lock records the session as interrupted."""

    def __init__(self, step: int):
        super().__init__(f"training stopped at step {step} on request (its checkpoint is saved)")
        self.step = step


_STOP_REQUESTED = False  # a plain flag: set from a signal handler, read once a step


def request_stop(requested: bool = True) -> None:
    """Ask the training running in this process (or the next one to start) to save a checkpoint after its
    current step and raise :class:`StopRequested`; safe to call from a signal handler. Only rank 0 of a
    process group acts on it (it writes the checkpoints). ``request_stop(False)`` withdraws the request."""
    global _STOP_REQUESTED
    _STOP_REQUESTED = requested


def stop_requested() -> bool:
    return _STOP_REQUESTED


@dataclass
class TrainResult:
    step: int
    test_accuracy: float | None
    test_loss: float | None
    wall_time: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    mask: Mask | None = None  # the mask at the end (it changes under a mask schedule)
    mask_log: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, layer densities) per change
    mask_updates: int = 0
    step_wall_time: float | None = None  # seconds per training step (forward, backward, optimizer), this session's mean
    timed_steps: int = 0  # the steps this session ran, over which step_wall_time is the mean
    execution: dict[str, Any] = field(default_factory=dict)  # how the steps ran (sparse kernels: which layers)


class Callback:
    """One concern of the training loop (evaluation, metrics file, checkpoints, mask updates, a user's
    hook), called at fixed points of :meth:`Loop.run`.

    ``state_dict`` returns what the callback must carry across a resume (merged into every checkpoint;
    the keys must not clash with the loop's own), ``load_state_dict`` gets the checkpoint back before
    the model's weights are loaded.
    """

    def start(self, loop: Loop) -> None:
        """Before the first step (after a resume: before the first step still to do)."""

    def before_backward(self, loop: Loop, step: int) -> None:
        """Before the backward pass of the step that will be ``step`` (``loop.step + 1``)."""

    def after_step(self, loop: Loop, batch: Batch) -> None:
        """After every optimizer step; ``loop.step`` counts the steps completed, ``batch`` is the step's
        (a :class:`prunelab.batches.Batch`)."""

    def end(self, loop: Loop) -> None:
        """After the last step."""

    def close(self, loop: Loop) -> None:
        """After the loop stopped, however it stopped (the end, divergence, an interrupt): release what
        the callback holds, finish what it started."""

    def diverged(self, loop: Loop) -> None:
        """The loss became NaN or infinite at ``loop.step``; :class:`Diverged` is raised next."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], loop: Loop) -> None:
        """Restore from a checkpoint, before the model's weights are loaded."""

    def record(self) -> dict[str, Any]:
        """Fields of the :class:`TrainResult` the callback fills in, read once the loop stopped (a mask schedule:
        its log of changes; sparse kernels: how the steps ran)."""
        return {}


@dataclass
class Loop:
    """The state of one training: what the callbacks read and change."""

    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper
    dataset: Any
    loader: Any  # the training batches
    settings: TrainSettings
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: Precision
    ipe: int  # iterations per epoch
    start_step: int
    end_step: int
    step: int
    mask: Mask | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    wall: float = 0.0
    t0: float = 0.0
    writer: bool = True  # rank 0: the one that writes files
    sync_steps: set[int] = field(default_factory=set)  # steps at which divergence is always checked
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    step_time: float = 0.0  # wall seconds spent in training steps by this session, and their count
    timed_steps: int = 0

    def snapshot(self, callbacks: Iterable[Callback]) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "metrics": self.metrics,
            "wall_time": self.wall + (time.perf_counter() - self.t0),
            "loss_sum": float(self.loss_sum),
            "loss_count": self.loss_count,
            "device": self.device.type,
            **cpu_execution(),
        }
        for cb in callbacks:
            state.update(cb.state_dict())
        return state

    def resume(self, state: dict[str, Any], callbacks: Iterable[Callback]) -> None:
        written_on = state.get("device")  # absent from checkpoints of older versions
        if written_on is not None and written_on != self.device.type and self.writer:
            warnings.warn(f"resuming at step {state['step']} on {self.device.type} from a checkpoint written on "
                          f"{written_on}: the rest of the run uses other kernels, so its result is not bitwise that "
                          "of an uninterrupted run on either", DeviceChangeWarning, stacklevel=2)
        elif self.device.type == "cpu" and self.writer:
            self._check_cpu_execution(state)
        for cb in callbacks:  # first: a mask schedule binds the checkpoint's mask before the weights load
            cb.load_state_dict(state, self)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the checkpoint was written without loss scaling
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.metrics, self.wall = int(state["step"]), list(state["metrics"]), float(state["wall_time"])
        self.loss_sum.fill_(float(state["loss_sum"]))
        self.loss_count = int(state["loss_count"])
        if self.mask is not None:
            self.mask.apply(self.model)  # weights came masked from the checkpoint; hooks again

    def _check_cpu_execution(self, state: dict[str, Any]) -> None:
        """One warning line when the checkpoint of a CPU run was written with another thread count or
        instruction set than this session's (checkpoints of older versions record neither: no word)."""
        now = cpu_execution()
        then = {k: state[k] for k in now if state.get(k) is not None}
        if not then or all(then[k] == now[k] for k in then):
            return

        def described(e: dict[str, Any]) -> str:
            parts = [f"{e['threads']} torch thread{'s' if e['threads'] != 1 else ''}"] if "threads" in e else []
            return " on ".join(parts + ([e["capability"]] if "capability" in e else []))

        warnings.warn(f"resuming at step {state['step']} with {described({k: now[k] for k in then})} from a checkpoint "
                      f"written with {described(then)}: the rest of the run splits its CPU sums differently, so its "
                      "bits differ from that step on from an uninterrupted run's (give --threads "
                      f"{then.get('threads', now['threads'])} on the same CPU type to keep them)", CPUChangeWarning,
                      stacklevel=3)

    def run(self, callbacks: list[Callback], progress: bool = False) -> TrainResult:
        """The loop (:meth:`steps`) under the run-time options' backend flags; every callback's ``close``
        after it, however it ended."""
        self.t0 = time.perf_counter()
        try:
            with self.runtime.backends():
                self.steps(callbacks, progress)
        except BaseException:
            for cb in callbacks:
                try:
                    cb.close(self)
                except Exception as e:  # noqa: BLE001 - the error that stopped the loop is the one to report
                    warnings.warn(f"while stopping: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
            raise
        for cb in callbacks:
            cb.close(self)
        distributed.barrier()  # rank 0's checkpoints are on disk before any rank goes on
        self.wall += time.perf_counter() - self.t0
        last = next((m for m in reversed(self.metrics) if "test_accuracy" in m), None)
        return TrainResult(step=self.step, test_accuracy=last["test_accuracy"] if last else None,
                           test_loss=last["test_loss"] if last else None, wall_time=self.wall, metrics=self.metrics,
                           mask=self.mask, **{k: v for cb in callbacks for k, v in cb.record().items()},
                           step_wall_time=self.step_time / self.timed_steps if self.timed_steps else None,
                           timed_steps=self.timed_steps)

    def steps(self, callbacks: list[Callback], progress: bool = False) -> None:
        """Learning rate, forward, backward, step, divergence check, callbacks, to ``end_step``."""
        for cb in callbacks:
            cb.start(self)
        check_every = 1 if self.device.type == "cpu" else 25  # a CUDA sync per step would cost throughput
        bar = _progress_bar(progress and self.writer, total=self.end_step - self.start_step,
                            initial=self.step - self.start_step)
        self.model.train()
        while self.step < self.end_step:
            epoch, first = divmod(self.step, self.ipe)
            for x, y in self.loader.epoch(epoch, start_batch=first):
                batch = Batch.pair(x, y)
                t = time.perf_counter()
                loss = self._train_step(batch, callbacks)
                if self.step % check_every == 0 or self.step == self.end_step or self.step in self.sync_steps:
                    if distributed.any_rank(not math.isfinite(float(self.loss_sum)), self.device):
                        bar.close()
                        self.metrics.append({"step": self.step, "diverged": True})
                        for cb in callbacks:
                            cb.diverged(self)
                        raise Diverged(self.step, float(loss.detach()))
                # timed up to here: the check's synchronization makes a GPU's steps count in full over a run
                self.step_time += time.perf_counter() - t
                self.timed_steps += 1
                for cb in callbacks:
                    cb.after_step(self, batch)
                last = self.metrics[-1] if self.metrics else {}
                if last.get("step") == self.step and "test_accuracy" in last:
                    bar.set_postfix(acc=f"{last['test_accuracy']:.4f}", refresh=False)
                bar.update(1)
                if self.step >= self.end_step:
                    break
        bar.close()
        for cb in callbacks:
            cb.end(self)

    def _train_step(self, batch: Batch, callbacks: list[Callback]) -> torch.Tensor:
        set_lr(self.optimizer, self.settings.lr, lr_factor(self.step, self.settings, self.ipe))
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            out = batch.forward(self.net, prepare=self.runtime.prepare_input)
        if distributed.active():
            # this rank's share of the global mean: exact with uneven (even empty) parts, since DDP
            # averages gradients over the ranks
            lo, hi = self.loader.bounds(self.step % self.ipe)
            share = distributed.world_size() / (hi - lo)
            loss = batches.default_loss(out, batch.targets, reduction="sum", dtype=torch.float32) * share
        else:
            loss = batches.default_loss(out, batch.targets, dtype=torch.float32)
        for cb in callbacks:
            cb.before_backward(self, self.step + 1)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.loss_sum += loss.detach().double()
        self.loss_count += 1
        return loss


def _progress_bar(enabled: bool, total: int, initial: int):
    from prunelab import progress

    return progress.bar(total, initial=initial, enabled=enabled, unit="it", desc="training")
