"""The public functions: ``score`` (ask a criterion) and ``prune`` (score and remove, iterated)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from prunelab.batches import with_forward
from prunelab.coverage import COVERAGE_OPTIONS, coverage, prunable_parameters
from prunelab.layer_rules import is_bias_name, layer_rule, parameter_owners, split_fused
from prunelab.masks import Mask
from prunelab.pruning.patterns import parse_pattern, plan_pattern
from prunelab.pruning.removal import _Remover, check_scores, warn_large_ties
from prunelab.pruning.selection import Ties
from prunelab.pruning.targets import _global_targets, _layer_targets, check_iterations, check_sparsity_value
from prunelab.scores.batching import check_score_batch_size
from prunelab.scores.registry import Method, Scores, get_method
from prunelab.validate import SCHEDULES, SCOPES, TIE_RULES, check_name, check_options
from prunelab.wrappers import unwrap

PRUNABLE_OPTIONS = COVERAGE_OPTIONS  # which parameters a mask covers: prunelab.coverage
COMMON_OPTIONS = ("input_shape", "seed")  # prune() arguments; score() accepts them as options too
# How a batch is scored (prunelab.scores.batching): given to the criteria that score a batch; a criterion that
# takes none (SynFlow, magnitude, ...) has nothing to split, and prune() / score() say so once.
BATCH_OPTIONS = ("score_batch_size", "distributed")


class LayerCollapseWarning(UserWarning):
    """A covered tensor lost every weight: it passes no signal, so the network is disconnected unless a skip
    connection bypasses that layer (Tanaka et al. 2020, §3). Also: an attention layer lost every key weight, so
    its attention is uniform over the tokens."""


def _split_options(method: Method, options: dict, extra: Mapping[str, object]):
    prunable = {k: options.pop(k) for k in PRUNABLE_OPTIONS if k in options}
    if options.get("score_batch_size") is not None:
        check_score_batch_size(options["score_batch_size"])
    for k in BATCH_OPTIONS:
        if k in options and k not in method.options:
            value = options.pop(k)
            if value:
                how = ("scores its batch whole, in one piece on one process" if method.needs_data
                       else "scores no batch of data")  # ProsPr's steps need the whole batch's gradient
                warnings.warn(f"{method.name} {how}: {k}={value!r} is ignored", stacklevel=3)
    for k in COMMON_OPTIONS:  # given to every criterion that takes them, ignored by the others
        if k in options:
            v = options.pop(k)
            extra = {**extra, k: v} if extra.get(k) is None else extra
    accepted = set(method.options)
    check_options(method.name, options, accepted | set(PRUNABLE_OPTIONS))
    for k, v in extra.items():  # prune()'s own arguments, for criteria that take them
        if k in accepted and k not in options and v is not None:
            options[k] = v
    return prunable, options


def _with_forward_fn(method: Method, batch, options: dict):
    """``batch`` with ``options``' ``forward_fn(model, *inputs, **kwargs)`` (popped) called in place of the model
    (:func:`prunelab.batches.with_forward`); a criterion that scores no batch ignores it, and says so."""
    forward_fn = options.pop("forward_fn", None)
    if forward_fn is None:
        return batch
    if not method.needs_data:
        warnings.warn(f"{method.name} scores no batch of data: forward_fn is ignored", stacklevel=3)
        return batch
    return with_forward(batch, forward_fn, method.name)


def _resolve_mask(model: nn.Module, mask: Mask | None, prunable: Mapping) -> Mask:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mask is None:
        return Mask.ones(model, **prunable)
    if not isinstance(mask, Mask):
        if isinstance(mask, Mapping):
            mask = Mask(mask)
        else:
            raise ValueError(f"mask must be a prunelab.Mask, got {type(mask).__name__}")
    mask.check_compatible(model)
    if prunable:
        expected = set(prunable_parameters(model, **prunable))
        if expected != set(mask):
            raise ValueError(
                "the mask covers other parameters than the prunable-parameter options select "
                f"({sorted(set(mask) ^ expected)[:3]}...); pass one or the other"
            )
    return mask


def _check_needs(method: Method, batch, options: Mapping) -> None:
    if method.needs_data and batch is None:
        raise ValueError(
            f"{method.name} needs data: pass batch=(inputs, targets) (e.g. ten examples per class, "
            "Frankle et al. 2021, App. B.2); data-free criteria: "
            + ", ".join(n for n, m in _methods().items() if not m.needs_data)
        )
    if method.needs_input_shape and options.get("input_shape") is None:
        raise ValueError(
            f"{method.name} needs input_shape, the shape of one input without the batch dimension, e.g. "
            "input_shape=(3, 32, 32) for CIFAR-10; it cannot be inferred from a module"
        )


def _methods():
    from prunelab.scores.registry import methods

    return methods()


def score(
    model: nn.Module, method: str, batch=None, mask: Mask | None = None, score_batch_size: int | None = None, **options
) -> Scores:
    """``{param_name: scores}`` of criterion ``method`` for the prunable parameters of ``model``.

    ``batch`` for data-driven criteria: ``(inputs, targets)`` with ``inputs`` a tensor, a tuple of positional
    inputs or a mapping of keyword inputs, a mapping alone called as ``model(**batch)`` (Hugging Face style,
    the model's own loss when it computes one), or a list of these (:mod:`prunelab.batches`); ``loss_fn``
    and ``forward_fn(model, *inputs, **kwargs)`` replace the loss and the call. ``mask``: score the masked network
    (pruned weights count as zero); by default the dense mask over the prunable parameters, chosen
    by ``include_bias``, ``include_norm``, ``include_embeddings``, ``include``, ``exclude`` and
    ``filter`` (see :mod:`prunelab.coverage`). Other ``options`` go to the criterion (e.g.
    ``input_shape`` for SynFlow, ``seed`` for random ones, ``temperature`` for GraSP, ``axis`` for
    structured criteria; ``input_shape`` and ``seed`` are ignored by criteria that do not use them).
    ``score_batch_size``: criteria that score a batch (SNIP, GraSP) forward at most that many examples
    at a time and sum, with the same result up to rounding (:mod:`prunelab.scores.batching`; with
    train-mode BatchNorm each micro-batch has its own statistics, and a ``MicroBatchWarning`` says so);
    ``distributed=True`` shares the batch out over the ranks of a DDP job (every rank calls ``score``).
    The model is left as it was: weights, dtype, requires_grad, modes and BatchNorm statistics.
    """
    m = get_method(method)
    model = unwrap(model)  # torch.compile, DataParallel, DDP: their module, whose names the mask has
    if score_batch_size is not None:
        options["score_batch_size"] = score_batch_size
    batch = _with_forward_fn(m, batch, options)
    prunable, options = _split_options(m, dict(options), {})
    mask = _resolve_mask(model, mask, prunable)
    if m.needs_input_shape:
        options.setdefault("input_shape", None)
    _check_needs(m, batch, options)
    out = m.fn(model, mask, batch, **options)
    return out if isinstance(out, Scores) else Scores(out)


def _warn_collapse(mask: Mask, method: str, sparsity: float, model: nn.Module | None = None) -> None:
    # Biases (by the layer rules, prunelab.coverage.is_bias_name) are left out: without them a layer still
    # passes signal; without weights it does not. With ``model``, fused attention is found by its owners' rules.
    empty = [
        n for n, (kept, total) in mask.layer_counts().items() if kept == 0 and total > 0 and not is_bias_name(n)
    ]
    if empty:
        warnings.warn(
            f"layer collapse: {method} at sparsity {sparsity:g} pruned every weight of {_names(empty)}; it passes no "
            "signal, and the network is disconnected unless a skip connection bypasses it (Tanaka et al. 2020, §3). "
            "Try more iterations, scope='layer', or a lower sparsity.",
            LayerCollapseWarning,
            stacklevel=3,
        )
    uniform = uniform_attention(mask, model)
    if uniform:
        warnings.warn(
            f"attention collapse: {method} at sparsity {sparsity:g} pruned every key weight of {_names(uniform)} "
            "(values kept): each key is then the bias alone, the same for every token, so the attention is uniform "
            "over the tokens it may attend to (an average of the values) unless the layer adds a bias_k token.",
            LayerCollapseWarning,
            stacklevel=3,
        )


def _names(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def uniform_attention(mask: Mask, model: nn.Module | None = None) -> list[str]:
    """The fused input projections of ``mask`` whose key part is all pruned while some value weight is kept
    (an empty projection is a layer collapse of its own).

    Which tensors are fused, and which of their slices are the keys and the values, is the layer rule's
    (:func:`prunelab.coverage.split_fused`; ``nn.MultiheadAttention.in_proj_weight`` stacks the query, key and
    value rows in that order): of the owner of each tensor when ``model`` is given, else by the tensor's name
    (what a saved mask alone can say)."""
    owners = {} if model is None else parameter_owners(model)
    out = []
    for name, keep in mask.items():
        if is_bias_name(name):
            continue  # a fused bias (in_proj_bias) emptied is not what makes attention uniform
        parts = split_fused(keep, name, owners.get(name, (None,))[0])
        if parts is not None and "key" in parts and "value" in parts:
            if not parts["key"].any() and parts["value"].any():
                out.append(name)
    return out


def prune(
    model: nn.Module,
    method: str,
    sparsity: float,
    batch=None,
    input_shape: Sequence[int] | None = None,
    iterations: int | None = None,
    schedule: str = "exponential",
    scope: str | None = None,
    invert: bool = False,
    mask: Mask | None = None,
    seed: int = 0,
    distribution: str | Mapping[str, float] | None = None,
    score_batch_size: int | None = None,
    ties: str = "position",
    pattern: str | None = None,
    **options,
) -> Mask:
    """Prune ``model`` to ``sparsity`` with criterion ``method``; returns the :class:`Mask` (the
    model's weights are not changed; ``mask.apply(model)`` zeroes them).

    Each of ``iterations`` (default: the criterion's own, 100 for SynFlow and iterative SNIP, else 1)
    scores the masked network and removes weights down to the next density of ``schedule``
    (:func:`density_schedule`; Frankle et al. 2021, §3, Tanaka et al. 2020, Algorithm 1). ``scope``: ``"global"``
    or ``"layer"``; default the criterion's own (global, or per layer for the structured criteria of
    Paganini & Forde 2020). ``invert``: remove the other end of the ranking (Frankle et al. 2021, §5). ``mask``:
    continue from it (its pruned weights stay pruned). ``seed``: for criteria that draw random
    numbers. ``input_shape``: for SynFlow. ``seed``, ``input_shape`` and ``sparsity`` are also given to the
    criteria that take them as options (PHEW walks until ``sparsity`` is reached). A criterion registered with
    ``revives=True`` (FORCE) ranks, at every iteration, all the weights ``mask`` keeps, so that weights an
    earlier iteration pruned can come back; otherwise pruned weights stay pruned.
    ``distribution``: prune each tensor to its own density,
    ``"uniform"``, ``"er"`` or ``"erk"`` (Evci et al. 2020, §3; see :func:`prunelab.layer_densities`)
    or ``{name: density}`` (e.g. another mask's ``layer_density()``: the random baseline at another
    method's layer densities, Frankle et al. 2021, §5); unstructured criteria only, scope ``"layer"``.
    ``score_batch_size`` (and ``distributed=True`` under DDP): score the batch in micro-batches (and
    across ranks), as in :func:`score`; the batch may stay on the CPU, each micro-batch moves alone.
    ``ties``: how a large tie at a threshold is broken, ``"position"`` (the first tensors first, as always) or
    ``"random"`` (from ``seed``); a :class:`~prunelab.pruning.removal.TieWarning` says when one decided the
    mask, and scores that are all zero stop with a ``ValueError`` naming the all-zero parameters it finds.
    ``pattern``: an N:M constraint such as ``"2:4"``, at most N weights kept in every M consecutive input weights
    of each weight tensor (Zhou et al. 2021, §3; what NVIDIA's sparse tensor cores run): applied first, on the first
    iteration's scores, then the ordinary selection prunes further among the survivors up to ``sparsity``
    (:mod:`prunelab.pruning.patterns`, which says which tensors it constrains); a ``sparsity`` below what the
    pattern prunes by itself is refused; not with ``distribution``, nor with a criterion that builds its own
    mask to the target sparsity (registered ``builds_mask``: NPB, PHEW), whose scores rank no weights in a group.
    Other ``options``: the coverage options
    (``include_bias``, ``include_norm``, ``include_embeddings``, ``include``, ``exclude``, ``filter``;
    see :mod:`prunelab.coverage`) and the criterion's own. Warns :class:`~prunelab.coverage.CoverageWarning`
    when weight tensors of no known layer type are left out of a new mask, and
    :class:`LayerCollapseWarning` when a covered tensor ends with no weight at all. The mask is on
    the CPU, wherever the model and the scores are.
    """
    s = check_sparsity_value(sparsity)
    m = get_method(method)
    model = unwrap(model)  # torch.compile, DataParallel, DDP: their module, whose names the mask has
    if score_batch_size is not None:
        options["score_batch_size"] = score_batch_size
    n_iter = m.default_iterations if iterations is None else check_iterations(iterations)
    check_name("schedule", schedule, SCHEDULES)
    check_name("ties", ties, TIE_RULES)
    nm = parse_pattern(pattern)
    if nm is not None and m.builds_mask:
        raise ValueError(f"{m.name} builds its own mask to the target sparsity (its scores only mark that mask, "
                         f"not a ranking of the weights), so pattern {nm} would choose within each group by "
                         "position; use a ranking criterion (magnitude, snip, synflow, ...) with a pattern")
    if nm is not None and distribution is not None:
        raise ValueError(f"pattern {nm} and distribution do not combine: the pattern sets every constrained tensor's "
                         "density itself; give one of them")
    if scope is None:
        scope = "layer" if distribution is not None else m.default_scope
    else:
        check_name("scope", scope, SCOPES)
    batch = _with_forward_fn(m, batch, options)
    # The target sparsity too: a criterion that builds its mask to a budget (PHEW's walks) takes it.
    prunable, options = _split_options(m, dict(options), {"input_shape": input_shape, "seed": seed, "sparsity": s})
    new_mask = mask is None
    mask = _resolve_mask(model, mask, prunable)
    _check_needs(m, batch, options)
    if new_mask:
        coverage(model, **prunable).warn_unexpected(f"the {method} mask")
    highest = bool(m.prune_highest) != bool(invert)

    plan = None if nm is None else plan_pattern(model, mask, nm, s, scope)  # refused here, before any work
    if distribution is not None:
        targets = _layer_targets(model, m, s, distribution, scope, n_iter, schedule, mask, prunable)
    elif plan is not None:  # the pattern first (it needs one scoring), then the schedule from where it leaves
        targets = _global_targets(s, n_iter, schedule, scope, mask, kept=mask.num_kept - plan.total_pruned) or [s]
    else:
        targets = _global_targets(s, n_iter, schedule, scope, mask)
    scorer = m.scorer(model, batch, **options)
    notify = getattr(scorer, "pruned", None)
    fast = getattr(scorer, "score_flat", None)  # scores only where the remover ranks (SynFlow)
    state = None
    disconnected = False  # an inverted ranking emptied every path (said once, then pruning goes on)
    for i, target in enumerate(targets):
        if fast is not None and state is not None:
            # The fast path's scorer guarantees finite scores itself (SynFlow checks that R is finite).
            values = fast(state.mask(), state.index())
            disconnected = disconnected or _check_some_signal(values, model, method, i, invert)
            state.step_values(values, target, scope, highest, notify, seed + i, check_nan=False)
            continue
        scores = scorer(mask if state is None else state.mask())
        if state is None or m.revives:  # reviving (FORCE): every iteration ranks all that ``mask`` keeps
            check_scores(scores, mask, f"criterion {method!r} returned")
            state = _Remover(mask, next(iter(scores.values())).device, compact=True, ties=Ties(ties, seed))
        disconnected = disconnected or _check_some_signal(scores, model, method, i, invert)
        if plan is not None and (i == 0 or m.revives):  # a reviving criterion's state starts anew each iteration
            plan.apply(state, scores, highest, notify)
        state.step(scores, target, scope, highest, notify=notify, groups=getattr(scores, "groups", None), seed=seed + i)
    result = mask.to("cpu").clone() if state is None else state.final_mask()  # CPU either way
    if state is not None:
        warn_large_ties(state, method)
    _warn_collapse(result, method, s, model)
    return result


def _check_some_signal(scores: Mapping[str, torch.Tensor], model: nn.Module, method: str, iteration: int,
                       invert: bool = False) -> bool:
    """Refuse scores that are all exactly zero: ranked by position, they would prune the first layers first.

    Seen on torchvision's ViT (its head starts at zero, so no gradient reaches any other layer) and on a network
    disconnected by an earlier iteration. The message names the all-zero parameters it finds. The one exception:
    an inverted ranking (Frankle et al. 2021, §5) that disconnected the network at an earlier iteration (inverted
    iterative SynFlow keeps the weights off the paths first), whose outcome, a network that passes no signal, is
    the ablation's result: said in one warning, and True returned (the remaining iterations rank equal scores)."""
    if any(bool(v.any()) for v in scores.values()):
        return False
    if invert and iteration > 0:
        warnings.warn(f"{method}, inverted: every score is 0 at iteration {iteration + 1}: the inverted ranking "
                      "disconnected the network (no path from input to output is left); the remaining iterations "
                      "prune among equal scores", UserWarning, stacklevel=3)
        return True
    zero = []  # the weights of layers (by their rules) that are all zeros
    for n, (module, local) in parameter_owners(model).items():
        rule, p = layer_rule(module), getattr(module, local)
        if rule is not None and rule.role == "layer" and rule.is_weight(local) and not bool(p.detach().any()):
            zero.append(n)
    when = "" if iteration == 0 else f" at iteration {iteration + 1}"
    if zero:
        named = ", ".join(zero[:3]) + (f" and {len(zero) - 3} more" if len(zero) > 3 else "")
        cause = (f"{named} {'is' if len(zero) == 1 else 'are'} all zeros, so no signal reaches the layers it "
                 "separates from the output: re-initialize it (e.g. torch.nn.init.kaiming_normal_) before scoring, "
                 "or exclude it")
    else:
        cause = "no signal reaches the covered weights (a disconnected network, a zero output?)"
    raise ValueError(f"{method}: every score is 0{when}, and a ranking of equal scores would prune the first "
                     f"layers first; {cause}")
