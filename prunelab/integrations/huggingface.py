"""prunelab in Hugging Face ``transformers``: a ``TrainerCallback`` and the ``save_pretrained`` round trip.

``pip install prunelab[huggingface]``. A fixed mask (found by any criterion before training)::

    mask = prunelab.prune(model, "snip", 0.9, batch={"input_ids": ids, "attention_mask": am, "labels": y})
    trainer = Trainer(model, args, train_dataset=data, callbacks=[MaskCallback(mask=mask)])

or a mask that changes while the Trainer trains (Zhu & Gupta 2018; Mocanu et al. 2018; Evci et al. 2020)::

    callback = MaskCallback(schedule=prunelab.RigL(sparsity=0.9, every=100, end=7500, grow_gradient="step"))

and a pruned model saved and loaded with its mask in one call each::

    save_pretrained(model, "out/pruned")            # weights + out/pruned/prunelab_mask.pt
    model = from_pretrained(BertForSequenceClassification, "out/pruned")   # mask re-applied
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("prunelab.integrations.huggingface needs transformers: pip install prunelab[huggingface]"
                      ) from None

from torch import nn

from prunelab.batches import Batch
from prunelab.integrations.mask_driver import DriverProperties, MaskDriver
from prunelab.mask_binding import applied_mask
from prunelab.masks import Mask
from prunelab.sparse_training import MaskSchedule

__all__ = ["CHECKPOINT_MASK_FILE", "MASK_FILE", "MaskCallback", "from_pretrained", "output_loss", "save_pretrained"]

CHECKPOINT_MASK_FILE = "mask.pt"  # in each Trainer checkpoint folder, checkpoint-<step>/
MASK_FILE = "prunelab_mask.pt"  # beside the weights written by save_pretrained


def output_loss(output: Any, targets: Any = None):
    """The loss a Hugging Face model computed itself (``output.loss``, present when the batch has ``labels``):
    the loss RigL's after-step gradient uses by default, as the Trainer's own loss is."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if loss is None:
        raise ValueError(f"the model returned no loss ({type(output).__name__} without .loss): give the batch its "
                         "labels, or pass MaskCallback(loss_fn=...) computing the loss from the output")
    return loss


class MaskCallback(DriverProperties, TrainerCallback):
    """Prunes the model a ``transformers.Trainer`` trains: a fixed ``mask``, or a ``schedule`` driven by
    :class:`prunelab.MaskUpdates`; the mask is saved in every checkpoint folder as ``mask.pt`` and restored
    from it when training resumes.

    Hooks: ``on_train_begin`` applies the mask (after the Trainer has loaded a resumed checkpoint's weights
    and optimizer); ``on_step_begin`` prepares an update step; ``on_step_end`` (after the optimizer step,
    ``state.global_step`` counting it) calls ``MaskUpdates.after_step``; ``on_save`` writes the mask.

    What a schedule may be:

    * :class:`prunelab.GradualMagnitude` and :class:`prunelab.SET`: any Trainer settings.
    * ``prunelab.RigL(grow_gradient="step")`` (recommended): grows by the dense gradient of the training
      step itself, as Evci et al. (2020, Algorithm 1) do, at no extra cost. The Trainer has no hook between
      the forward and the backward pass (``on_pre_optimizer_step`` runs after the backward), so the gradient
      hooks of ``MaskUpdates.before_backward`` are registered in ``on_step_begin``, before the step's first
      forward pass; with ``gradient_accumulation_steps > 1`` they add up the micro-batches' gradients, as
      ``.grad`` does.
    * ``prunelab.RigL()`` (``grow_gradient="after_step"``): one extra forward and backward pass per update,
      at the weights after the step, on the keyword inputs of the step's last forward call (captured by a
      forward pre-hook that exists only during update steps); the loss is the model's own ``output.loss``
      (:func:`output_loss`) unless ``loss_fn(output, targets)`` is given (``targets`` is then None: the
      labels are among the keyword inputs).

    ``resume_from``: the checkpoint folder (or mask file) whose mask a resumed run continues from; by
    default ``<output_dir>/checkpoint-<global_step>/mask.pt`` when the Trainer resumes at a step > 0. A
    resumed run without a saved mask stops with a ``FileNotFoundError``: a mask cannot be recovered from
    the weights (a regrown weight may be exactly 0).
    ``coverage_options`` (``include_embeddings``, ``exclude``, ...) choose what a schedule's mask covers.
    """

    def __init__(self, mask: Mask | None = None, schedule: MaskSchedule | None = None,
                 loss_fn: Callable | None = None, resume_from: str | os.PathLike | None = None, **coverage_options):
        self.driver = MaskDriver(mask, schedule, loss_fn=loss_fn or output_loss, **coverage_options)
        self.resume_from = resume_from
        self._inputs_hook = None
        self._inputs: Batch | None = None

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, optimizer=None, **kwargs):
        resumed = self._saved_mask(args, state)
        self.driver.start(model, optimizer, resumed=resumed)

    def _saved_mask(self, args, state) -> Mask | None:
        if self.resume_from is not None:
            path = Path(self.resume_from)
            return Mask.load(path / CHECKPOINT_MASK_FILE if path.is_dir() else path)
        if state.global_step == 0:
            return None
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_MASK_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"training resumes at step {state.global_step} but {path} does not exist: pass "
                "MaskCallback(resume_from=<the checkpoint folder>) whose mask.pt the run continues from")
        return Mask.load(path)

    def on_step_begin(self, args, state, control, model: nn.Module | None = None, **kwargs):
        step = state.global_step + 1  # the optimizer step about to run, counted from 1
        self.driver.before_backward(step)
        if self.driver.needs_batch and self.driver.due(step) and model is not None:
            self._inputs_hook = model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)

    def _keep_inputs(self, module, args, kwargs):
        self._inputs = Batch(tuple(args), None, dict(kwargs))

    def on_step_end(self, args, state, control, **kwargs):
        if self._inputs_hook is not None:
            self._inputs_hook.remove()
            self._inputs_hook = None
        batch, self._inputs = self._inputs, None
        self.driver.after_step(state.global_step, batch=batch)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.driver.mask is not None:
            self.driver.mask.save(Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_MASK_FILE)


def save_pretrained(model: nn.Module, folder: str | os.PathLike, mask: Mask | None = None, **kwargs) -> Path:
    """``model.save_pretrained(folder, **kwargs)`` and the mask beside the weights as ``prunelab_mask.pt``.

    ``mask``: by default the mask applied to ``model`` (``mask.apply(model)``); ValueError if there is none.
    Returns the mask file's path.
    """
    if mask is None:
        applied = applied_mask(model)
        if applied is None:
            raise ValueError(f"no mask is applied to this {type(model).__name__}: apply one (mask.apply(model)) or "
                             "pass save_pretrained(model, folder, mask)")
        mask = Mask(applied)
    mask.check_compatible(model)
    model.save_pretrained(folder, **kwargs)
    return mask.save(Path(folder) / MASK_FILE)


def from_pretrained(cls: Any, folder: str | os.PathLike, **kwargs) -> nn.Module:
    """``cls.from_pretrained(folder, **kwargs)`` with the mask saved beside the weights applied again, so
    pruned weights stay exactly 0 in further training. FileNotFoundError if ``folder`` holds no mask."""
    path = Path(folder) / MASK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no prunelab mask in {folder} (expected {MASK_FILE}, written by "
                                "prunelab.integrations.huggingface.save_pretrained)")
    mask = Mask.load(path)
    model = cls.from_pretrained(folder, **kwargs)
    mask.apply(model)
    return model
