"""Streaming a run to the experiment trackers researchers use: TensorBoard and Weights & Biases.

A logger is a trainer :class:`~prunelab.training.loop.Callback`. At the start it records the run's
hyperparameters; after every evaluation it logs the test accuracy and loss, the mean training loss
since the previous evaluation, the learning rate, the epoch, the overall density and each masked
layer's sparsity (``layer_sparsity/conv1 (Conv2d)``); :meth:`RunLogger.finish` logs the final result
as a summary and closes. The metric names are those of ``metrics.jsonl``, so the two agree.

The loggers are chosen by name from :data:`LOGGERS` (``--log tensorboard --log wandb``); another
tracker is one subclass registered there. Logging is a run-time option like ``--device``: it is not
part of a run's hyperparameters and never changes a run's hash.

Where the logs go:

- ``tensorboard``: ``<run folder>/tensorboard/``, so ``tensorboard --logdir runs`` shows every run of
  the store, named by its id. A resumed run hides the events a crashed attempt wrote past its
  checkpoint (TensorBoard's ``purge_step``) and logs the checkpoint's evaluations again.
- ``wandb``: a W&B run whose id and name are the run id, grouped with the replicates that differ only
  by their seed, in project ``$WANDB_PROJECT`` (default ``prunelab``); its local files go under
  ``<run folder>/wandb/``. ``WANDB_MODE=offline`` keeps everything local (``wandb sync`` uploads later).
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from prunelab.analysis.layerwise import layer_labels
from prunelab.registry import Registry, check_name
from prunelab.training.loop import Callback, Loop

# The per-evaluation metrics taken from a metrics.jsonl entry, in this order.
EVALUATION_KEYS = ("test_accuracy", "test_loss", "train_loss", "lr", "epoch")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"lr": 0.1}}`` -> ``{"training.lr": 0.1}``; lists become strings ("80ep 120ep")."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = " ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def replicate_group(hparams: dict[str, Any]) -> str:
    """12 hex digits shared by the runs whose hyperparameters differ only by the seed (W&B's ``group``)."""
    rest = {k: v for k, v in hparams.items() if k != "seed"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


class RunLogger(Callback, abc.ABC):
    """The trainer-facing half shared by every logger; a subclass writes to its tracker.

    ``run_id``: the store's id of the run (the tracker's run name); ``hparams``: its hyperparameters as
    stored in ``hparams.json``; ``folder``: the run's folder, where local files go. Only the process that
    writes files (rank 0) logs.
    """

    name: ClassVar[str]
    module: ClassVar[str]  # the package the logger needs, checked before any work
    extra: ClassVar[str]  # the pip extra that installs it

    def __init__(self, run_id: str, hparams: dict[str, Any], folder: str | os.PathLike):
        self.run_id, self.hparams, self.folder = run_id, hparams, Path(folder)
        self.active = False
        self._labels: dict[str, str] = {}

    # ---- what a tracker implements -------------------------------------------------------------
    @abc.abstractmethod
    def open(self, start_step: int) -> None:
        """Start (or resume) the tracker's run; ``start_step`` is where this training begins."""

    @abc.abstractmethod
    def log(self, step: int, values: dict[str, float]) -> None:
        """Scalars at a training step."""

    @abc.abstractmethod
    def summarize(self, result: dict[str, Any]) -> None:
        """The final result (``result.json``) as the run's summary."""

    @abc.abstractmethod
    def end_run(self, failed: bool = False) -> None:
        """Flush and end the tracker's run (``failed``: the training crashed). Not the trainer's
        ``Callback.close``, which runs when a training ends: a run's tracker stays open until the runner
        has its result (:meth:`finish`) or the run failed (:meth:`abort`)."""

    # ---- the callback ----------------------------------------------------------------------------
    def start(self, loop: Loop) -> None:
        if not loop.writer:
            return
        self.active = True
        self.open(loop.start_step)
        for entry in loop.metrics:  # the checkpoint's evaluations after a resume, or the one at the start
            if "test_accuracy" in entry:
                self.log(int(entry["step"]), self.values(entry, loop))

    def after_step(self, loop: Loop, batch) -> None:
        last = loop.metrics[-1] if loop.metrics else {}
        if self.active and last.get("step") == loop.step and "test_accuracy" in last:
            self.log(loop.step, self.values(last, loop))

    def diverged(self, loop: Loop) -> None:
        if self.active:
            self.log(loop.step, {"diverged": 1.0})

    def values(self, entry: dict[str, Any], loop: Loop) -> dict[str, float]:
        """The scalars of one evaluation: ``entry``'s metrics, the density and each layer's sparsity."""
        out = {k: float(entry[k]) for k in EVALUATION_KEYS if _number(entry.get(k)) is not None}
        mask = loop.mask
        out["density"] = 1.0 if mask is None else mask.density
        if mask is not None:
            if set(self._labels) != set(mask):
                self._labels = layer_labels(loop.model, list(mask))
            for name, sparsity in mask.layer_sparsity().items():
                out[f"layer_sparsity/{self._labels[name]}"] = sparsity
        return out

    def finish(self, result: dict[str, Any]) -> None:
        """Log the run's final result and close (called by the runner once ``result.json`` is written)."""
        if not self.active:
            return
        self.summarize(result)
        self.end_run(failed=False)
        self.active = False

    def abort(self) -> None:
        """Close after a crash: what was logged stays, the run is marked failed where the tracker can."""
        if self.active:
            self.end_run(failed=True)
            self.active = False


def result_scalars(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of a result (accuracy, sparsity, FLOPs, steps ...), for a summary."""
    return {k: v for k, v in ((k, _number(v)) for k, v in result.items()) if v is not None}


class TensorBoardLogger(RunLogger):
    """Scalars, the hyperparameters (HParams dashboard and a text table) and ``result/*`` scalars at the
    last step, in ``<run folder>/tensorboard`` (``torch.utils.tensorboard``)."""

    name, module, extra = "tensorboard", "tensorboard", "tensorboard"

    def open(self, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # purge_step hides what an interrupted attempt logged from start_step on; it is logged again
        self.writer = SummaryWriter(str(self.folder / "tensorboard"), purge_step=start_step)
        self.last_step = start_step
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten(self.hparams).items()}
        metrics = {f"result/{k}": 0.0 for k in ("test_accuracy", "test_loss", "sparsity")}
        for summary in hparams_summary(flat, metrics):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in flat.items())
        self.writer.add_text("hparams", f"| hyperparameter | value |\n|---|---|\n{table}", start_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.last_step = max(self.last_step, step)
        self.writer.flush()

    def summarize(self, result: dict[str, Any]) -> None:
        step = int(result.get("steps") or result.get("step") or self.last_step)
        for key, value in result_scalars(result).items():
            self.writer.add_scalar(f"result/{key}", value, step)
        self.writer.add_text("result", f"status: {result.get('status')}", step)

    def end_run(self, failed: bool = False) -> None:
        self.writer.close()


class WandbLogger(RunLogger):
    """A W&B run named by the run id: config = the hyperparameters, one history row per evaluation,
    summary ``result/*`` = the final result. ``WANDB_MODE=offline`` keeps it on disk."""

    name, module, extra = "wandb", "wandb", "wandb"

    def open(self, start_step: int) -> None:
        import wandb

        hp = self.hparams
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "prunelab"), id=self.run_id, name=self.run_id,
            group=replicate_group(hp), job_type=str(hp.get("kind")), config=hp, dir=str(self.folder),
            tags=[str(t) for t in (hp.get("kind"), (hp.get("model") or {}).get("model"),
                                   (hp.get("dataset") or {}).get("dataset")) if t],
            resume="allow", reinit="create_new",
            settings=wandb.Settings(console="off"),  # prunelab's own output stays as it is
        )
        (self.folder / "wandb").mkdir(exist_ok=True)

    def log(self, step: int, values: dict[str, float]) -> None:
        if step >= self.run.step:  # a resumed W&B run keeps what it had; its steps only go forward
            self.run.log(values, step=step)

    def summarize(self, result: dict[str, Any]) -> None:
        self.run.summary.update({f"result/{k}": v for k, v in result_scalars(result).items()})
        self.run.summary["result/status"] = str(result.get("status"))

    def end_run(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


LOGGERS: Registry[type[RunLogger]] = Registry("logger")
LOGGERS.register("tensorboard", TensorBoardLogger, help="TensorBoard event files in <run>/tensorboard")
LOGGERS.register("wandb", WandbLogger, help="Weights & Biases runs (WANDB_MODE=offline keeps them local)")


def check_loggers(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The names, each a registered logger whose package is installed; else a one-line ValueError (before
    any work: ``--log wandb`` without wandb fails at once, not after the first hour of training)."""
    for name in names:
        cls = LOGGERS.get(check_name("logger", name, LOGGERS.names()))
        if importlib.util.find_spec(cls.module) is None:
            raise ValueError(f"--log {name} needs the {cls.module} package: pip install 'prunelab[{cls.extra}]'")
    return tuple(dict.fromkeys(names))


def create_loggers(names: list[str] | tuple[str, ...], run_id: str, hparams: dict[str, Any],
                   folder: str | os.PathLike) -> list[RunLogger]:
    """One logger per name for the run ``run_id``."""
    return [LOGGERS.get(name)(run_id, hparams, folder) for name in check_loggers(names)]
