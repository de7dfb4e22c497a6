"""What every protocol needs: datasets and models from hyperparameters, the shared dense run, weights at step t.

The dense training of a replicate — (model, dataset, training, seed) — is one run in the store, done
once and shared by every criterion, ablation and lottery run of that replicate. Weights at an
intermediate step t are checkpoints of that run (``step_<t>.pt``); one that is missing is produced by
resuming the dense training from the nearest earlier checkpoint, which gives the same bits as an
uninterrupted run (CPU), so nothing is ever trained twice.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelab.experiments import provenance, runfiles
from prunelab.experiments.hparams import DataHparams, ModelHparams, run_hash
from prunelab.experiments.store import RunStore
from prunelab.training import Diverged, Step, TrainSettings, distributed, iterations, resolve_device, train
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.runtime import RuntimeOptions, torch_threads
from prunelab.training.settings import check_schedule, fit_schedule, recipe

# A training schedule longer than this is a typo, not an experiment: ~900x ResNet-50's 90 ImageNet epochs
# at batch 1024 (Frankle et al. 2021, App. A.3), ~1600x ResNet-20's 160 CIFAR-10 epochs.
MAX_TRAINING_STEPS = 10**8


class RandomLabelsWarning(UserWarning):
    """A run trains on random labels (``DataHparams.random_labels``): said once, so that no one mistakes it for a
    run on the true labels."""


class TrainSubsetWarning(UserWarning):
    """A run trains on a subset of the training examples (``DataHparams.train_examples``): said once."""


class ScheduleScaledWarning(UserWarning):
    """A training shorter than its recipe's warm-up or learning-rate drops takes the recipe's schedule scaled to
    its length (:func:`prunelab.training.settings.fit_schedule`): said once, with the values it got."""


@dataclass(frozen=True)
class Replicate:
    """Everything that fixes a dense network's training: one seed of one (model, dataset, recipe)."""

    model: ModelHparams
    dataset: DataHparams
    training: TrainSettings
    seed: int = 0

    def parts(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "training": self.training, "seed": self.seed}

    def describe(self) -> dict[str, Any]:
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in self.parts().items()}


@dataclass
class Runner:
    """Shared context of protocol runs: the store, data location, device, and counters for tests/logs."""

    store: RunStore
    data_root: str | Path | None = None
    device: str = "auto"
    progress: bool = False
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # how to execute, never part of a hash
    log: tuple[str, ...] = ()  # experiment trackers (prunelab.training.loggers): run-time only, not in any hash
    steps_executed: int = 0
    step_listener: Callable[[int], None] | None = field(default=None, repr=False)  # told of each step trained
    _datasets: dict = field(default_factory=dict, repr=False)
    _checked: set = field(default_factory=set, repr=False)
    _flops: dict = field(default_factory=dict, repr=False)
    _loggers: dict = field(default_factory=dict, repr=False)  # run id -> its loggers, open until finish()
    _executed: dict = field(default_factory=dict, repr=False)  # run id -> how its training steps ran, until finish()

    # ---- building blocks ------------------------------------------------------------------------
    def dataset(self, hp: DataHparams):
        """The dataset with its true labels: what data-driven criteria score (Lee et al. 2019, §5.6: "to
        compute the connection sensitivity, always true labels are used") and what is evaluated on; only
        ``train_examples`` of its training examples when that is set (scoring draws from them too)."""
        from prunelab import data

        hp = dataclasses.replace(hp, random_labels=0.0)  # one copy in memory with or without random labels
        if hp not in self._datasets:
            whole = dataclasses.replace(hp, train_examples=None)
            if whole not in self._datasets:
                self._datasets[whole] = data.load(hp.dataset, data_root=self.data_root, augment=hp.augment)
            ds = self._datasets[whole]
            if hp.train_examples is not None:
                subset = self._datasets[hp] = ds.with_train_subset(hp.train_examples)
                if subset is not ds and distributed.is_main():
                    warnings.warn(f"training on {hp.train_examples:,} of the {len(ds.train):,} training examples of "
                                  f"{hp.dataset}, a random subset that is the same for every seed; the test set is "
                                  "whole", TrainSubsetWarning, stacklevel=2)
        return self._datasets[hp]

    def training_data(self, rep: Replicate):
        """The dataset the replicate trains on: :meth:`dataset`, with ``random_labels`` of its training labels
        replaced at random (Zhang et al. 2017, §2), drawn from the replicate's data seed, so the labels
        are the same in every epoch, every phase of the run and every rerun. Said in one line when it
        happens."""
        hp, ds = rep.dataset, self.dataset(rep.dataset)
        if not hp.random_labels:
            return ds
        seed = rep.training.data_seed_of(rep.seed)
        if (hp, seed) not in self._datasets:
            relabelled = self._datasets[hp, seed] = ds.with_random_labels(hp.random_labels, seed)
            if distributed.is_main():
                warnings.warn(f"training on random labels: {100 * hp.random_labels:g}% of the {len(ds.train):,} "
                              f"training labels ({relabelled.random_labels:,}) redrawn uniformly from the "
                              f"{ds.num_classes} classes (Zhang et al. 2017, §2); the test set and the pruning score "
                              "keep the true labels", RandomLabelsWarning, stacklevel=2)
        return self._datasets[hp, seed]

    def model(self, rep: Replicate, init: str | None = None) -> nn.Module:
        """The replicate's network at initialization, on this runner's device (pruning runs there too)."""
        ds = self.dataset(rep.dataset)
        return rep.model.build(ds.num_classes, ds.input_shape, seed=rep.seed, init=init).to(resolve_device(self.device))

    def iters_per_epoch(self, rep: Replicate) -> int:
        return len(self.dataset(rep.dataset).loader("train", rep.training.batch_size))

    def total_steps(self, rep: Replicate) -> int:
        return iterations(rep.training.train, self.iters_per_epoch(rep))

    def check(self, rep: Replicate) -> None:
        """Everything about a replicate that needs its dataset, checked before any work or write: the
        model fits the dataset, the batch fits the training split, the schedule has a sane length and its
        warm-up and learning-rate drops lie within it. Once per replicate (a sweep checks every job)."""
        if rep in self._checked:
            return
        self.model(rep)  # a model that does not fit the dataset's input shape fails here
        ds, s = self.dataset(rep.dataset), rep.training
        if s.batch_size > len(ds.train):
            raise ValueError(f"batch size {s.batch_size} is larger than the {len(ds.train)} training examples of "
                             f"{rep.dataset.dataset}")
        total = self.total_steps(rep)
        if total > MAX_TRAINING_STEPS:
            raise ValueError(f"training length {s.train} is {total:,} iterations, more than the {MAX_TRAINING_STEPS:,} "
                             "prunelab accepts")
        check_schedule(s, lambda: self.iters_per_epoch(rep))
        self._checked.add(rep)

    def fitted(self, rep: Replicate) -> Replicate:
        """``rep`` with its recipe's warm-up and milestones scaled to a training too short for them, said in one
        line (:class:`ScheduleScaledWarning`); ``rep`` itself when they fit, as every training that ran before
        did, so no run id changes. Values the user gave are never scaled: one past the end is refused in one
        line that lists every conflict. Made where the settings are merged (CLI, sweep plan), before any id;
        reads the data only when the length and the schedule mix epochs and iterations, or to scale."""
        plain = recipe(rep.model.model, rep.dataset.dataset)
        try:
            fitted, note = fit_schedule(rep.training, plain, lambda: self.iters_per_epoch(rep),
                                        f"the {rep.model.model} recipe")
        except ValueError:
            self.model(rep)  # a model that does not fit the dataset is said first, as check() says it
            raise
        if note is None:
            return rep
        rep = dataclasses.replace(rep, training=fitted)
        self.check(rep)  # the note is for a training that will run: any other mistake is said instead
        if distributed.is_main():
            warnings.warn(note, ScheduleScaledWarning, stacklevel=2)
        return rep

    def threads(self, workers: int = 1):
        """A block in which torch computes with the threads this runner's runs promise (``--threads``, else
        :func:`prunelab.training.runtime.default_threads`: one rule for a run launched alone and a sweep's
        worker beside ``workers - 1`` others), the caller's own count back after it."""
        return torch_threads(self.runtime.threads_for(self.device, workers))

    def begin(self, run_id: str, hparams: dict[str, Any]) -> Path:
        """The run's folder with its hyperparameters and this session's provenance record (under its lock)."""
        return self.store.begin(run_id, hparams, provenance.session(self.device, self.runtime))

    def step(self, rep: Replicate, when: str) -> int:
        """A :class:`~prunelab.training.Step` ("0it", "1000it", "2ep", "end") as an iteration count of the
        replicate's schedule; ValueError past its end."""
        return Step.parse(when, allow_end=True).resolve(self.iters_per_epoch(rep), self.total_steps(rep))

    def run_training(self, model, rep: Replicate, folder: Path, **kwargs):
        """The trainer, with this runner's device/progress settings and step counting. A training that
        writes the run's metrics is streamed to this runner's loggers (``log``), which stay open until
        :meth:`finish` records the run's result."""

        def count(step, m):
            self.steps_executed += 1
            if self.step_listener is not None:
                self.step_listener(1)

        loggers = []
        if self.log and kwargs.get("metrics_path") is not None:
            from prunelab.training.loggers import create_loggers

            loggers = create_loggers(self.log, folder.name, self.store.hparams(folder.name), folder)
            self._loggers[folder.name] = loggers
        try:
            res = train(
                model, self.training_data(rep), rep.training, seed=rep.seed, device=self.device,
                runtime=self.runtime, progress=self.progress, checkpoint_dir=folder / runfiles.CHECKPOINTS,
                on_step=count, callbacks=[*kwargs.pop("callbacks", ()), *loggers], **kwargs,
            )
            self._executed.setdefault(folder.name, []).append(res)
            return res
        except Diverged:
            raise  # the protocol records the run as diverged; finish() closes its loggers
        except BaseException:
            for logger in self._loggers.pop(folder.name, []):
                logger.abort()
            raise

    def finish(self, run_id: str, result: dict[str, Any]) -> dict[str, Any]:
        """Record the run's result (``result.json``, with the realized cost of its training steps in this session:
        :func:`realized_cost`) and hand it to the run's loggers, which then close."""
        executed = realized_cost(self._executed.pop(run_id, []), self.runtime.sparse_kernels)
        result = self.store.finish(run_id, {**result, **executed})
        for logger in self._loggers.pop(run_id, []):
            logger.finish(result)
        return result

    def flop_count(self, rep: Replicate):
        """Dense forward FLOPs of one example of the replicate's network, per covered tensor (cached)."""
        import prunelab

        key = (rep.model, rep.dataset)
        if key not in self._flops:
            self._flops[key] = prunelab.flops(self.model(rep), self.dataset(rep.dataset).input_shape)
        return self._flops[key]

    def cost(self, rep: Replicate, own: list, before: list = ()) -> dict[str, Any]:
        """The training-cost fields of a result (see :mod:`prunelab.experiments.cost`)."""
        from prunelab.experiments.cost import account

        return account(self.flop_count(rep), rep.training.batch_size, own, before)

    # ---- the shared dense run -------------------------------------------------------------------
    def dense_id(self, rep: Replicate) -> str:
        return run_hash("dense", **rep.parts())

    def dense(self, rep: Replicate) -> dict[str, Any]:
        """Train the dense network of the replicate fully (once); its result holds the dense accuracy."""
        run_id = self.dense_id(rep)
        return self.store.once(run_id, lambda: self._train_dense(run_id, rep), self.dense_hparams(rep))

    @staticmethod
    def dense_hparams(rep: Replicate) -> dict[str, Any]:
        return {"kind": "dense", **rep.describe()}

    def _train_dense(self, run_id: str, rep: Replicate) -> dict[str, Any]:
        folder = self.begin(run_id, self.dense_hparams(rep))
        model = self.model(rep)
        self._save_init(folder, model)
        end = self.total_steps(rep)
        t0 = time.time()
        try:
            res = self.run_training(model, rep, folder, metrics_path=folder / runfiles.METRICS, keep_steps=[end])
        except Diverged as e:
            return self.finish(run_id, {"status": "diverged", "step": e.step, "kind": "dense"})
        from prunelab.experiments.cost import Segment

        return self.finish(run_id, {
            "status": "done", "kind": "dense", "test_accuracy": res.test_accuracy, "test_loss": res.test_loss,
            "dense_accuracy": res.test_accuracy, "sparsity": 0.0, "wall_time": res.wall_time, "steps": res.step,
            "finished_at": time.time(), "started_at": t0, **self.cost(rep, [Segment(end)]),
        })

    def _save_init(self, folder: Path, model: nn.Module) -> None:
        ck = CheckpointFolder(folder / runfiles.CHECKPOINTS)
        if distributed.is_main() and 0 not in ck.kept_steps():
            ck.folder.mkdir(parents=True, exist_ok=True)
            from prunelab.training.checkpoints import save_checkpoint

            save_checkpoint(ck.path_for(0), {"step": 0, "model": model.state_dict()})

    def weights_at(self, rep: Replicate, step: int) -> dict[str, torch.Tensor]:
        """The dense network's state at ``step`` (0 = initialization, the end = trained)."""
        run_id = self.dense_id(rep)
        if step == self.total_steps(rep):
            self.dense(rep)
        ck = CheckpointFolder(self.store.folder(run_id) / runfiles.CHECKPOINTS)
        state = distributed.broadcast_object(ck.load_step(step) if distributed.is_main() else None)
        if state is not None:
            return state["model"]
        with self.store.lock(run_id):
            return self._produce_weights_at(run_id, rep, step, ck)

    def _produce_weights_at(self, run_id: str, rep: Replicate, step: int, ck: CheckpointFolder):
        folder = self.begin(run_id, self.dense_hparams(rep))
        state = distributed.broadcast_object(ck.load_step(step) if distributed.is_main() else None)
        if state is not None:
            return state["model"]
        model = self.model(rep)
        if step == 0:
            self._save_init(folder, model)
            return model.state_dict()
        # Resume the dense training from the nearest earlier checkpoint up to `step` and keep it. The
        # latest.pt of a longer training is not lost: the trained network is always kept as step_<end>.pt.
        self._save_init(folder, model)
        self.run_training(model, rep, folder, end_step=step, keep_steps=[step], evaluate_at_end=False)
        return model.state_dict()  # the trainer kept it as step_<step>.pt (also when it only resumed)


#: Fields of :func:`realized_cost` that describe a session, not the run: a run resumed after an interruption has
#: other values (only the steps its last session ran are timed), as it has another ``wall_time``.
SESSION_FIELDS = ("step_wall_time", "timed_steps", "sparse_steps")


def realized_cost(trainings: list, mode: str) -> dict[str, Any]:
    """What a run's training steps cost in this session, for its ``result.json``: ``step_wall_time``, the mean wall
    seconds of a training step (forward, backward, optimizer; not evaluation or checkpoints) over ``timed_steps``
    steps, and how they ran: ``sparse_kernels`` (the mode), ``sparse_layers`` (the masked layers that ran on their
    kept weights, :mod:`prunelab.training.sparse_kernels`), ``sparse_steps`` (for how many steps each did) and
    ``dense_layers`` (why each other masked layer ran dense at the end of the last training).
    ``trainings``: the :class:`~prunelab.training.TrainResult` of each training of the run in this session."""
    steps = sum(res.timed_steps for res in trainings)
    seconds = sum(res.step_wall_time * res.timed_steps for res in trainings if res.timed_steps)
    sparse_steps: dict[str, int] = {}
    for res in trainings:
        for name, n in res.execution.get("sparse_steps", {}).items():
            sparse_steps[name] = sparse_steps.get(name, 0) + n
    return {"step_wall_time": seconds / steps if steps else None, "timed_steps": steps,
            "sparse_kernels": mode,
            "sparse_layers": sorted(sparse_steps), "sparse_steps": sparse_steps,
            "dense_layers": trainings[-1].execution.get("dense_layers", {}) if trainings else {}}
