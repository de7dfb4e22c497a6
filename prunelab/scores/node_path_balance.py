"""NPB (Node-Path Balancing): a data-free mask that balances effective paths and effective nodes, layer by
layer, as a mixed-integer program (Pham et al. 2023).

Pham et al. (2023, §4) find that good sparse masks keep both many input-to-output paths and many nodes
that take part in them, and build a mask layer by layer from the input: given the masks of the layers
before, layer ``l`` with mask ``M`` (``out × in``; for a convolution, ``M_ji`` counts the kept entries of
kernel ``(j, i)``, at most ``c``) maximizes::

    α · (Σ_i u_i + Σ_j v_j) / (in + out)  +  (1 − α) · Σ_{j,i} P_i · M_ji / P_max  +  β · K / n_l

    subject to  Σ_{j,i} M_ji = n_l,  0 ≤ M_ji ≤ c,  u_i ≤ Σ_j M_ji,  v_j ≤ Σ_i M_ji,  u, v ∈ {0, 1}

where ``P_i`` is the number of paths from the input to input node ``i`` of the layer (summed over
positions for a convolution), ``u_i``/``v_j`` mark effective input and output nodes, ``n_l`` is the layer's
budget and ``P_max`` the largest path term that budget allows (the normalization of the authors' code,
github.com/pvh1602/NPB, ``Pruners/utils.py``, ``optimize_layerwise``), so that ``α`` (default 0.01, the
authors' CIFAR script, ``scripts/run.sh``) weighs two terms that are each at most 1.

The third term is the authors' code's regularizer, not the paper's objective: for a convolution, ``K`` is the
number of non-empty kernels (``M_ji > 0``), so ``β`` spreads the layer's budget over as many ``(out, in)``
kernels as it can (the code's ``Reg = (n_l − #empty kernels) / n_l`` differs from ``K / n_l`` by a constant).
``beta`` defaults to 1, the value of the authors' CIFAR-10 script (``--beta 1``; 2 in their Tiny-ImageNet
script; ``optimize_layerwise``'s default is 0.001); ``beta=0`` is the paper's objective. Linear layers get
``β = 0``, as in the code (there ``K = n_l`` anyway: one entry per kernel). ``c`` is the kernel size
``k = kh · kw``, or ``max_per_kernel`` when set (the code's ``--max_p``: 9 in the CIFAR script, 6 for
Tiny-ImageNet, code default 5), raised, as the code does, to the smallest value that can hold the budget when it
cannot (the code: ``⌈n_l / (in · out)⌉``; here also counting entries an earlier mask pruned), with a
:class:`NPBCapWarning`. The default
``max_per_kernel=0`` is no cap: on the 3×3 convolutions of the CIFAR script, ``--max_p 9`` is the kernel size,
and the code never caps the first layer; the code's lowering of the cap by 2 after each shortcut convolution
while it is above 5 and at three VGG stages, and its ``β = 0.001`` without a cap for shortcut convolutions, are
not reproduced.

The authors solve the mixed-integer program with cvxpy. Here it is solved exactly without a MIP solver
(:func:`solve_layer`): from a dense layer, the usual case, the optimum has a closed form (the budget's best
units by marginal reward, dealt round-robin over the outputs); under caps left by an earlier mask it is a
maximum-reward flow with concave node and kernel rewards, whose linear program has an integral optimal vertex,
found by HiGHS's simplex (``scipy.optimize.linprog``, the optional extra ``prunelab[npb]``, needed only then; it
took four minutes on LeNet-300-100's first layer, HiGHS's MIP solver over ten, where the closed form takes a
fraction of a second). Ties between equally good masks are broken at random from ``seed``.

Layer budgets: ``budgets="erk"`` (the authors' default ``--init_mode ERK``), or ``"uniform"``/``"er"``
(:mod:`prunelab.densities`); the counts are rounded so that they add up to exactly the weights
:func:`prunelab.prune` keeps. Path counts ``P`` come from a float64 copy of the network in eval mode whose
covered weights are the masks found so far (1 kept, 0 pruned), other layer weights 1, biases 0 and every
normalization layer the identity (its scale, shift and statistics are not connections), run on an all-ones
input: the number of paths reaching each node. Within a kernel, which of its entries are kept
is drawn at random from ``seed`` too (the code's default, without its weight-magnitude variant).

The scores are 1 for the weights NPB keeps and 0 for the others, so :func:`prunelab.prune` (one-shot,
global scope: the defaults) returns NPB's mask exactly. Differences from the authors' code: large layers are
not split into chunks (the code solves linear layers of more than 512·10 weights in chunks of 10 output rows,
and large convolutions in chunks of output channels, each chunk on its own with the layer's density: a
speed-up that changes the problem; here every layer is solved whole, exactly), and no post-hoc "fine-tuning"
that moves ineffective weights; linear and convolution weights only (grouped convolutions refused), as in the
paper.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from torch import nn

from prunelab.batches import logits
from prunelab.densities import shape_densities
from prunelab.layer_rules import layer_rule, parameter_owners
from prunelab.mask_binding import unbound_copy
from prunelab.masks import Mask
from prunelab.scores.registry import Scores, register_method
from prunelab.validate import check_fraction, check_input_shape, check_seed, check_target_sparsity

DEFAULT_ALPHA = 0.01  # the authors' CIFAR-10 script (scripts/run.sh: --alpha 0.01)
DEFAULT_BETA = 1.0  # the authors' CIFAR-10 script (scripts/run.sh: --beta 1); the code's default is 0.001


def _solver() -> None:
    """scipy (HiGHS), or a one-line ValueError saying how to install it."""
    try:
        import scipy.optimize  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("npb solves a linear program per layer with scipy.optimize.linprog (HiGHS); install it "
                         "with pip install 'prunelab[npb]' (scipy >= 1.9)") from e


class NPBCapWarning(UserWarning):
    """``max_per_kernel`` could not hold a layer's budget and was raised (the authors' rule)."""


def kernel_caps(caps: np.ndarray, budget: int, max_per_kernel: int | None) -> tuple[np.ndarray, int | None]:
    """(the caps with at most ``max_per_kernel`` entries per kernel, the cap used): ``None`` leaves ``caps``
    as they are; a cap that cannot hold ``budget`` is raised to the smallest that can (the authors' code raises
    it to ``⌈budget / (in · out)⌉``, the same from a dense layer)."""
    if max_per_kernel is None:
        return caps, None
    cap = int(max_per_kernel)
    while np.minimum(caps, cap).sum() < min(int(budget), int(caps.sum())):
        cap += 1
    return np.minimum(caps, cap), cap


def best_path_term(paths: np.ndarray, caps: np.ndarray, budget: int) -> float:
    """The largest ``Σ P_i M_ji`` with ``Σ M = budget`` and ``M ≤ caps``: fill the inputs with most paths first."""
    per_input = caps.sum(axis=0)
    total, left = 0.0, budget
    for i in np.argsort(-paths, kind="stable"):
        take = min(left, int(per_input[i]))
        total += take * float(paths[i])
        left -= take
        if left == 0:
            break
    return total


def _weights(paths: np.ndarray, caps: np.ndarray, budget: int, alpha: float,
             beta: float) -> tuple[float, float, float]:
    """(reward per unit of path count, reward per effective node, reward per non-empty kernel): the
    objective's normalized coefficients."""
    scale = best_path_term(paths, caps, budget)
    return ((1.0 - alpha) / scale if scale > 0 else 0.0), alpha / sum(caps.shape), beta / budget


def solve_layer(paths: np.ndarray, caps: np.ndarray, budget: int, alpha: float,
                generator: torch.Generator | None = None, *, beta: float = 0.0,
                max_per_kernel: int | None = None) -> np.ndarray:
    """The counts ``M`` (``out × in`` integers, ``0 ≤ M ≤ caps`` and ``≤ max_per_kernel``, summing to
    ``budget``) maximizing NPB's layer objective with the kernel regularizer ``beta`` (module docstring; Pham et
    al. 2023, §4, and the authors' code), exactly; ``generator`` breaks ties at random. A ``max_per_kernel``
    that cannot hold the budget is raised (:func:`kernel_caps`).

    From a dense layer (every cap the same ``c``, the usual case) the optimum has a closed form: any
    out-degrees ``d_i ≤ out · c`` can be dealt round-robin over the outputs without exceeding ``c`` per kernel,
    covering ``min(out, budget)`` outputs and ``min(d_i, out)`` kernels of each input, the most possible; what is
    left is a separable concave allocation (the first unit out of input ``i`` earns its node reward, each of its
    first ``out`` units a kernel's reward, every unit ``P_i``'s path reward), whose optimum takes the ``budget``
    best units. Under other caps, :func:`_solve_by_flow`.
    """
    n_out, n_in = caps.shape
    budget = int(budget)
    if budget <= 0:
        return np.zeros_like(caps)
    caps, _ = kernel_caps(caps, budget, max_per_kernel)
    if budget >= caps.sum():
        return caps.copy()
    cap = int(caps.max())
    if not (caps == cap).all():
        _solver()
        return _solve_by_flow(paths, caps, budget, alpha, beta)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    path_weight, node_weight, kernel_weight = _weights(paths, caps, budget, alpha, beta)
    reward = path_weight * paths.astype(np.float64)
    per_input = n_out * cap
    owner = np.repeat(np.arange(n_in), per_input)  # every unit each input could send: its first, then the others
    rank = np.tile(np.arange(per_input), n_in)  # 0 for an input's first unit, 1 for its second, ...
    value = node_weight * (rank == 0) + kernel_weight * (rank < n_out) + reward[owner]
    ties = torch.rand(len(value), generator=gen, dtype=torch.float64).numpy()
    best = np.lexsort((ties, -value))[:budget]  # ties among equal values at random
    degree = np.bincount(owner[best], minlength=n_in)
    # deal each input's units to consecutive outputs of a random order: at most ceil(d_i / out) <= c per kernel,
    # min(d_i, out) kernels of input i
    outputs = torch.randperm(n_out, generator=gen).numpy()
    units = np.arange(budget)
    counts = np.zeros((n_out, n_in), dtype=np.int64)
    np.add.at(counts, (outputs[units % n_out], np.repeat(np.arange(n_in), degree)), 1)
    return counts


def _solve_by_flow(paths: np.ndarray, caps: np.ndarray, budget: int, alpha: float, beta: float) -> np.ndarray:
    """NPB's layer optimum under any caps (some weights already pruned, or a ``max_per_kernel``).

    The mixed-integer program is a maximum-reward flow of ``budget`` units: source → input ``i`` → output ``j``
    → sink, with the first unit through a node earning its node reward (an arc of capacity 1) and every unit
    leaving input ``i`` earning ``P_i``'s path reward. Input ``i`` and output ``j`` are joined by two parallel
    arcs: one of capacity ``min(1, caps[j, i])`` earning the kernel reward ``β / n_l`` (kernel ``(j, i)`` is
    non-empty), one of capacity ``caps[j, i] − 1`` earning nothing. Node and kernel rewards are concave in the
    flow (the rewarded arc is worth at least its parallel one), so the linear program over this network (an
    incidence matrix of a directed multigraph: totally unimodular) has an integral optimal vertex, and HiGHS's
    dual simplex (``scipy.optimize.linprog``) returns one: the MIP's optimum, in the time of an LP.
    """
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, hstack, identity, vstack

    n_out, n_in = caps.shape
    path_weight, node_weight, kernel_weight = _weights(paths, caps, budget, alpha, beta)
    n_x = n_out * n_in
    p = paths.astype(np.float64)
    # variables: the first unit x of each kernel (row-major over (out, in)) and its further units y; first unit
    # a and further units b out of each input; first unit c and further units d into each output. linprog
    # minimizes: rewards enter negated.
    cost = np.concatenate([-kernel_weight * np.ones(n_x), np.zeros(n_x), -(node_weight + path_weight * p),
                           -path_weight * p, -node_weight * np.ones(n_out), np.zeros(n_out)])
    rows = np.arange(n_x)
    j, i = np.divmod(rows, n_in)
    ones = np.ones(n_x)
    out_of_input = coo_matrix((ones, (i, rows)), shape=(n_in, n_x))
    into_output = coo_matrix((ones, (j, rows)), shape=(n_out, n_x))
    eye_in, eye_out = identity(n_in), identity(n_out)
    zero_in_out, zero_out_in = coo_matrix((n_in, n_out)), coo_matrix((n_out, n_in))
    equalities = vstack([
        # the source sends the budget: Σ_i (a_i + b_i) = budget
        hstack([coo_matrix((1, 2 * n_x)), np.ones((1, n_in)), np.ones((1, n_in)), coo_matrix((1, 2 * n_out))]),
        # what enters input i leaves it: a_i + b_i − Σ_j (x_ji + y_ji) = 0
        hstack([-out_of_input, -out_of_input, eye_in, eye_in, zero_in_out, zero_in_out]),
        # what enters output j leaves it: Σ_i (x_ji + y_ji) − c_j − d_j = 0
        hstack([into_output, into_output, zero_out_in, zero_out_in, -eye_out, -eye_out]),
    ]).tocsr()
    rhs = np.concatenate([[budget], np.zeros(n_in + n_out)])
    flat = caps.reshape(-1)
    upper = np.concatenate([np.minimum(flat, 1), np.maximum(flat - 1, 0), np.ones(n_in), caps.sum(axis=0),
                            np.ones(n_out), caps.sum(axis=1)])
    result = linprog(cost, A_eq=equalities, b_eq=rhs, bounds=np.stack([np.zeros_like(upper), upper], axis=1),
                     method="highs-ds")
    if result.x is None:  # pragma: no cover - always feasible: budget <= sum of caps
        raise ValueError(f"npb: HiGHS found no mask for a layer of shape {caps.shape} ({result.message})")
    x = result.x[:n_x] + result.x[n_x:2 * n_x]
    counts = np.rint(x).astype(np.int64)
    if np.abs(x - counts).max() > 1e-6 or counts.sum() != budget:  # pragma: no cover - a vertex is integral
        raise ValueError(f"npb: the solver returned a fractional mask for a layer of shape {caps.shape}")
    return counts.reshape(n_out, n_in)


def objective(paths: np.ndarray, counts: np.ndarray, caps: np.ndarray, budget: int, alpha: float,
              beta: float = 0.0, max_per_kernel: int | None = None) -> float:
    """NPB's layer objective of the counts ``M`` (for reports and tests), ``P_max`` under ``max_per_kernel``."""
    n_out, n_in = counts.shape
    scale = best_path_term(paths, kernel_caps(caps, budget, max_per_kernel)[0], budget)
    nodes = (counts.sum(axis=0) > 0).sum() + (counts.sum(axis=1) > 0).sum()
    path_term = float((counts * paths[None, :]).sum()) / scale if scale > 0 else 0.0
    kernels = float((counts > 0).sum()) / budget if budget > 0 else 0.0
    return alpha * nodes / (n_in + n_out) + (1.0 - alpha) * path_term + beta * kernels


def _budgets(shapes: dict[str, tuple], kept: dict[str, int], sparsity: float, budgets: str) -> dict[str, int]:
    """Kept weights per tensor: the distribution's densities, rounded by largest remainder to exactly the number
    that :func:`prunelab.prune` keeps, and never more than the mask already keeps."""
    from prunelab.pruning.targets import num_to_prune  # not at the top: prunelab.pruning imports the scores

    sizes = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    keep = total - num_to_prune(sparsity, total)
    density = shape_densities(shapes, sparsity, budgets)
    exact = {n: min(density[n] * sizes[n], kept[n]) for n in shapes}
    counts = {n: min(math.floor(v), kept[n]) for n, v in exact.items()}
    short = keep - sum(counts.values())
    for n in sorted(shapes, key=lambda n: exact[n] - counts[n], reverse=True):
        if short <= 0:
            break
        if counts[n] < kept[n]:
            counts[n] += 1
            short -= 1
    return counts


def _check_layers(model: nn.Module, mask: Mask) -> dict[str, nn.Module]:
    owners = parameter_owners(model)
    out = {}
    for name in mask:
        module, local = owners.get(name, (None, name))
        if local != "weight":
            module = None
        if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1:
            out[name] = module
        elif isinstance(module, nn.Linear):
            out[name] = module
        else:
            what = f"the weight of a {type(module).__name__}" if module is not None else "not a layer's weight"
            if isinstance(module, nn.modules.conv._ConvNd):
                what = f"the weight of a {'transposed' if module.transposed else 'grouped'} {type(module).__name__}"
            raise ValueError(f"npb builds masks of linear and convolution weights (Pham et al. 2023, §4); {name!r} "
                             f"is {what}; leave it out with exclude=[{name!r}]")
    return out


def _without_norms(net: nn.Module) -> nn.Module:
    """``net`` with every normalization layer (BatchNorm, LayerNorm, GroupNorm, ...: role ``norm`` in
    :mod:`prunelab.layer_rules`) replaced by ``nn.Identity``. A path count is a count of kept connections; a
    norm layer's scale, shift and statistics are not connections, and would scale the counts (and, a shift
    before a ReLU, zero some of them) if left in the copy."""
    norms = [name for name, m in net.named_modules() if name and (rule := layer_rule(m)) is not None
             and rule.role == "norm"]
    for name in norms:
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, nn.Identity())
    return net


def _path_counts(net: nn.Module, module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Paths from the input to each input node of ``module``: its input on ``x``, summed over all but the
    channel (features) dimension."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            logits(net(x))
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"npb: {type(module).__name__} is not called by the model's forward pass")
    t = seen[0]
    channel = t.dim() - 1 if isinstance(module, nn.Linear) else 1
    dims = [d for d in range(t.dim()) if d != channel]
    return t.sum(dim=dims).cpu().numpy()


@register_method(
    "npb",
    needs_data=False,
    needs_input_shape=True,
    description="1 for the weights kept by node-path balancing, optimized layer by layer (Pham et al. 2023)",
    family="init_data_free",
    year=2023,
    builds_mask=True,
)
def npb(model, mask, batch=None, *, input_shape=None, sparsity: float | None = None, alpha: float = DEFAULT_ALPHA,
        beta: float = DEFAULT_BETA, max_per_kernel: int = 0, budgets: str = "erk", seed: int = 0) -> Scores:
    """Node-Path Balancing (Pham et al. 2023, §4): per layer from the input, the mask of the layer's budget that
    maximizes ``α · effective nodes + (1 − α) · effective paths + β · non-empty kernels`` (all normalized; the
    last term the authors' code's, convolutions only; module docstring), solved exactly. ``sparsity``: the target
    (:func:`prunelab.prune` passes its own); ``budgets``: the layer densities (``erk``, the paper's; ``uniform``,
    ``er``); ``alpha`` in [0, 1]; ``beta >= 0`` (1: the authors' CIFAR script; 0: the paper's objective);
    ``max_per_kernel``: at most this many entries per convolution kernel (the code's ``--max_p``; ``0``: the
    kernel size), raised where a layer's budget needs more; ``seed`` picks the kept entries within a kernel and
    breaks ties. Scores are 1 (kept) and 0: one-shot and global, the defaults."""
    shape = check_input_shape(input_shape, "npb")
    sparsity = check_target_sparsity(sparsity, "npb")
    alpha = check_fraction(alpha, "alpha", "[0, 1]", "the weight of effective nodes against effective paths")
    beta = _check_beta(beta)
    max_per_kernel = _check_max_per_kernel(max_per_kernel)
    seed = check_seed(seed)
    params = mask.check_compatible(model)
    layers = _check_layers(model, mask)
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    counts = _budgets(shapes, {n: int(mask[n].sum()) for n in params}, sparsity, budgets)
    if not all(bool(mask[n].all()) for n in params):
        _solver()  # layers that start pruned need the LP (solve_layer); a missing solver is reported before any work

    net = _without_norms(unbound_copy(model)).double().eval()
    copies = dict(net.named_parameters())
    owners = parameter_owners(net)
    with torch.no_grad():
        for name, p in copies.items():
            module, local = owners.get(name, (None, name))
            rule = layer_rule(module)
            if name in params:
                p.copy_(mask[name].to(p.device, p.dtype))
            elif rule is not None and rule.role == "layer":
                p.fill_(0.0 if rule.is_bias(local) else 1.0)
            p.requires_grad_(False)
    device = next((p.device for p in copies.values()), torch.device("cpu"))
    x = torch.ones((1, *shape), dtype=torch.float64, device=device)
    modules = dict(net.named_modules())
    own_names = {id(m): n for n, m in model.named_modules()}
    order = _forward_order(net, [modules[own_names[id(m)]] for m in layers.values()], x)
    by_module = {id(modules[own_names[id(m)]]): n for n, m in layers.items()}
    gen = torch.Generator().manual_seed(seed)
    out = Scores()
    raised: list[str] = []
    for module in order:
        name = by_module[id(module)]
        keep = mask[name].cpu()
        kernel = math.prod(keep.shape[2:]) if keep.dim() > 2 else 1
        flat = keep.reshape(keep.shape[0], keep.shape[1], kernel)
        caps = flat.sum(dim=2).numpy().astype(np.int64)
        paths = _path_counts(net, module, x)
        conv = isinstance(module, nn.modules.conv._ConvNd)  # the code's beta = 0 and no cap for linear layers
        cap = max_per_kernel if conv else None
        used = kernel_caps(caps, counts[name], cap)[1]
        if used != cap:
            raised.append(f"{name} to {used}")
        chosen = solve_layer(paths, caps, counts[name], alpha, gen, beta=beta if conv else 0.0, max_per_kernel=cap)
        new = _place(flat, torch.from_numpy(chosen), gen).reshape(keep.shape)
        with torch.no_grad():
            copies[name].copy_(new.to(copies[name].device, copies[name].dtype))
        out[name] = new.to(params[name].device, torch.float32)
    if raised:
        warnings.warn(f"npb: max_per_kernel={max_per_kernel} cannot hold the budget of every layer; raised, as the "
                      f"authors' code does, for {', '.join(raised)}", NPBCapWarning, stacklevel=2)
    return out


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a number >= 0, the weight of non-empty kernels (1 in the authors' CIFAR "
                         f"script, 0 for the paper's objective); got {beta!r}")
    return float(beta)


def _check_max_per_kernel(cap) -> int | None:
    """The cap of entries per convolution kernel, ``None`` for none (``0``)."""
    if isinstance(cap, bool) or not isinstance(cap, numbers.Integral) or cap < 0:
        raise ValueError(f"max_per_kernel must be an integer >= 0 (kept entries per convolution kernel; 0: no cap, "
                         f"the kernel size); got {cap!r}")
    return int(cap) or None


def _forward_order(net: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> list[nn.Module]:
    """``modules`` in the order the forward pass first calls them (those never called: ValueError)."""
    called: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, a: called.append(m) if m not in called else None)
               for m in modules]
    try:
        with torch.no_grad():
            logits(net(x))
    except (RuntimeError, TypeError, IndexError) as e:  # token ids, decoder inputs: not an all-ones input
        from prunelab.scores.synflow import failing_module

        for h in handles:
            h.remove()
        handles = []
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"npb counts paths with an all-ones input of shape {tuple(x.shape[1:])}, and "
                         f"{failing_module(net, x)} cannot take it ({reason[:120]}); use a criterion that reads "
                         "a batch (snip, grasp)") from None
    finally:
        for h in handles:
            h.remove()
    missing = [m for m in modules if m not in called]
    if missing:
        names = {id(m): n for n, m in net.named_modules()}
        raise ValueError(f"npb: the forward pass of an all-ones input never calls {names.get(id(missing[0]), '?')} "
                         f"({type(missing[0]).__name__}); its paths cannot be counted, so npb cannot score this model")
    return called


def _place(flat_keep: torch.Tensor, counts: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A keep-mask with ``counts[j, i]`` of the currently kept entries of kernel ``(j, i)``, drawn at random."""
    n_out, n_in, kernel = flat_keep.shape
    if kernel == 1:
        return counts.reshape(n_out, n_in, 1).bool()
    order = torch.rand(flat_keep.shape, generator=gen, dtype=torch.float64)
    order = order.masked_fill(~flat_keep, 2.0)  # pruned entries last: never chosen
    rank = order.argsort(dim=2).argsort(dim=2)
    return rank < counts.unsqueeze(2)
