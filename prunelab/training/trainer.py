"""The training loop: masked, resumable, startable at any step, bitwise reproducible on CPU.

Steps count completed iterations. The learning rate at a step is a pure function of the step
(:func:`prunelab.training.optim.lr_factor`) and the batches of a step are a pure function of
(data seed, epoch, batch index), so training can begin at any step without replaying the loader:
the prune-at-step-t protocol retrains the whole schedule from step 0 (Renda et al. 2020; Frankle et al.
2021, §6), a rewound lottery ticket continues from step t (Frankle et al. 2021, §3, LTR).

:func:`train` is a short :class:`Loop` (learning rate, forward, backward, optimizer step, divergence
check) and :class:`Callback` objects for everything else: evaluation, the metrics file, checkpoints,
mask updates during training, a user's per-step hook (:mod:`prunelab.training.loop`,
:mod:`prunelab.training.callbacks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule
from prunelab.training import distributed
from prunelab.training.callbacks import (
    Checkpoints,
    Evaluation,
    MaskScheduleUpdates,
    MetricsFile,
    StepHook,
    evaluation_steps,
)
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.devices import resolve_device
from prunelab.training.durations import iterations
from prunelab.training.loop import Callback, Loop, TrainResult
from prunelab.training.optim import make_optimizer
from prunelab.training.precision import Precision
from prunelab.training.runtime import RuntimeOptions
from prunelab.training.settings import TrainSettings


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
                            shard=(distributed.rank(), distributed.world_size()),
                            **runtime.loader_options(dataset, device))
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
