"""Prune at step t and retrain: at initialization (t = 0), early in training, or after training.

Train the dense network for t steps (t = 0: initialization), prune with any criterion, optionally
ablate, then retrain the *whole* schedule from step 0 starting from the weights at t (Frankle et al. 2021,
2021, §3 and §6; Renda et al. 2020). ``prune_at="end"`` with ``method="magnitude"`` is magnitude
pruning after training (Frankle et al. 2021, §3).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import prunelab
from prunelab.experiments import runfiles
from prunelab.experiments.hparams import (
    canonicalize,
    check_duration,
    distribution_names,
    initializer_names,
    method_names,
    run_hash,
)
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
from prunelab.validate import SCHEDULES, SCOPES, TIE_RULES, check_fraction, check_int, check_name, closest

if TYPE_CHECKING:  # torch and what imports it only where a run is computed: ls, show and --help never import it
    from torch import nn

    from prunelab.experiments.runner import Replicate, Runner
    from prunelab.masks import Mask

ABLATIONS = ["shuffle", "reinit", "invert", "fixed_variance", "sign", "sigma_sign"]  # Frankle et al. 2021, §5
# An upper bound that catches a mistyped number before it starts days of work: 100x the pruning iterations
# of the papers (SynFlow and iterative SNIP use 100; Tanaka et al. 2020, §6).
MAX_PRUNE_ITERATIONS = 10_000
# The settings that tell two criteria's runs apart in a legend ("synflow iterations=10"; random pruning at ERK
# densities or at another criterion's: "random distribution=erk", "random like=force").
VARIANT_COLUMNS = ["iterations", "schedule", "scope", "batch_per_class", "pattern", "distribution", "like"]


def _by_method(attribute: str, usual: Any) -> str:
    """"100 for iterative_snip, synflow; 1 otherwise": a criterion default that some criteria change (read
    through prunelab.catalog: --help imports no torch)."""
    from prunelab import catalog

    column = {"default_iterations": 1, "default_scope": 2}[attribute]
    others: dict[Any, list[str]] = {}
    for row in catalog.entries("method_defaults"):
        name, value = row[0], row[column]
        if value != usual:
            others.setdefault(value, []).append(name)
    return "".join(f"{v} for {', '.join(names)}; " for v, names in others.items()) + f"{usual} otherwise"


def _default_iterations() -> str:
    return "the criterion's own: " + _by_method("default_iterations", 1)


def _default_scope() -> str:
    return "layer with --distribution or --like, else the criterion's own: " + _by_method("default_scope", "global")



@dataclasses.dataclass(frozen=True)
class PruneHparams:
    """One-shot or iterative pruning at step ``prune_at`` ("0it" = initialization, "end" = after training)."""

    method: str = option("magnitude", help="pruning criterion (prunelab list methods)", choices=method_names)
    sparsity: float = option(0.9, help="fraction of the covered weights pruned, in [0, 1)")
    prune_at: str = option("0it", help="step whose dense weights are pruned: 0it = initialization, a duration such "
                           "as 1000it, or end = after training")
    iterations: int | None = option(None, help="rounds of scoring and pruning to the target (Tanaka et al. 2020, "
                                    "Alg. 1)", unset=_default_iterations)
    schedule: str = option("exponential", help="density schedule over the rounds", choices=lambda: SCHEDULES)
    scope: str | None = option(None, help="rank all layers together (global) or each layer on its own",
                               choices=lambda: SCOPES, unset=_default_scope)
    ablation: str | None = option(None, help="ablation applied to the mask or weights (Frankle et al. 2021, §5)",
                                  choices=lambda: ABLATIONS, unset="none")
    reinit_init: str | None = option(None, help="initializer the reinit ablation draws the pruned network's weights "
                                     "from; Lee et al. 2019, §5.5 train every pruned network from Glorot (VS-X) "
                                     "weights: xavier_normal", choices=initializer_names,
                                     unset="the model's own (model.init)")
    # SNIP/GraSP batch: 10 examples per class, not augmented (Frankle et al. 2021, App. B.2)
    batch_per_class: int = option(10, help="examples per class in the batch of data-driven criteria (Frankle et al. "
                                  "2021, App. B.2)")
    # What the mask covers (prunelab.coverage): biases, embedding tables, and parameters by exact name.
    include_bias: bool = option(False, help="prune biases too")
    include_embeddings: bool = option(False, help="prune embedding tables too")
    include: tuple[str, ...] = option((), help="parameter names the mask covers besides the default ones")
    exclude: tuple[str, ...] = option((), help="parameter names the mask leaves out")
    # Per-layer densities instead of one ranking: uniform | er | erk (Evci et al. 2020, §3), or those of
    # another mask (Frankle et al. 2021, §5's random baseline): like = a criterion (its run on the same
    # replicate, sparsity and step), a run id, or a mask file.
    distribution: str | None = option(None, help="per-layer densities instead of one global ranking (Evci et al. "
                                      "2020, §3)", choices=distribution_names, unset="none")
    like: str | None = option(None, help="per-layer densities of another mask: a criterion (its run on this "
                              "replicate), a run id or a mask file (Frankle et al. 2021, §5)", unset="none")
    # N:M fine-grained sparsity (Zhou et al. 2021, §3): a constraint on top of the criterion (prunelab.pruning.patterns)
    pattern: str | None = option(None, help="N:M constraint, e.g. 2:4 (at most N kept in every M consecutive "
                                 "input weights, NVIDIA's sparse tensor cores; Zhou et al. 2021, §3): applied first, "
                                 "then the criterion prunes further to the sparsity", unset="none")
    # The criterion's own options (ProsPr's steps, GraSP's temperature, ...) as NAME=VALUE, typed by the criterion's
    # signature and kept sorted: the same options, the same run. Empty by default, so existing run ids stay.
    method_options: tuple[str, ...] = option((), help="the criterion's own options as NAME=VALUE, e.g. steps=5 "
                                             "lr=0.05 first_order=true for prospr (prunelab list options)")
    ties: str = option("position", help="how a large tie at the threshold is broken: the first weights first "
                       "(position), or at random from the seed (random)", choices=lambda: TIE_RULES)
    # An execution setting like the device, outside the run's identity: the score is the same sum
    # (prunelab.scores.batching), except that train-mode BatchNorm normalizes each micro-batch alone, which
    # prune() reports with a MicroBatchWarning.
    score_batch_size: int | None = option(None, help="SNIP/GraSP score at most this many examples per forward "
                                          "pass, to fit GPU memory (the same score; not part of the run id)",
                                          unset="the whole scoring batch at once", identity=False)

    def __post_init__(self) -> None:
        from prunelab.scores import get_method
        from prunelab.scores.batching import check_score_batch_size
        from prunelab.scores.registry import option_text

        method = get_method(self.method)  # unknown criterion: the registry's message, with the closest name
        defaults = method.text_options  # an option given at its default is the run without it: one run id
        object.__setattr__(self, "method_options", tuple(
            f"{k}={option_text(v)}" for k, v in method.parse_options(self.method_options).items()
            if option_text(v) != option_text(defaults[k])))
        canonicalize(self, floats=("sparsity",), durations=("prune_at",) if self.prune_at != "end" else ())
        for name in ("include", "exclude"):  # a set of names: the same set, the same run
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))
        check_name("schedule", self.schedule, SCHEDULES)
        check_name("ties", self.ties, TIE_RULES)
        if self.scope is not None:
            check_name("scope", self.scope, SCOPES)
        check_fraction(self.sparsity, "sparsity", "[0, 1)", "the fraction of the covered weights pruned")
        if self.iterations is not None and check_int(self.iterations, "iterations", 1,
                                                     "1 = one-shot pruning") > MAX_PRUNE_ITERATIONS:
            raise ValueError(f"iterations must be <= {MAX_PRUNE_ITERATIONS:,} (the papers use 100), "
                             f"got {self.iterations}")
        check_int(self.batch_per_class, "batch_per_class", 1, "examples per class in the scoring batch")
        if self.ablation is not None:
            check_name("ablation", self.ablation, ABLATIONS)
        if self.reinit_init is not None:
            check_name("reinit_init", self.reinit_init, initializer_names())
            if self.ablation != "reinit":
                got = "none" if self.ablation is None else repr(self.ablation)
                raise ValueError(f"reinit_init {self.reinit_init!r} is the initializer of the reinit ablation, so it "
                                 f"needs ablation 'reinit' (got {got})")
        if self.prune_at != "end":
            check_duration(self.prune_at, "prune_at")
        if self.distribution is not None:
            check_name("distribution", self.distribution, distribution_names())
        if self.distribution is not None and self.like is not None:
            raise ValueError("give distribution or like, not both: like takes the layer densities of another mask")
        check_score_batch_size(self.score_batch_size)
        if self.pattern is not None:
            from prunelab.pruning.patterns import parse_pattern

            object.__setattr__(self, "pattern", str(parse_pattern(self.pattern)))  # "2 : 4" and "2:4": one run
            if self.distribution is not None or self.like is not None:
                raise ValueError(f"pattern {self.pattern} sets the density of every tensor it constrains, so it does "
                                 "not combine with distribution or like; give one of them")
            if self.ablation == "shuffle":
                raise ValueError(f"ablation 'shuffle' moves the kept weights within each tensor, which breaks the "
                                 f"groups of pattern {self.pattern}; give one of them")

    def coverage_options(self) -> dict[str, Any]:
        """The options of :func:`prunelab.coverage` this run sets (none by default)."""
        names = ("include_bias", "include_embeddings", "include", "exclude")
        return {n: getattr(self, n) for n in names if getattr(self, n)}




def prune_id(rep: Replicate, hp: PruneHparams) -> str:
    return run_hash("prune", **rep.parts(), pruning=hp)


def find_mask(runner: Runner, rep: Replicate, model: nn.Module, hp: PruneHparams, **options) -> Mask:
    """Run criterion ``hp.method`` on ``model``, with the data the criterion needs."""
    method = prunelab.get_method(hp.method)
    ds = runner.dataset(rep.dataset)
    kwargs: dict[str, Any] = dict(options)
    if method.needs_data:
        # Scored in micro-batches, the batch stays in host memory and each micro-batch moves alone.
        device = "cpu" if hp.score_batch_size else next(model.parameters()).device
        kwargs["batch"] = ds.balanced_batch(per_class=hp.batch_per_class, seed=rep.seed, device=device)
    if scores_collectively(hp):
        kwargs["distributed"] = True
    if hp.score_batch_size is not None:
        kwargs["score_batch_size"] = hp.score_batch_size
    if method.needs_input_shape:
        kwargs["input_shape"] = ds.input_shape
    distribution = like_densities(runner, rep, hp) if hp.like else hp.distribution
    if distribution is not None:
        kwargs["distribution"] = distribution
    return prunelab.prune(
        model, hp.method, hp.sparsity, iterations=hp.iterations, schedule=hp.schedule, scope=hp.scope,
        invert=hp.ablation == "invert", seed=rep.seed, ties=hp.ties, pattern=hp.pattern, **hp.coverage_options(),
        **prunelab.get_method(hp.method).parse_options(hp.method_options), **kwargs,
    )


def scores_collectively(hp: PruneHparams) -> bool:
    """Under DDP, a criterion that scores a batch shares it out over the ranks (each scores its part)."""
    from prunelab.training import distributed

    return distributed.active() and "distributed" in prunelab.get_method(hp.method).options


def like_densities(runner: Runner, rep: Replicate, hp: PruneHparams) -> dict[str, float]:
    """The per-layer densities of the mask ``hp.like`` names (Frankle et al. 2021, §5: random pruning at
    another method's layerwise densities): a criterion's name (that criterion's run on the same replicate
    at the same sparsity and step, produced first if needed), a run id (or unique prefix) of this store,
    or a mask file."""
    from pathlib import Path

    from prunelab.masks import Mask

    if hp.like in prunelab.methods():
        other = PruneHparams(method=hp.like, sparsity=hp.sparsity, prune_at=hp.prune_at, **hp.coverage_options())
        result = prune_at_step(runner, rep, other)
        path = runner.store.folder(result["id"]) / runfiles.MASK
    elif Path(hp.like).is_file():
        path = Path(hp.like)
    else:
        from prunelab.experiments.store import open_run

        try:
            store, run_id = open_run(hp.like, runner.store.root)
        except (ValueError, FileNotFoundError) as e:
            near = closest(hp.like, prunelab.methods())
            raise ValueError(
                f"--like {hp.like!r} names no criterion{f' (did you mean {near!r}?)' if near else ''}, no mask file, "
                f"and no run: {e}; give a criterion (e.g. snip), a run id of the store or a mask file"
            ) from None
        path = store.folder(run_id) / runfiles.MASK
        if not path.is_file():
            raise ValueError(f"--like {hp.like}: run {run_id} has no mask (a dense or unfinished run?)")
    return Mask.load(path).layer_density()


def method_labels(rows):
    """The criterion of each run of the runs table, plus the settings that vary among that criterion's runs
    (:data:`VARIANT_COLUMNS`); ``batch_per_class`` only tells apart the runs of criteria that use data."""
    from prunelab.experiments.protocols.labels import variant_labels

    def relevant(method, column: str) -> bool:
        if column != "batch_per_class":
            return True
        try:
            return bool(prunelab.get_method(str(method)).needs_data)
        except ValueError:
            return True

    return variant_labels(rows, "method", VARIANT_COLUMNS, relevant)


def when_label(prune_at: str) -> str:
    """"at init", "after training" or "at 4it": when a run pruned."""
    return "at init" if prune_at == "0it" else "after training" if prune_at == "end" else f"at {prune_at}"


def ablate_weights(model: nn.Module, hp: PruneHparams, mask: Mask, reference_state, seed: int) -> None:
    """The weight ablations of ``hp.ablation``; reinit draws from ``hp.reinit_init`` when set (Lee et al. 2019,
    §5.5: the pruned network trained from Glorot weights whatever the initialization it was pruned at)."""
    from prunelab import ablations

    if hp.ablation == "reinit":
        ablations.reinitialize(model, seed=seed + REINIT_SEED, mask=mask, init=hp.reinit_init)
    elif hp.ablation in ("sign", "sigma_sign"):
        ablations.sign_reinit(model, reference_state, mask, scale="sigma" if hp.ablation == "sigma_sign" else "one")


class PruneAtStep(Protocol):
    name = "run"
    kind = "prune"
    hparams = PruneHparams
    section = "pruning"
    help = "prune at step t (0it = init, end = after training), ablate, retrain"
    citation = "Frankle et al. 2021, §3, §5, §6"
    columns = {"method": "method", "sparsity": "sparsity_target", "prune_at": "prune_at", "ablation": "ablation",
               "iterations": "iterations", "schedule": "schedule", "scope": "scope",
               "batch_per_class": "batch_per_class", "distribution": "distribution", "like": "like",
               "pattern": "pattern"}

    def run_id(self, runner: Runner, rep: Replicate, hp: PruneHparams) -> str:
        return prune_id(rep, hp)

    def check(self, runner: Runner, rep: Replicate, hp: PruneHparams) -> None:
        self.step(runner, rep, hp)

    def step(self, runner: Runner, rep: Replicate, hp: PruneHparams) -> int:
        """The pruning step t, after every check that needs the dataset (before any work or write)."""
        runner.check(rep)
        if hp.coverage_options():  # unknown parameter names fail now, not after the dense training
            prunelab.coverage(runner.model(rep), **hp.coverage_options())
        if hp.like and hp.like not in prunelab.methods():
            like_densities(runner, rep, hp)  # the mask must exist and be readable before any work
        if hp.like == hp.method:
            raise ValueError(f"like {hp.like!r} names this run's own criterion; name another one")
        t = runner.step(rep, hp.prune_at)
        if hp.ablation == "fixed_variance" and t != 0:
            raise ValueError("the fixed_variance ablation changes the initialization, so it needs --prune-at 0it")
        if prunelab.get_method(hp.method).needs_data:
            runner.dataset(rep.dataset).check_per_class(hp.batch_per_class)
        return t

    def dense_step(self, runner: Runner, rep: Replicate, hp: PruneHparams) -> int | None:
        t = runner.step(rep, hp.prune_at)
        return t if 0 < t < runner.total_steps(rep) else None

    def run(self, runner: Runner, rep: Replicate, hp: PruneHparams) -> list[dict[str, Any]]:
        run_id = prune_id(rep, hp)
        t = self.step(runner, rep, hp)
        return [runner.store.once(run_id, lambda: self._run(runner, rep, hp, run_id, t), self.hparams_record(rep, hp))]

    def _run(self, runner: Runner, rep: Replicate, hp: PruneHparams, run_id: str, t: int) -> dict[str, Any]:
        from prunelab import ablations
        from prunelab.experiments.cost import Segment, masked
        from prunelab.training import Diverged

        # The folder first, so that a run whose dense network fails is listed (and its failure recorded).
        folder = runner.begin(run_id, self.hparams_record(rep, hp))
        dense, state_t = dense_first(runner, rep, t)
        model = runner.model(rep)
        model.load_state_dict(state_t)

        def compute() -> Mask:
            scored = model
            if hp.ablation == "fixed_variance":
                # Frankle et al. 2021, §5 "Init": the criterion sees a network whose every layer is N(0, 1),
                # so per-layer variances carry no information; the mask is trained on the usual init.
                scored = runner.model(rep, init="standard_normal")
            mask = find_mask(runner, rep, scored, hp)
            return ablations.shuffle(mask, seed=rep.seed + SHUFFLE_SEED) if hp.ablation == "shuffle" else mask

        mask = mask_once(folder, compute, collective=scores_collectively(hp))
        ablate_weights(model, hp, mask, state_t, rep.seed)
        try:
            res = runner.run_training(model, rep, folder, mask=mask, metrics_path=folder / runfiles.METRICS)
        except Diverged as e:
            return runner.finish(run_id, diverged_result(self.kind, e.step, dense, mask))
        cost = runner.cost(rep, own=[masked(res.step, mask)], before=[Segment(t)])
        return runner.finish(run_id, sparse_result(res, mask, model, dense, kind=self.kind, prune_step=t,
                                                         **cost))

    def label(self, rows, methods: bool = True):
        """The criterion (when ``methods``, else "pruned") and when it pruned: "magnitude at init",
        "magnitude after training", "random at 4it"."""
        base = method_labels(rows) if methods else rows["kind"].astype(str).map(lambda _: "pruned")
        return base + " " + rows["prune_at"].map(when_label)

    def describe(self, hp: dict[str, Any]) -> str:
        pr = hp["pruning"]
        what = f"{pr['method']}@{pr['prune_at']}"
        if pr.get("like"):
            what += f" like {pr['like']}"
        elif pr.get("distribution"):
            what += f" {pr['distribution']}"
        what += f" {pr['pattern']}" if pr.get("pattern") else ""
        what += f"+{pr['ablation']}" if pr.get("ablation") else ""
        return what + (f" from {pr['reinit_init']}" if pr.get("reinit_init") else "")

    def hparams_schema(self) -> dict[str, runfiles.Check]:
        return {"pruning": runfiles.Table(
            {"method": runfiles.STR, "sparsity": runfiles.NUM, "prune_at": runfiles.STR},
            {"ablation": runfiles.Maybe(runfiles.STR), "reinit_init": runfiles.Maybe(runfiles.STR),
             "iterations": runfiles.Maybe(runfiles.INT), "schedule": runfiles.STR,
             "scope": runfiles.Maybe(runfiles.STR), "batch_per_class": runfiles.INT,
             "pattern": runfiles.Maybe(runfiles.STR)})}


PRUNE_AT_STEP = PruneAtStep()


def check_prune(runner: Runner, rep: Replicate, hp: PruneHparams) -> int:
    return PRUNE_AT_STEP.step(runner, rep, hp)


def prune_at_step(runner: Runner, rep: Replicate, hp: PruneHparams) -> dict[str, Any]:
    return PRUNE_AT_STEP.run(runner, rep, hp)[0]
