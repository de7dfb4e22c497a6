"""Protocols whose mask changes during training: gradual magnitude pruning, SET and RigL.

Each trains the replicate's network once, from initialization, with a mask schedule of
:mod:`prunelab.sparse_training`; the dense run of the replicate is trained too (shared, once) so that
every result reads as a drop from dense. Steps are durations ("100it", "2ep") resolved against the
replicate's schedule; ``end`` defaults to 75% of training (Evci et al. 2020's T_end; Zhu & Gupta 2018
end pruning well before training ends so the network recovers).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from prunelab.experiments import runfiles
from prunelab.experiments.hparams import canonicalize, check_duration, distribution_names, run_hash
from prunelab.experiments.protocols.base import Protocol, sparse_result
from prunelab.options import option
from prunelab.validate import SCOPES, check_fraction, check_name

if TYPE_CHECKING:  # torch and what imports it only where a run is computed: ls, show and --help never import it
    from prunelab.experiments.runner import Replicate, Runner
    from prunelab.sparse_training import GradualMagnitude, MaskSchedule

END_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class GradualHparams:
    """Gradual magnitude pruning during training (Zhu & Gupta 2018, §3): the cubic schedule from
    ``initial_sparsity`` at ``start`` to ``sparsity`` at ``end``, pruning every ``every`` steps."""

    sparsity: float = option(0.9, help="final sparsity, in [0, 1)")
    initial_sparsity: float = option(0.0, help="sparsity at the first pruning step")
    start: str = option("0it", help="step of the first pruning, a duration")
    end: str | None = option(None, help="step of the last pruning, a duration",
                             unset="75% of training, rounded down to a multiple of every after start")
    every: str = option("100it", help="interval between pruning steps, a duration")
    scope: str = option("global", help="rank all layers together (global) or each layer on its own",
                        choices=lambda: SCOPES)

    def __post_init__(self) -> None:
        canonicalize(self, floats=("sparsity", "initial_sparsity"),
                     durations=("start", "every") + (("end",) if self.end is not None else ()))
        check_fraction(self.sparsity, "sparsity", "[0, 1)", "the final fraction of the covered weights pruned")
        check_fraction(self.initial_sparsity, "initial_sparsity", "[0, 1)")
        if self.initial_sparsity > self.sparsity:
            raise ValueError(f"need 0 <= initial_sparsity <= sparsity < 1, got {self.initial_sparsity} and "
                             f"{self.sparsity}")
        for name in ("start", "every") + (("end",) if self.end is not None else ()):
            check_duration(getattr(self, name), name)
        check_name("scope", self.scope, SCOPES)


@dataclasses.dataclass(frozen=True)
class DynamicHparams:
    """Dynamic sparse training, SET (Mocanu et al. 2018) and RigL (Evci et al. 2020, §3): every ``every``
    steps until ``end`` each layer drops ``drop_fraction`` of its weights (RigL: annealed to 0 by a
    cosine) and grows as many, starting from a random mask at the ``distribution`` layer densities."""

    sparsity: float = option(0.9, help="sparsity kept throughout training, in [0, 1)")
    drop_fraction: float = option(0.3, help="fraction of each layer's weights dropped and regrown per update")
    every: str = option("100it", help="interval between mask updates, a duration")
    end: str | None = option(None, help="step of the last mask update, a duration",
                             unset="75% of training (Evci et al. 2020, §3: T_end)")
    distribution: str = option("erk", help="layer densities of the initial random mask (Evci et al. 2020, §3)",
                               choices=distribution_names)
    grow_gradient: str = option("after_step", help="RigL only: grow by the dense gradient after the step (an "
                                "extra pass) or the step's own (Evci et al. 2020, Alg. 1)",
                                choices=lambda: _grow_gradients())

    def __post_init__(self) -> None:
        canonicalize(self, floats=("sparsity", "drop_fraction"),
                     durations=("every",) + (("end",) if self.end is not None else ()))
        check_fraction(self.sparsity, "sparsity", "[0, 1)", "the fraction of the covered weights pruned")
        check_fraction(self.drop_fraction, "drop_fraction", "(0, 1)", "the share of each layer's weights "
                       "dropped and regrown per update")
        for name in ("every",) + (("end",) if self.end is not None else ()):
            check_duration(getattr(self, name), name)
        check_name("distribution", self.distribution, distribution_names())
        check_name("grow_gradient", self.grow_gradient, _grow_gradients())


def _grow_gradients() -> list[str]:
    from prunelab import catalog

    return catalog.names("grow_gradients")


class _DuringTraining(Protocol):
    """Shared by the three: identity, checks, running with a mask schedule, cost accounting."""

    columns = {"sparsity": "sparsity_target", "every": "update_every", "end": "update_end", "scope": "scope",
               "distribution": "distribution", "drop_fraction": "drop_fraction",
               "initial_sparsity": "initial_sparsity", "start": "update_start"}

    def run_id(self, runner: Runner, rep: Replicate, hp: Any) -> str:
        return run_hash(self.kind, **rep.parts(), **{self.section: hp})

    def check(self, runner: Runner, rep: Replicate, hp: Any) -> None:
        runner.check(rep)
        self.schedule(runner, rep, hp)  # steps within the schedule, a consistent schedule

    def _steps(self, runner: Runner, rep: Replicate, hp: Any) -> tuple[int, int, int]:
        total = runner.total_steps(rep)
        every = runner.step(rep, hp.every)
        if every < 1:
            raise ValueError(f"every must be at least one step, got {hp.every}")
        end = runner.step(rep, hp.end) if hp.end is not None else int(END_FRACTION * total)
        return total, every, end

    @abstractmethod
    def schedule(self, runner: Runner, rep: Replicate, hp: Any) -> MaskSchedule:
        """The mask schedule of this run, its steps resolved against the replicate's training."""

    def hparams_schema(self) -> dict[str, runfiles.Check]:
        return {self.section: runfiles.Table({"sparsity": runfiles.NUM, "every": runfiles.STR})}

    def run(self, runner: Runner, rep: Replicate, hp: Any) -> list[dict[str, Any]]:
        run_id = self.run_id(runner, rep, hp)
        self.check(runner, rep, hp)
        return [runner.store.once(run_id, lambda: self._run(runner, rep, hp, run_id), self.hparams_record(rep, hp))]

    def _run(self, runner: Runner, rep: Replicate, hp: Any, run_id: str) -> dict[str, Any]:
        from prunelab.training import Diverged

        folder = runner.begin(run_id, self.hparams_record(rep, hp))
        dense = runner.dense(rep)
        schedule = self.schedule(runner, rep, hp)
        model = runner.model(rep)
        try:
            res = runner.run_training(model, rep, folder, mask_schedule=schedule,
                                      metrics_path=folder / runfiles.METRICS)
        except Diverged as e:
            return runner.finish(run_id, {"status": "diverged", "step": e.step, "kind": self.kind,
                                                "dense_accuracy": dense.get("test_accuracy")})
        mask = res.mask
        mask.save(folder / runfiles.MASK)
        return runner.finish(run_id, sparse_result(res, mask, model, dense, kind=self.kind,
                                                         mask_updates=res.mask_updates,
                                                         **self._cost(runner, rep, res, schedule)))

    def _cost(self, runner: Runner, rep: Replicate, res, schedule: MaskSchedule) -> dict[str, Any]:
        from prunelab.experiments.cost import Segment, forward_flops

        count = runner.flop_count(rep)
        sizes = {n: res.mask[n].numel() for n in res.mask}
        total = sum(sizes.values())
        log = [*res.mask_log, (res.step, None)]
        segments = []
        for (t, layer_density), (t_next, _) in zip(log, log[1:]):
            density = sum(layer_density[n] * k for n, k in sizes.items()) / total
            segments.append(Segment(t_next - t, layer_density, density))
        if schedule.needs_batch:  # RigL's dense gradient at each update step (Evci et al. 2020, App. H)
            # after_step: an extra forward, input-gradient and dense weight-gradient pass; step: the step's own
            # weight gradient taken dense instead of sparse
            def extra_of(ld):
                if schedule.needs_step_gradients:
                    return count.dense - forward_flops(count, ld)
                return 2 * forward_flops(count, ld) + count.dense

            extra = sum(rep.training.batch_size * extra_of(ld) for t, ld in res.mask_log[1:])
            segments.append(Segment(0, None, 1.0, extra))
        return runner.cost(rep, own=segments)


class Gradual(_DuringTraining):
    name = "gradual"
    kind = "gradual"
    hparams = GradualHparams
    section = "gradual"
    help = "gradual magnitude pruning during training, cubic schedule (Zhu & Gupta 2018)"
    citation = "Zhu & Gupta 2018, §3"

    def schedule(self, runner: Runner, rep: Replicate, hp: GradualHparams) -> GradualMagnitude:
        from prunelab.sparse_training import GradualMagnitude

        total, every, end = self._steps(runner, rep, hp)
        start = runner.step(rep, hp.start)
        if hp.end is None:  # the default end: the last update step at or before 75% of training
            end = start + max(0, (end - start) // every) * every
        if not start <= end <= total:
            raise ValueError(f"gradual pruning from step {start} to {end} must lie within the {total} training steps")
        return GradualMagnitude(every=every, start=start, end=end, sparsity=hp.sparsity,
                                initial_sparsity=hp.initial_sparsity, scope=hp.scope)

    def describe(self, hp: dict[str, Any]) -> str:
        g = hp["gradual"]
        return f"gradual {g['sparsity']} every {g['every']}"


class _Dynamic(_DuringTraining):
    hparams = DynamicHparams
    section = "dynamic"
    schedule_class: str = "SET"  # the name of its class in prunelab.sparse_training (imported when a run starts)

    def schedule(self, runner: Runner, rep: Replicate, hp: DynamicHparams) -> MaskSchedule:
        total, every, end = self._steps(runner, rep, hp)
        if end > total:
            raise ValueError(f"end {hp.end} ({end} it) is past the end of training ({total} it)")
        from prunelab import sparse_training

        schedule_class = getattr(sparse_training, self.schedule_class)
        return schedule_class(every=every, end=end, sparsity=hp.sparsity, drop_fraction=hp.drop_fraction,
                              distribution=hp.distribution, seed=rep.seed, **self.schedule_options(hp))

    def schedule_options(self, hp: DynamicHparams) -> dict[str, Any]:
        """Options of the section only this protocol's schedule takes."""
        if hp.grow_gradient != "after_step":
            raise ValueError(f"grow_gradient={hp.grow_gradient!r} is RigL's; {self.name} grows without a gradient")
        return {}

    def describe(self, hp: dict[str, Any]) -> str:
        d = hp["dynamic"]
        return f"{self.name} {d['sparsity']} {d.get('distribution', 'erk')} every {d['every']}"


class SetProtocol(_Dynamic):
    name = "set"
    kind = "set"
    schedule_class = "SET"
    help = "sparse evolutionary training: drop smallest, regrow at random (Mocanu et al. 2018)"
    citation = "Mocanu et al. 2018"


class RigLProtocol(_Dynamic):
    name = "rigl"
    kind = "rigl"
    schedule_class = "RigL"
    help = "RigL: drop smallest, grow largest dense gradient, cosine-annealed (Evci et al. 2020)"
    citation = "Evci et al. 2020, §3, Algorithm 1"

    def schedule_options(self, hp: DynamicHparams) -> dict[str, Any]:
        return {"grow_gradient": hp.grow_gradient}
