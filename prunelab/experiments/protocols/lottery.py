"""Lottery-ticket rewinding (one level) and iterative magnitude pruning (several levels).

Rewinding to step t, finetuning, or sign / sigma*sign reinitialization; unstructured, structured,
hybrid or fc-only; local or global (Frankle et al. 2021, §3 and App. E-F; Paganini & Forde 2020,
§3.1-3.2).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from prunelab.experiments import runfiles
from prunelab.experiments.hparams import canonicalize, check_duration, run_hash
from prunelab.experiments.protocols.base import (
    REINIT_SEED,
    SHUFFLE_SEED,
    Protocol,
    dense_first,
    diverged_result,
    mask_once,
    sparse_result,
)
from prunelab.options import option
from prunelab.validate import SCOPES, check_fraction, check_int, check_name

if TYPE_CHECKING:  # torch and what imports it only where a run is computed: ls, show and --help never import it
    import torch
    from torch import nn

    from prunelab.experiments.cost import Segment
    from prunelab.experiments.runner import Replicate, Runner
    from prunelab.masks import Mask

# What each structure prunes with: weights by magnitude (or at random), or channels by a norm
# (Paganini & Forde 2020, §3.1); fc_only prunes only the fully-connected layers.
STRUCTURE_METHOD = {
    "unstructured": "magnitude", "l1": "l1_channel", "l2": "l2_channel", "linf": "linf_channel",
    "lneginf": "lneginf_channel", "random": "random_channel", "random_unstructured": "random", "hybrid": "hybrid",
    "fc_only": "magnitude",
}
STRUCTURES = list(STRUCTURE_METHOD)
LOTTERY_ABLATIONS = ["shuffle", "reinit"]  # Frankle et al. 2021, App. F
REWIND_CHOICES = ["finetune", "sign", "sigma_sign"]  # besides a duration such as "0it" or "1000it"
# Levels past which (1 - rate)^levels leaves no weight of any network at the smallest rate anyone uses:
# a bound that catches a mistyped number before it starts days of work.
MAX_LEVELS = 100
# The settings that tell two series of levels apart (the level itself is a point of a series).
VARIANT_COLUMNS = ["structure", "rewind_to", "rate", "scope", "ablation"]


@dataclasses.dataclass(frozen=True)
class LotteryHparams:
    """Lottery-ticket rewinding (one level) and iterative magnitude pruning (several),
    Frankle et al. 2021, §3 and Paganini & Forde 2020, §3."""

    levels: int = option(1, help="pruning levels: 1 = one-shot, more = iterative magnitude pruning")
    rate: float = option(0.2, help="fraction of the remaining weights pruned per level")
    rewind_to: str = option("0it", help="step the kept weights are rewound to before retraining (a duration), or "
                            "finetune = keep the trained weights, sign / sigma_sign = reinitialize with the trained "
                            "signs", choices=lambda: REWIND_CHOICES)
    structure: str = option("unstructured", help="what is pruned: weights, or channels by a norm (Paganini & Forde "
                            "2020, §3.1)", choices=lambda: STRUCTURES)
    scope: str = option("global", help="rank all layers together (global) or each layer on its own",
                        choices=lambda: SCOPES)
    ablation: str | None = option(None, help="ablation of the ticket (Frankle et al. 2021, App. F)",
                                  choices=lambda: LOTTERY_ABLATIONS, unset="none")

    def __post_init__(self) -> None:
        canonicalize(self, floats=("rate",),
                     durations=("rewind_to",) if self.rewind_to not in REWIND_CHOICES else ())
        if check_int(self.levels, "levels", 1, "rounds of pruning and retraining") > MAX_LEVELS:
            raise ValueError(f"levels must be at most {MAX_LEVELS}; got {self.levels}")
        check_fraction(self.rate, "rate", "(0, 1)", "the fraction of the remaining weights pruned per level")
        if self.rewind_to not in REWIND_CHOICES:
            check_duration(self.rewind_to, "rewind_to", extra=REWIND_CHOICES)
        check_name("structure", self.structure, STRUCTURES)
        check_name("scope", self.scope, SCOPES)
        if self.ablation is not None:
            check_name("lottery ablation", self.ablation, LOTTERY_ABLATIONS)


def lottery_id(rep: Replicate, hp: LotteryHparams, level: int) -> str:
    return run_hash("lottery", **rep.parts(), lottery=dataclasses.replace(hp, levels=level))


def _prunable_options(model: nn.Module, structure: str) -> dict[str, Any]:
    if structure == "fc_only":
        from torch import nn

        return {"filter": lambda name, p: isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Linear)}
    return {}


def _rewinds(hp: LotteryHparams) -> bool:
    return hp.rewind_to not in REWIND_CHOICES


def ticket_labels(rows):
    """The settings that vary among lottery runs of the runs table, per run ("l2", "unstructured rate=0.5");
    the structure alone when none varies."""
    from prunelab.experiments.protocols.labels import is_missing, varies

    varying = [c for c in VARIANT_COLUMNS if varies(rows[c])] or ["structure"]
    return rows.apply(lambda r: " ".join(f"{r[c]}" if c == "structure" else f"{c}={r[c]}" for c in varying
                                         if not is_missing(r[c])) or "unstructured", axis=1)


class Lottery(Protocol):
    name = "lottery"
    kind = "lottery"
    hparams = LotteryHparams
    section = "lottery"
    help = "lottery-ticket rewinding / iterative magnitude pruning over levels"
    citation = "Frankle et al. 2021, §3; Paganini & Forde 2020, §3"
    result_label = "level"
    columns = {"levels": "level", "rate": "rate", "rewind_to": "rewind_to", "structure": "structure",
               "scope": "scope", "ablation": "ablation"}

    def target_sparsity(self, section: dict[str, Any]) -> float | None:
        """Level L of iterative magnitude pruning keeps (1 - rate)^L of the weights (Paganini & Forde 2020, §3.1)."""
        if "rate" not in section:
            return None
        return 1.0 - (1.0 - float(section["rate"])) ** int(section.get("levels", 1))

    def run_id(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> str:
        return lottery_id(rep, hp, hp.levels)

    def run_ids(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> list[str]:
        return [lottery_id(rep, hp, level) for level in range(1, hp.levels + 1)]

    def check(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> None:
        self.step(runner, rep, hp)

    def step(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> int:
        """The rewinding step t (0 when not rewinding), after every check that needs the dataset."""
        runner.check(rep)
        return runner.step(rep, hp.rewind_to) if _rewinds(hp) else 0

    def dense_step(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> int | None:
        t = self.step(runner, rep, hp)
        return t if 0 < t < runner.total_steps(rep) else None

    def steps_left(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> int:
        total, start = runner.total_steps(rep), self.step(runner, rep, hp)
        return sum(total - start for level in range(1, hp.levels + 1)
                   if runner.store.result(lottery_id(rep, hp, level)) is None)

    def level_record(self, rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, Any]:
        """``hparams.json`` of one level: the series' settings with ``levels`` = that level."""
        return self.hparams_record(rep, dataclasses.replace(hp, levels=level))

    def run(self, runner: Runner, rep: Replicate, hp: LotteryHparams) -> list[dict[str, Any]]:
        """Levels 1..hp.levels, each a cached run built on the previous level (level 0: the dense run).

        Level L keeps a density of (1 - rate)^L of the prunable weights, found by pruning the trained
        weights of level L-1 with the structure's criterion, never reviving a pruned weight (Paganini &
        Forde 2020, §3.1). Its weights: rewound to the dense run's weights at step t and trained from t
        to the end (Frankle et al. 2021, §3, LTR; t = 0 is the original lottery ticket), or finetuned
        from level L-1's trained weights for a whole schedule (Paganini & Forde 2020, §3.2, same budget),
        or sign / sigma*sign of the initial weights (Zhou et al. 2019).
        """
        results = []
        for level in range(1, hp.levels + 1):
            results.append(self.level(runner, rep, hp, level))
            if results[-1]["status"] != "done":
                break  # a diverged level ends the series: the next one has no trained weights to prune
        return results

    def level(self, runner: Runner, rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, Any]:
        run_id = lottery_id(rep, hp, level)
        t = self.step(runner, rep, hp)
        return runner.store.once(run_id, lambda: self._level(runner, rep, hp, level, run_id, t),
                                 self.level_record(rep, hp, level))

    def _trained_state(self, runner: Runner, rep: Replicate, hp: LotteryHparams, level: int
                       ) -> dict[str, torch.Tensor]:
        from prunelab.training.checkpoints import CheckpointFolder

        end = runner.total_steps(rep)
        if level == 0:
            return runner.weights_at(rep, end)
        folder = runner.store.folder(lottery_id(rep, hp, level))
        return CheckpointFolder(folder / runfiles.CHECKPOINTS).load_step(end)["model"]

    def _level(self, runner: Runner, rep: Replicate, hp: LotteryHparams, level: int, run_id: str, t: int
               ) -> dict[str, Any]:
        import prunelab
        from prunelab import ablations
        from prunelab.experiments.cost import masked
        from prunelab.masks import Mask
        from prunelab.training import Diverged

        rewinding = _rewinds(hp)
        folder = runner.begin(run_id, self.level_record(rep, hp, level))
        dense, _ = dense_first(runner, rep, t)
        if level > 1:
            previous = self.level(runner, rep, hp, level - 1)
            if previous["status"] != "done":
                raise ValueError(f"level {level - 1} of this lottery run ended {previous['status']}; cannot go on")
        end = runner.total_steps(rep)
        trained = self._trained_state(runner, rep, hp, level - 1)
        model = runner.model(rep)

        def compute() -> Mask:
            model.load_state_dict(trained)
            previous_mask = None
            if level > 1:
                previous_mask = Mask.load(runner.store.folder(lottery_id(rep, hp, level - 1)) / runfiles.MASK)
            sparsity = 1.0 - (1.0 - hp.rate) ** level
            mask = prunelab.prune(model, STRUCTURE_METHOD[hp.structure], sparsity, scope=hp.scope,
                                  mask=previous_mask, seed=rep.seed + level, **_prunable_options(model, hp.structure))
            return ablations.shuffle(mask, seed=rep.seed + SHUFFLE_SEED + level) if hp.ablation == "shuffle" else mask

        mask = mask_once(folder, compute)

        if hp.rewind_to == "finetune":
            model.load_state_dict(trained)
            start = 0
        else:
            init = runner.weights_at(rep, t if rewinding else 0)
            model.load_state_dict(init)
            start = t
            if hp.rewind_to in ("sign", "sigma_sign"):
                ablations.sign_reinit(model, init, mask, scale="sigma" if hp.rewind_to == "sigma_sign" else "one")
        if hp.ablation == "reinit":
            ablations.reinitialize(model, seed=rep.seed + REINIT_SEED + level, mask=mask)
        try:
            res = runner.run_training(model, rep, folder, mask=mask, start_step=start, keep_steps=[end],
                                      metrics_path=folder / runfiles.METRICS)
        except Diverged as e:
            return runner.finish(run_id, diverged_result(self.kind, e.step, dense, mask, level=level))
        cost = runner.cost(rep, own=[masked(end - start, mask)], before=self._before(runner, rep, hp, level, start))
        return runner.finish(run_id, sparse_result(res, mask, model, dense, kind=self.kind, level=level,
                                                         rewind_step=start, **cost))

    def _before(self, runner: Runner, rep: Replicate, hp: LotteryHparams, level: int, start: int) -> list[Segment]:
        """The training a level needs first: the dense run, then every earlier level at its own mask."""
        from prunelab.experiments.cost import Segment, masked
        from prunelab.masks import Mask

        end = runner.total_steps(rep)
        earlier = [Mask.load(runner.store.folder(lottery_id(rep, hp, k)) / runfiles.MASK) for k in range(1, level)]
        return [Segment(end), *(masked(end - start, m) for m in earlier)]

    def label(self, rows, methods: bool = True):
        """"lottery", plus :func:`ticket_labels` where the lottery settings vary among ``rows``."""
        from prunelab.experiments.protocols.labels import varies

        varying = [c for c in VARIANT_COLUMNS if varies(rows[c])]
        return ("lottery " + ticket_labels(rows)) if varying else rows["kind"].astype(str).map(lambda _: "lottery")

    def describe(self, hp: dict[str, Any]) -> str:
        lt = hp["lottery"]
        return f"{lt['structure']} L{lt['levels']} rewind {lt['rewind_to']}"

    def hparams_schema(self) -> dict[str, runfiles.Check]:
        return {"lottery": runfiles.Table(
            {"levels": runfiles.INT, "rate": runfiles.NUM, "rewind_to": runfiles.STR, "structure": runfiles.STR},
            {"scope": runfiles.STR, "ablation": runfiles.Maybe(runfiles.STR)})}


LOTTERY = Lottery()


def check_lottery(runner: Runner, rep: Replicate, hp: LotteryHparams) -> int:
    return LOTTERY.step(runner, rep, hp)


def lottery(runner: Runner, rep: Replicate, hp: LotteryHparams) -> list[dict[str, Any]]:
    return LOTTERY.run(runner, rep, hp)


def lottery_level(runner: Runner, rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, Any]:
    return LOTTERY.level(runner, rep, hp, level)
