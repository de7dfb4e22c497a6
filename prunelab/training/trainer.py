"""The training loop: masked, resumable, startable at any step, bitwise reproducible on CPU.

Steps count completed iterations. The learning rate at a step is a pure function of the step
(:func:`prunelab.training.optim.lr_factor`) and the batches of a step are a pure function of
(data seed, epoch, batch index), so training can begin at any step without replaying the loader:
the prune-at-step-t protocol retrains the whole schedule from step 0 (Renda et al. 2020; Frankle et al.
2021, §6), a rewound lottery ticket continues from step t (Frankle et al. 2021, §3, LTR).

:func:`train` is a short :class:`Loop` (learning rate, forward, backward, optimizer step, divergence
check) and :class:`Callback` objects for everything else: evaluation, the metrics file, checkpoints,
mask updates during training, a user's per-step hook.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
from prunelab.training.optim import lr_factor, make_optimizer, set_lr
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


def check_device(device: str, here: bool = True) -> str:
    """``device`` if it names a device this machine has ("auto", "cpu", "cuda", "cuda:1", "mps"), else a
    one-line ValueError that says what is available; so that a bad name fails before any work.
    ``here=False``: only the name is checked (the device of jobs that run on other machines)."""
    if device == "auto":
        return device
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if not here and d.type in ("cpu", "cuda", "mps"):
        return device
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine "
                             "(use --device cpu or auto)")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise ValueError(f"device {device!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif d.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} was asked for, but MPS is not available on this machine")
    elif d.type != "cpu":
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda, cuda:N or mps")
    return device


def device_arg(text: str) -> torch.device:
    """``type=`` of a script's ``--device`` option (``bench/``, ``repro/``): the device, or argparse's error
    with :func:`check_device`'s message."""
    import argparse

    try:
        return resolve_device(check_device(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    execution: dict[str, Any] = field(default_factory=dict)

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
                           mask=self.mask, **_mask_record(callbacks),
                           step_wall_time=self.step_time / self.timed_steps if self.timed_steps else None,
                           timed_steps=self.timed_steps,
                           execution=self.execution)

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


# ---- the standard callbacks ------------------------------------------------------------------------

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
                                               **_workers(loop.dataset, loop.runtime, loop.device, warn=False))
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
            atomic_write_text(self.path, "".join(_json_line(m) for m in loop.metrics))

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
        stop = _STOP_REQUESTED and loop.writer and loop.step < loop.end_step
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


def _mask_record(callbacks: Iterable[Callback]) -> dict[str, Any]:
    for cb in callbacks:
        if isinstance(cb, MaskScheduleUpdates):
            return {"mask_log": cb.log, "mask_updates": len(cb.log) - 1}
    return {}


def train(
    model: nn.Module,
    dataset,
    settings: TrainSettings,
    *,
    seed: int = 0,
    start_step: int = 0,
    end_step: int | None = None,
    mask: Mask | None = None,
    mask_schedule: MaskSchedule | None = None,
    device: str | torch.device | None = "auto",
    amp: bool | str | None = None,
    runtime: RuntimeOptions | None = None,
    progress: bool = False,
    checkpoint_dir: str | Path | None = None,
    keep_steps: Iterable[int] = (),
    metrics_path: str | Path | None = None,
    evaluate_at_start: bool = False,
    evaluate_at_end: bool = True,
    save_latest: bool = True,
    on_step: Callable[[int, nn.Module], None] | None = None,
    callbacks: Iterable[Callback] = (),
) -> TrainResult:
    """Train ``model`` on ``dataset`` (a :class:`prunelab.data.Dataset`) from ``start_step`` to ``end_step``.

    The loop itself (:class:`Loop`) only steps; everything else is a :class:`Callback`, built here from
    the keyword arguments, plus any given in ``callbacks``:

    - :class:`Evaluation` at every ``eval_every`` of the settings and, with ``evaluate_at_end``, at
      ``end_step`` (``evaluate_at_start``: at the start too); :class:`MetricsFile` at ``metrics_path``;
    - :class:`Checkpoints` in ``checkpoint_dir``: ``latest.pt`` at every epoch boundary (unless
      ``save_latest=False``) and ``step_<n>.pt`` kept at each of ``keep_steps``; an existing checkpoint
      past ``start_step`` is resumed from, giving the same result as an uninterrupted run;
    - :class:`MaskScheduleUpdates` for ``mask_schedule`` (gradual pruning, SET, RigL;
      :mod:`prunelab.sparse_training`), starting from ``mask`` (else the schedule's own initial mask);
    - :class:`StepHook` for ``on_step(step, model)``.

    ``amp`` overrides ``settings.amp`` (:mod:`prunelab.training.precision`); ``runtime`` says how to execute
    the run (:class:`~prunelab.training.runtime.RuntimeOptions`: loader workers, channels-last, cuDNN
    benchmark, TF32, deterministic kernels), none of which changes what it computes beyond the last bits.

    ``mask`` keeps pruned weights at exactly 0. The optimizer starts fresh at ``start_step`` (no
    momentum carried across protocol phases). ``evaluate_at_end=False`` and ``save_latest=False`` are
    for producing an intermediate state of a longer training (the weights at step t) without disturbing
    that training's own metrics and checkpoints.
    """
    device = resolve_device(device)
    precision = Precision.of(settings.amp if amp is None else amp, device)
    runtime = runtime or RuntimeOptions()
    loader = dataset.loader("train", settings.batch_size, seed=settings.data_seed_of(seed), device=device,
                            shard=(distributed.rank(), distributed.world_size()), **_workers(dataset, runtime, device))
    ipe = len(loader)
    total = iterations(settings.train, ipe)
    end_step = total if end_step is None else end_step
    if not 0 <= start_step <= end_step:
        raise ValueError(f"start step {start_step} must lie in [0, end step {end_step}]")
    if end_step > total:
        raise ValueError(f"end step {end_step} is beyond the training length {settings.train} ({total} it)")

    runtime.prepare_model(model.to(device))
    if mask is not None:
        mask.apply(model)  # gradient hooks fire before DDP's all-reduce, so the reduced gradients are masked
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loop = Loop(model=model, net=net, dataset=dataset, loader=loader, settings=settings,
                optimizer=make_optimizer(model.parameters(), settings),
                scaler=precision.scaler(), device=device, precision=precision, ipe=ipe, start_step=start_step,
                end_step=end_step, step=start_step, mask=mask,
                loss_sum=torch.zeros((), device=device, dtype=torch.float64), writer=distributed.is_main(),
                runtime=runtime)
    cbs: list[Callback] = []
    if mask_schedule is not None:
        cbs.append(MaskScheduleUpdates(mask_schedule, loop, mask))
    if runtime.sparse_kernels != "off":
        from prunelab.training.sparse_kernels import SparseKernels

        cbs.append(SparseKernels(runtime.sparse_kernels, mask_schedule))
    if on_step is not None:
        cbs.append(StepHook(on_step))
    cbs.append(Evaluation(evaluation_steps(settings, ipe, end_step if evaluate_at_end else None), evaluate_at_start))
    if metrics_path is not None:
        cbs.append(MetricsFile(metrics_path))
    cbs.extend(callbacks)
    if checkpoint_dir is not None:
        folder = CheckpointFolder(checkpoint_dir)
        cbs.append(Checkpoints(folder, {int(s) for s in keep_steps}, save_latest, cbs))
        # rank 0 decides what to resume from; every rank gets the same state
        state = distributed.broadcast_object(folder.load_latest(max_step=end_step) if loop.writer else None)
        if state is not None and state["step"] > start_step:
            loop.resume(state, cbs)
    return loop.run(cbs, progress)


def _workers(dataset, runtime: RuntimeOptions, device: torch.device, warn: bool = True) -> dict[str, int]:
    """The loader's ``num_workers`` for an image-folder dataset; an in-memory one has no use for workers
    (its batches are gathered on the device), and a count given for one is ignored with a warning."""
    if not getattr(dataset, "in_memory", True):
        return {"num_workers": runtime.workers_for(device)}
    if runtime.loader_workers and warn:
        warnings.warn(f"--loader-workers {runtime.loader_workers} ignored: {getattr(dataset, 'name', 'the dataset')} "
                      "is held in memory and batched on the device, with no worker processes", UserWarning,
                      stacklevel=3)
    return {}


def _json_line(obj: dict) -> str:
    import json

    return json.dumps(obj, sort_keys=True) + "\n"


def _progress_bar(enabled: bool, total: int, initial: int):
    from prunelab import progress

    return progress.bar(total, initial=initial, enabled=enabled, unit="it", desc="training")
