"""The protocols of the papers, each one typed function over a :class:`Runner` and hyperparameters.

- :func:`prune_at_step`: train the dense network for t steps (t = 0: initialization), prune with any
  criterion, optionally ablate, then retrain the *whole* schedule from step 0 starting from the
  weights at t (Renda et al.; 000_e9bcdbe0f53ebd33.txt §3 and §6). ``prune_at="end"`` with
  ``method="magnitude"`` is magnitude pruning after training (000 §3).
- :func:`lottery`: lottery-ticket rewinding (one level) and iterative magnitude pruning (several
  levels), rewinding to step t, finetuning, or sign / sigma*sign reinitialization, unstructured,
  structured, hybrid or fc-only, local or global (000 §3 and App. E-F; 002 §3.1-3.2).
Every result records the dense accuracy of its replicate, so it reads as a drop from dense.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
from torch import nn

import prunelab
from prunelab import ablations
from prunelab.analysis import layer_collapse as collapsed_layers
from prunelab.experiments.hparams import LotteryHparams, PruneHparams, run_hash
from prunelab.experiments.runner import Replicate, Runner
from prunelab.io import set_aside
from prunelab.masks import Mask
from prunelab.training import Diverged, distributed
from prunelab.training.checkpoints import CheckpointFolder

# Seed offsets keep ablation randomness independent of the replicate's init and data order.
_SHUFFLE_SEED, _REINIT_SEED = 1_000, 2_000


def _result(res, mask: Mask, model: nn.Module, dense: dict[str, Any], **extra) -> dict[str, Any]:
    return {
        "status": "done",
        "test_accuracy": res.test_accuracy,
        "test_loss": res.test_loss,
        "dense_accuracy": dense.get("test_accuracy"),
        "sparsity": mask.sparsity,
        "layer_sparsity": mask.layer_sparsity(),
        "layer_collapse": collapsed_layers(mask),
        "coverage": prunelab.mask_coverage(model, mask).to_dict(),
        "wall_time": res.wall_time,
        "steps": res.step,
        "finished_at": time.time(),
        **extra,
    }


def _mask_once(folder, compute) -> Mask:
    """The run's mask: loaded from ``mask.pt`` (resume) or computed once, on rank 0, saved, and broadcast
    so that every rank of a distributed run holds the identical mask."""
    state = None
    if distributed.is_main():
        mask = _load_mask(folder / "mask.pt")
        if mask is None:
            mask = compute()
            mask.save(folder / "mask.pt")
        state = mask.state_dict()
    return Mask(distributed.broadcast_object(state))


def _load_mask(path) -> Mask | None:
    if not path.is_file():
        return None
    try:
        return Mask.load(path)
    except ValueError as e:
        set_aside(path, f"{e}; recomputed")
        return None


# ---- 1 and 2: prune at step t (t = 0 at initialization, t = end after training) ----------------

def prune_id(rep: Replicate, hp: PruneHparams) -> str:
    return run_hash("prune", **rep.parts(), pruning=hp)


def find_mask(runner: Runner, rep: Replicate, model: nn.Module, hp: PruneHparams, **options) -> Mask:
    """Run criterion ``hp.method`` on ``model``, with the data the criterion needs."""
    method = prunelab.get_method(hp.method)
    ds = runner.dataset(rep.dataset)
    kwargs: dict[str, Any] = dict(options)
    if method.needs_data:
        device = next(model.parameters()).device
        kwargs["batch"] = ds.balanced_batch(per_class=hp.batch_per_class, seed=rep.seed, device=device)
    if method.needs_input_shape:
        kwargs["input_shape"] = ds.input_shape
    return prunelab.prune(
        model, hp.method, hp.sparsity, iterations=hp.iterations, schedule=hp.schedule, scope=hp.scope,
        invert=hp.ablation == "invert", seed=rep.seed, **hp.coverage_options(), **kwargs,
    )


def check_prune(runner: Runner, rep: Replicate, hp: PruneHparams) -> int:
    """The pruning step t, after every check that needs the dataset (before any work or write)."""
    runner.check(rep)
    if hp.coverage_options():  # unknown parameter names fail now, not after the dense training
        prunelab.coverage(runner.model(rep), **hp.coverage_options())
    t = runner.step(rep, hp.prune_at)
    if hp.ablation == "fixed_variance" and t != 0:
        raise ValueError("the fixed_variance ablation changes the initialization, so it needs --prune-at 0it")
    if prunelab.get_method(hp.method).needs_data:
        runner.dataset(rep.dataset).check_per_class(hp.batch_per_class)
    return t


def prune_at_step(runner: Runner, rep: Replicate, hp: PruneHparams) -> dict[str, Any]:
    run_id = prune_id(rep, hp)
    t = check_prune(runner, rep, hp)
    return runner.store.once(run_id, lambda: _prune_at_step(runner, rep, hp, run_id, t), _prune_hparams(rep, hp))


def _prune_hparams(rep: Replicate, hp: PruneHparams) -> dict[str, Any]:
    return {"kind": "prune", **rep.describe(), "pruning": dataclasses.asdict(hp)}


def _dense_first(runner: Runner, rep: Replicate, t: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The dense result and the dense weights at step t, training each step once: the weights at t come
    first, so that the full dense training then resumes from them instead of training 0..t twice."""
    end = runner.total_steps(rep)
    state_t = runner.weights_at(rep, t) if t < end else None
    dense = runner.dense(rep)
    if dense["status"] != "done" and t > 0:
        raise ValueError(f"the dense network of this replicate diverged at step {dense.get('step')}; "
                         "there are no trained weights to prune or rewind (lower the learning rate?)")
    return dense, state_t if state_t is not None else runner.weights_at(rep, t)


def _prune_at_step(runner: Runner, rep: Replicate, hp: PruneHparams, run_id: str, t: int) -> dict[str, Any]:
    # The folder first, so that a run whose dense network fails is listed (and its failure recorded).
    folder = runner.begin(run_id, _prune_hparams(rep, hp))
    dense, state_t = _dense_first(runner, rep, t)
    model = runner.model(rep)
    model.load_state_dict(state_t)

    def compute() -> Mask:
        scored = model
        if hp.ablation == "fixed_variance":
            # 000 §5 "Init": the criterion sees a network whose every layer is N(0, 1), so per-layer
            # variances carry no information; the mask is then trained on the usual initialization.
            scored = runner.model(rep, init="standard_normal")
        mask = find_mask(runner, rep, scored, hp)
        return ablations.shuffle(mask, seed=rep.seed + _SHUFFLE_SEED) if hp.ablation == "shuffle" else mask

    mask = _mask_once(folder, compute)
    _ablate_weights(model, hp.ablation, mask, state_t, rep.seed)

    try:
        res = runner.run_training(model, rep, folder, mask=mask, metrics_path=folder / "metrics.jsonl")
    except Diverged as e:
        return runner.store.finish(run_id, {"status": "diverged", "step": e.step, "kind": "prune",
                                            "dense_accuracy": dense.get("test_accuracy"), "sparsity": mask.sparsity})
    return runner.store.finish(run_id, _result(res, mask, model, dense, kind="prune", prune_step=t))


def _ablate_weights(model: nn.Module, ablation: str | None, mask: Mask, reference_state, seed: int) -> None:
    if ablation == "reinit":
        ablations.reinitialize(model, seed=seed + _REINIT_SEED, mask=mask)
    elif ablation in ("sign", "sigma_sign"):
        ablations.sign_reinit(model, reference_state, mask, scale="sigma" if ablation == "sigma_sign" else "one")


# ---- 3 and 4: lottery-ticket rewinding and iterative magnitude pruning -------------------------

_STRUCTURE_METHOD = {
    "unstructured": "magnitude", "fc_only": "magnitude", "random_unstructured": "random",
    "l1": "l1_channel", "l2": "l2_channel", "linf": "linf_channel", "lneginf": "lneginf_channel",
    "random": "random_channel", "hybrid": "hybrid",
}


def lottery_id(rep: Replicate, hp: LotteryHparams, level: int) -> str:
    return run_hash("lottery", **rep.parts(), lottery=dataclasses.replace(hp, levels=level))


def _prunable_options(model: nn.Module, structure: str) -> dict[str, Any]:
    if structure == "fc_only":
        return {"filter": lambda name, p: isinstance(model.get_submodule(name.rsplit(".", 1)[0]), nn.Linear)}
    return {}


def lottery(runner: Runner, rep: Replicate, hp: LotteryHparams) -> list[dict[str, Any]]:
    """Levels 1..hp.levels, each a cached run built on the previous level (level 0: the dense run).

    Level L keeps a density of (1 - rate)^L of the prunable weights, found by pruning the trained
    weights of level L-1 with the structure's criterion, never reviving a pruned weight (002 §3.1).
    Its weights: rewound to the dense run's weights at step t and trained from t to the end (000 §3,
    LTR; t = 0 is the original lottery ticket), or finetuned from level L-1's trained weights for a
    whole schedule (002 §3.2, same budget), or sign / sigma*sign of the initial weights (Zhou et al.).
    """
    results = []
    for level in range(1, hp.levels + 1):
        results.append(lottery_level(runner, rep, hp, level))
        if results[-1]["status"] != "done":
            break  # a diverged level ends the series: the next one has no trained weights to prune
    return results


def _trained_state(runner: Runner, rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, torch.Tensor]:
    end = runner.total_steps(rep)
    if level == 0:
        return runner.weights_at(rep, end)
    folder = runner.store.folder(lottery_id(rep, hp, level))
    return CheckpointFolder(folder / "checkpoints").load_step(end)["model"]


def check_lottery(runner: Runner, rep: Replicate, hp: LotteryHparams) -> int:
    """The rewinding step t (0 when not rewinding), after every check that needs the dataset."""
    runner.check(rep)
    return runner.step(rep, hp.rewind_to) if _rewinds(hp) else 0


def _rewinds(hp: LotteryHparams) -> bool:
    return hp.rewind_to not in ("finetune", "sign", "sigma_sign")


def lottery_level(runner: Runner, rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, Any]:
    run_id = lottery_id(rep, hp, level)
    rewinding = _rewinds(hp)
    t = check_lottery(runner, rep, hp)
    return runner.store.once(run_id, lambda: _lottery_level(runner, rep, hp, level, run_id, rewinding, t),
                             _lottery_hparams(rep, hp, level))


def _lottery_hparams(rep: Replicate, hp: LotteryHparams, level: int) -> dict[str, Any]:
    return {"kind": "lottery", **rep.describe(), "lottery": dataclasses.asdict(dataclasses.replace(hp, levels=level))}


def _lottery_level(runner: Runner, rep: Replicate, hp: LotteryHparams, level: int, run_id: str, rewinding: bool,
                   t: int) -> dict[str, Any]:
    folder = runner.begin(run_id, _lottery_hparams(rep, hp, level))
    dense, _ = _dense_first(runner, rep, t)
    if level > 1:
        previous = lottery_level(runner, rep, hp, level - 1)
        if previous["status"] != "done":
            raise ValueError(f"level {level - 1} of this lottery run ended {previous['status']}; cannot go on")
    end = runner.total_steps(rep)
    trained = _trained_state(runner, rep, hp, level - 1)
    model = runner.model(rep)

    def compute() -> Mask:
        model.load_state_dict(trained)
        previous_mask = None
        if level > 1:
            previous_mask = Mask.load(runner.store.folder(lottery_id(rep, hp, level - 1)) / "mask.pt")
        sparsity = 1.0 - (1.0 - hp.rate) ** level
        mask = prunelab.prune(model, _STRUCTURE_METHOD[hp.structure], sparsity, scope=hp.scope,
                              mask=previous_mask, seed=rep.seed + level, **_prunable_options(model, hp.structure))
        return ablations.shuffle(mask, seed=rep.seed + _SHUFFLE_SEED + level) if hp.ablation == "shuffle" else mask

    mask = _mask_once(folder, compute)

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
        ablations.reinitialize(model, seed=rep.seed + _REINIT_SEED + level, mask=mask)
    try:
        res = runner.run_training(model, rep, folder, mask=mask, start_step=start, keep_steps=[end],
                                  metrics_path=folder / "metrics.jsonl")
    except Diverged as e:
        return runner.store.finish(run_id, {"status": "diverged", "step": e.step, "kind": "lottery", "level": level,
                                            "dense_accuracy": dense.get("test_accuracy"), "sparsity": mask.sparsity})
    return runner.store.finish(run_id, _result(res, mask, model, dense, kind="lottery", level=level, rewind_step=start))
