"""prunelab in Lightning: a ``lightning.pytorch.Callback`` that applies a mask or runs a mask schedule.

``pip install prunelab[lightning]``::

    callback = MaskCallback(schedule=prunelab.RigL(sparsity=0.9, every=100, end=7500, grow_gradient="step"))
    trainer = lightning.Trainer(max_steps=10_000, callbacks=[callback])
    trainer.fit(module)              # the mask is in every checkpoint: trainer.fit(module, ckpt_path=...) resumes it
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from lightning.pytorch import Callback
except ImportError:
    raise ImportError("prunelab.integrations.lightning needs lightning: pip install prunelab[lightning]") from None

from torch import nn

from prunelab.integrations.mask_driver import DriverProperties, MaskDriver
from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule

__all__ = ["CHECKPOINT_KEY", "MaskCallback"]

CHECKPOINT_KEY = "prunelab_mask"  # {parameter name: bool keep-mask} in Lightning's checkpoint dict


class MaskCallback(DriverProperties, Callback):
    """Prunes the LightningModule a ``lightning.Trainer`` fits: a fixed ``mask``, or a ``schedule``
    (:class:`prunelab.GradualMagnitude`, :class:`prunelab.SET`, :class:`prunelab.RigL`) driven by
    :class:`prunelab.MaskUpdates`; the mask goes into every checkpoint under ``"prunelab_mask"`` and a fit
    resumed from one (``ckpt_path=``) continues from it.

    Hooks: ``on_fit_start`` applies the mask (after Lightning restored a checkpoint's weights);
    ``on_before_backward`` calls ``MaskUpdates.before_backward``, so ``RigL(grow_gradient="step")`` grows by
    the training step's own dense gradient (Evci et al. 2020, Algorithm 1), at no extra cost;
    ``on_train_batch_end`` calls ``MaskUpdates.after_step`` once per optimizer step (``trainer.global_step``)
    with the step's batch, which ``RigL()`` (``grow_gradient="after_step"``) feeds to the masked module
    (``module(inputs)``, loss ``loss_fn(output, targets)``, cross-entropy by default): the batch must then be
    an ``(inputs, targets)`` pair the module's ``forward`` takes. With ``accumulate_grad_batches > 1``,
    ``RigL(grow_gradient="step")`` adds up the micro-batches' gradients, as ``.grad`` does.

    ``module``: the attribute of the LightningModule the mask is about (e.g. ``"net"``), so a mask found on
    the bare network applies by its own parameter names; None: the LightningModule itself.
    ``coverage_options`` (``include_embeddings``, ``exclude``, ...) choose what a schedule's mask covers.
    """

    def __init__(self, mask: Mask | None = None, schedule: MaskSchedule | None = None,
                 loss_fn: Callable | None = None, module: str | None = None, **coverage_options):
        self.driver = MaskDriver(mask, schedule, loss_fn=loss_fn, **coverage_options)
        self.module = module
        self._resumed: Mask | None = None
        self._last_step = 0

    def _target(self, pl_module) -> nn.Module:
        return pl_module.get_submodule(self.module) if self.module else pl_module

    def on_fit_start(self, trainer, pl_module) -> None:
        optimizers = trainer.optimizers
        if self.driver.schedule is not None and len(optimizers) > 1:
            raise ValueError(f"a mask schedule resets the optimizer state of changed weights in one optimizer; "
                             f"this module has {len(optimizers)}")
        self._last_step = trainer.global_step
        self.driver.start(self._target(pl_module), optimizers[0] if optimizers else None, resumed=self._resumed)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.driver.before_backward(trainer.global_step + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > self._last_step:  # an optimizer step ended (not a micro-batch of an accumulated step)
            self._last_step = step
            self.driver.after_step(step, batch=batch)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.driver.mask is not None:
            checkpoint[CHECKPOINT_KEY] = self.driver.mask.state_dict()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if CHECKPOINT_KEY not in checkpoint:
            raise ValueError(f"the checkpoint has no {CHECKPOINT_KEY!r} (it was not saved with prunelab's "
                             "MaskCallback): the mask cannot be recovered from the weights")
        self._resumed = Mask(checkpoint[CHECKPOINT_KEY])
