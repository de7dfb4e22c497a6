"""The standard callbacks of the training loop (:class:`prunelab.training.loop.Callback`): evaluation, the
metrics file, checkpoints, mask updates during training, a user's per-step hook; and :func:`evaluate`, the test
pass they and the protocols use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab import batches
from prunelab.batches import Batch
from prunelab.io import atomic_write_text
from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule, MaskUpdates
from prunelab.training import distributed
from prunelab.training.checkpoints import BackgroundWriter, CheckpointFolder, to_host
from prunelab.training.durations import iterations
from prunelab.training.loop import Callback, Loop, StopRequested, request_stop, stop_requested
from prunelab.training.precision import Precision
from prunelab.training.runtime import RuntimeOptions
from prunelab.training.settings import TrainSettings


@torch.no_grad()
def evaluate(model: nn.Module, test_batches: Iterable, device: torch.device, amp: bool | str | Precision = False, *,
             all_reduce: bool = False, runtime: RuntimeOptions | None = None) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``test_batches`` of ``(inputs, targets)``; restores the model's
    train/eval mode. Outputs and the loss go through :mod:`prunelab.batches`.

    The counts and the loss sum stay on the device until the end (one host synchronization per
    evaluation, not two per batch). ``all_reduce``: each distributed rank passed its own part of the
    test set (``shard=(rank, world)`` of the loader); the sums are all-reduced, so every rank returns
    the figures of the whole set, each example counted once.
    """
    precision = amp if isinstance(amp, Precision) else Precision.of(amp, device)
    runtime = runtime or RuntimeOptions()
    was_training = model.training
    model.eval()
    total = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
    correct = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=total, device=device)
    n = 0
    for x, y in test_batches:
        if y.numel() == 0:  # a rank's empty part of a small last batch
            continue
        batch = Batch.pair(x, y)
        with precision.autocast():
            out = batch.forward(model, prepare=runtime.prepare_input)
        loss_sum += batches.default_loss(out, y, reduction="sum", dtype=torch.float32).to(total)
        correct += (batches.logits(out).argmax(1) == y).sum()
        n += y.numel()
    model.train(was_training)
    totals = torch.stack([correct.to(total), loss_sum, loss_sum.new_full((), n)])  # new_full: no host-to-device copy
    if all_reduce:
        distributed.all_reduce_sum(totals)
    correct_, loss_, n_ = totals.tolist()  # exact: counts stay far below 2**53
    return correct_ / max(n_, 1), loss_ / max(n_, 1)


def evaluation_steps(settings: TrainSettings, iters_per_epoch: int, end_step: int | None) -> set[int]:
    """Multiples of ``eval_every`` within the schedule, plus ``end_step`` when given."""
    every = iterations(settings.eval_every, iters_per_epoch)
    total = iterations(settings.train, iters_per_epoch)
    return set(range(every, total + 1, every)) | ({end_step} if end_step is not None else set())


class Evaluation(Callback):
    """Test accuracy and loss at ``steps`` (and at the start with ``at_start``), appended to the metrics
    with the mean training loss since the previous evaluation and the learning rate."""

    def __init__(self, steps: set[int], at_start: bool = False):
        self.steps, self.at_start = steps, at_start

    def start(self, loop: Loop) -> None:
        loop.sync_steps |= self.steps  # never evaluate a diverged network
        # Under DDP each rank evaluates its part of every test batch and the sums are all-reduced.
        self.test_loader = loop.dataset.loader("test", max(loop.settings.batch_size, 256), seed=0, device=loop.device,
                                               shard=(distributed.rank(), distributed.world_size()),
                                               **loop.runtime.loader_options(loop.dataset, loop.device, warn=False))
        if self.at_start and loop.step == loop.start_step and not any(m["step"] == loop.step for m in loop.metrics):
            acc, loss = self.evaluate(loop)
            loop.metrics.append({"step": loop.step, "test_accuracy": acc, "test_loss": loss, "train_loss": None})

    def evaluate(self, loop: Loop) -> tuple[float, float]:
        distributed.broadcast_buffers(loop.model)  # every rank evaluates rank 0's network
        return evaluate(loop.model, self.test_loader.epoch(0), loop.device, loop.precision,
                        all_reduce=distributed.active(), runtime=loop.runtime)

    def after_step(self, loop: Loop, batch) -> None:
        if loop.step not in self.steps:
            return
        acc, tl = self.evaluate(loop)
        loop.metrics.append({
            "step": loop.step,
            "epoch": round(loop.step / loop.ipe, 4),
            "test_accuracy": acc,
            "test_loss": tl,
            "train_loss": float(loop.loss_sum) / max(loop.loss_count, 1),
            "lr": loop.optimizer.param_groups[0]["lr"],
        })
        loop.loss_sum.zero_()
        loop.loss_count = 0


class MetricsFile(Callback):
    """``metrics.jsonl``, rewritten (atomically, by rank 0) whenever an evaluation added a line, and
    when training diverges. Comes after :class:`Evaluation` in the callbacks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write(self, loop: Loop) -> None:
        if loop.writer:
            atomic_write_text(self.path, "".join(json.dumps(m, sort_keys=True) + "\n" for m in loop.metrics))

    def _evaluated_now(self, loop: Loop) -> bool:
        return bool(loop.metrics) and loop.metrics[-1].get("step") == loop.step

    def start(self, loop: Loop) -> None:
        if loop.step == loop.start_step and self._evaluated_now(loop):  # the evaluation at the start
            self.write(loop)

    def after_step(self, loop: Loop, batch) -> None:
        if self._evaluated_now(loop):
            self.write(loop)

    def diverged(self, loop: Loop) -> None:
        self.write(loop)


class Checkpoints(Callback):
    """``latest.pt`` at every epoch boundary and the end (``save_latest``), ``step_<n>.pt`` kept at
    ``keep_steps``; written by rank 0 through a checksummed atomic write.

    The training thread only copies the state to host memory; serializing, hashing and fsync run in a
    :class:`~prunelab.training.checkpoints.BackgroundWriter` while training goes on. Every write is on
    disk when the loop stops (``close``): the end of training, divergence or an interrupt.
    """

    def __init__(self, folder: CheckpointFolder, keep_steps: set[int], save_latest: bool, callbacks: list):
        self.folder, self.keep_steps, self.save_latest = folder, keep_steps, save_latest
        self.callbacks = callbacks  # whose state goes into each checkpoint
        self.writer = BackgroundWriter()
        self.submitted: set[int] = set()  # kept steps this loop has written

    def save(self, loop: Loop, keep: bool, latest: bool) -> None:
        state = to_host(loop.snapshot(self.callbacks))
        self.writer.submit(self.folder.save, state, keep=keep, latest=latest)
        if keep:
            self.submitted.add(loop.step)

    def after_step(self, loop: Loop, batch) -> None:
        keep = loop.step in self.keep_steps
        # a stop request (request_stop) is honoured after any step but the last, which finishes the training anyway
        stop = stop_requested() and loop.writer and loop.step < loop.end_step
        if loop.writer and (keep or stop or (self.save_latest and (loop.step % loop.ipe == 0
                                                                    or loop.step == loop.end_step))):
            # without latest.pt (an intermediate state of a longer training) the stop's state is kept as step_<n>.pt
            self.save(loop, keep=keep or (stop and not self.save_latest), latest=self.save_latest)
        if stop:
            request_stop(False)
            self.writer.flush()
            raise StopRequested(loop.step)

    def end(self, loop: Loop) -> None:
        resumed_at_it = loop.step not in self.submitted and not self.folder.path_for(loop.step).is_file()
        if loop.writer and loop.step in self.keep_steps and resumed_at_it:
            self.save(loop, keep=True, latest=False)
        self.writer.flush()  # the last checkpoint is complete before the run can be recorded done

    def close(self, loop: Loop) -> None:
        self.writer.close()


class MaskScheduleUpdates(Callback):
    """A mask that changes during training (:mod:`prunelab.sparse_training`): updated after its update
    steps; the current mask and the log of its changes are part of every checkpoint."""

    def __init__(self, schedule: MaskSchedule, loop: Loop, mask: Mask | None):
        self.updates = MaskUpdates(loop.model, schedule, loop.optimizer, mask=mask)
        loop.mask = self.updates.mask
        self.log = [(loop.start_step, loop.mask.layer_density())]

    def before_backward(self, loop: Loop, step: int) -> None:
        self.updates.before_backward(step)

    def after_step(self, loop: Loop, batch) -> None:
        if self.updates.after_step(loop.step, batch=batch):
            loop.mask = self.updates.mask
            self.log.append((loop.step, loop.mask.layer_density()))

    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.updates.mask.state_dict(), "mask_log": self.log}

    def record(self) -> dict[str, Any]:
        return {"mask_log": self.log, "mask_updates": len(self.log) - 1}

    def load_state_dict(self, state: dict[str, Any], loop: Loop) -> None:
        if state.get("mask") is None:
            return
        # Bound before the weights load: the binding re-zeroes on load, and weights grown since must survive.
        self.updates.mask = loop.mask = Mask(state["mask"]).apply(loop.model)
        self.log = [(int(a), dict(b)) for a, b in state["mask_log"]]


class StepHook(Callback):
    """``fn(step, model)`` after every step."""

    def __init__(self, fn: Callable[[int, nn.Module], None]):
        self.fn = fn

    def after_step(self, loop: Loop, batch) -> None:
        self.fn(loop.step, loop.model)
