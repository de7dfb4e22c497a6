"""The training loop: masked, resumable, startable at any step, bitwise reproducible on CPU.

Steps count completed iterations. The learning rate at a step is a pure function of the step
(:func:`prunelab.training.optim.lr_factor`) and the batches of a step are a pure function of
(data seed, epoch, batch index), so training can begin at any step without replaying the loader:
the prune-at-step-t protocol retrains the whole schedule from step 0 (Renda et al., 000 §6), a
rewound lottery ticket continues from step t (000 §3, LTR).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunelab.io import atomic_write_text
from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule, MaskUpdates
from prunelab.training import distributed
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.durations import iterations
from prunelab.training.optim import lr_factor, make_optimizer, set_lr
from prunelab.training.settings import TrainSettings


class Diverged(RuntimeError):
    """The training loss became NaN or infinite (e.g. SNIP at 98% sparsity, 000 App. B.5)."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged at step {step} (loss {loss})")
        self.step = step
        self.loss = loss


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


def check_device(device: str) -> str:
    """``device`` if it names a device this machine has ("auto", "cpu", "cuda", "cuda:1", "mps"), else a
    one-line ValueError that says what is available; so that a bad name fails before any work."""
    if device == "auto":
        return device
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
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


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None picks CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, amp: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, amp: bool = False) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over ``batches``; restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for x, y in batches:
        with _autocast(device, amp):
            out = model(x)
        loss_sum += float(F.cross_entropy(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += y.numel()
    model.train(was_training)
    return correct / max(n, 1), loss_sum / max(n, 1)


def evaluation_steps(settings: TrainSettings, iters_per_epoch: int, end_step: int | None) -> set[int]:
    """Multiples of ``eval_every`` within the schedule, plus ``end_step`` when given."""
    every = iterations(settings.eval_every, iters_per_epoch)
    total = iterations(settings.train, iters_per_epoch)
    return set(range(every, total + 1, every)) | ({end_step} if end_step is not None else set())


def train(
    model: nn.Module,
    dataset,
    settings: TrainSettings,
    *,
    seed: int = 0,
    start_step: int = 0,
    end_step: int | None = None,
    mask: Mask | None = None,
    device: str | torch.device | None = "auto",
    checkpoint_dir: str | Path | None = None,
    keep_steps: Iterable[int] = (),
    metrics_path: str | Path | None = None,
    amp: bool | None = None,
    progress: bool = False,
    evaluate_at_start: bool = False,
    evaluate_at_end: bool = True,
    save_latest: bool = True,
    on_step: Callable[[int, nn.Module], None] | None = None,
    mask_schedule: MaskSchedule | None = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` (a :class:`prunelab.data.Dataset`) from ``start_step`` to ``end_step``.

    ``mask`` keeps pruned weights at exactly 0. With ``checkpoint_dir`` a checkpoint is written at every
    epoch boundary (``latest.pt``) and at each step of ``keep_steps`` (``step_<n>.pt``, kept), and an
    existing checkpoint past ``start_step`` is resumed from, giving the same result as an uninterrupted
    run. The optimizer starts fresh at ``start_step`` (no momentum carried across protocol phases).
    ``on_step(step, model)`` is called after every step (used to capture weights at a rewind point).
    ``evaluate_at_end=False`` evaluates only at the regular ``eval_every`` steps and ``save_latest=False``
    writes only the ``keep_steps`` checkpoints: both for producing an intermediate state of a longer
    training (the weights at step t) without disturbing that training's own metrics and checkpoints.
    ``mask_schedule`` (gradual pruning, SET, RigL; :mod:`prunelab.sparse_training`) changes the mask
    after its update steps, starting from ``mask`` (else its own initial mask); the current mask is part
    of every checkpoint, so a resumed run continues with the mask it had.
    """
    device = resolve_device(device)
    amp = settings.amp if amp is None else amp
    data_seed = seed if settings.data_seed is None else settings.data_seed
    loader = dataset.loader("train", settings.batch_size, seed=data_seed, device=device,
                            shard=(distributed.rank(), distributed.world_size()))
    ipe = len(loader)
    total = iterations(settings.train, ipe)
    end_step = total if end_step is None else end_step
    if not 0 <= start_step <= end_step:
        raise ValueError(f"start step {start_step} must lie in [0, end step {end_step}]")
    if end_step > total:
        raise ValueError(f"end step {end_step} is beyond the training length {settings.train} ({total} it)")
    keep_steps = {int(s) for s in keep_steps}
    eval_steps = evaluation_steps(settings, ipe, end_step if evaluate_at_end else None)

    model.to(device)
    if mask is not None:
        mask.apply(model)  # gradient hooks fire before DDP's all-reduce, so the reduced gradients are masked
    net = model
    if distributed.active():
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    writer = distributed.is_main()  # only rank 0 writes checkpoints and metrics
    optimizer = make_optimizer(model.parameters(), settings)
    updates = None
    if mask_schedule is not None:
        updates = MaskUpdates(model, mask_schedule, optimizer, mask=mask)
        mask = updates.mask
    mask_log = [] if mask is None else [(start_step, mask.layer_density())]
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    folder = CheckpointFolder(checkpoint_dir) if checkpoint_dir is not None else None

    step, metrics, wall = start_step, [], 0.0
    loss_sum, loss_count = torch.zeros((), device=device, dtype=torch.float64), 0
    state = None
    if folder is not None:  # rank 0 decides what to resume from; every rank gets the same state
        state = distributed.broadcast_object(folder.load_latest(max_step=end_step) if writer else None)
    if state is not None and state["step"] > start_step:
        if state.get("mask") is not None:  # a mask schedule's mask at that step, bound before the weights load:
            mask = Mask(state["mask"])  # the binding re-zeroes on load, and the weights grown since must survive
            mask_log = [(int(a), dict(b)) for a, b in state["mask_log"]]
            if updates is not None:
                updates.mask = mask
            mask.apply(model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the checkpoint was written without loss scaling
            scaler.load_state_dict(state["scaler"])
        step, metrics, wall = int(state["step"]), list(state["metrics"]), float(state["wall_time"])
        loss_sum.fill_(float(state["loss_sum"]))
        loss_count = int(state["loss_count"])
        if mask is not None:
            mask.apply(model)  # hooks again; weights came masked from the checkpoint

    def snapshot() -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "metrics": metrics,
            "wall_time": wall + (time.perf_counter() - t0),
            "loss_sum": float(loss_sum),
            "loss_count": loss_count,
            "mask": None if updates is None else updates.mask.state_dict(),
            "mask_log": mask_log,
        }

    def write_metrics() -> None:
        if metrics_path is not None and writer:
            atomic_write_text(metrics_path, "".join(_json_line(m) for m in metrics))

    t0 = time.perf_counter()
    test_loader = dataset.loader("test", max(settings.batch_size, 256), seed=0, device=device)
    if evaluate_at_start and step == start_step and not any(m["step"] == step for m in metrics):
        acc, loss = evaluate(model, test_loader.epoch(0), device, amp)
        metrics.append({"step": step, "test_accuracy": acc, "test_loss": loss, "train_loss": None})
        write_metrics()

    check_every = 1 if device.type == "cpu" else 25  # a CUDA sync per step would cost throughput
    bar = _progress_bar(progress and writer, total=end_step - start_step, initial=step - start_step)
    model.train()
    while step < end_step:
        epoch, first = divmod(step, ipe)
        for x, y in loader.epoch(epoch, start_batch=first):
            set_lr(optimizer, settings.lr, lr_factor(step, settings, ipe))
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                out = net(x)
            if distributed.active():
                # this rank's share of the global mean: exact with uneven (even empty) parts, since DDP
                # averages gradients over the ranks
                lo, hi = loader.bounds(step % ipe)
                loss = F.cross_entropy(out.float(), y, reduction="sum") * (distributed.world_size() / (hi - lo))
            else:
                loss = F.cross_entropy(out.float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach().double()
            loss_count += 1
            if step % check_every == 0 or step in eval_steps or step == end_step:
                if distributed.any_rank(not math.isfinite(float(loss_sum)), device):
                    bar.close()
                    metrics.append({"step": step, "diverged": True})
                    write_metrics()
                    raise Diverged(step, float(loss.detach()))
            if updates is not None and updates.after_step(step, batch=(x, y)):
                mask_log.append((step, updates.mask.layer_density()))
            if on_step is not None:
                on_step(step, model)
            if step in eval_steps:
                acc, tl = evaluate(model, test_loader.epoch(0), device, amp)
                metrics.append(
                    {
                        "step": step,
                        "epoch": round(step / ipe, 4),
                        "test_accuracy": acc,
                        "test_loss": tl,
                        "train_loss": float(loss_sum) / max(loss_count, 1),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
                loss_sum.zero_()
                loss_count = 0
                write_metrics()
                bar.set_postfix(acc=f"{acc:.4f}")
            bar.update(1)
            if writer and folder is not None and (
                step in keep_steps or (save_latest and (step % ipe == 0 or step == end_step))
            ):
                folder.save(snapshot(), keep=step in keep_steps, latest=save_latest)
            if step >= end_step:
                break
    bar.close()
    if writer and folder is not None and step in keep_steps and not folder.path_for(step).is_file():
        folder.save(snapshot(), keep=True, latest=False)  # resumed exactly at a kept step: keep it now
    distributed.barrier()  # rank 0's checkpoints are on disk before any rank goes on
    wall += time.perf_counter() - t0
    last = next((m for m in reversed(metrics) if "test_accuracy" in m), None)
    return TrainResult(
        step=step,
        test_accuracy=last["test_accuracy"] if last else None,
        test_loss=last["test_loss"] if last else None,
        wall_time=wall,
        metrics=metrics,
        mask=updates.mask if updates is not None else mask,
        mask_log=mask_log,
        mask_updates=max(len(mask_log) - 1, 0),
    )


def _json_line(obj: dict) -> str:
    import json

    return json.dumps(obj, sort_keys=True) + "\n"


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, file=sys.stderr, leave=False, unit="it", dynamic_ncols=True
    )
