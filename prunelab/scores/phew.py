"""PHEW: a sparse network made of the paths of random walks biased by weight magnitude (Patil & Dovrolis 2021).

PHEW builds a mask rather than ranking weights: walks go from an input unit to an output unit (and from an output
unit back to an input unit, alternately), each step choosing the next unit with probability proportional to the
magnitude of the connecting weight, and every weight a walk crosses is kept, until the budget of kept weights is
reached. No data: the walks read only the weights at initialization; normalization layers (their scale, shift
and statistics) play no part in them, nor in the forward pass that finds the chain of layers (:func:`_order`).

To fit prunelab's score-then-remove contract (Frankle et al. 2021, §3), the score of a weight records *when* the
walks first reached it: the earliest-reached weight scores highest, weights no walk reached score 0. Keeping the
top ``k`` then keeps exactly the first ``k`` distinct weights the walks reach: the union of the walks, the last walk
cut where the budget runs out (the authors' code finishes that walk and overshoots the budget by up to one path).
Visit *counts* would not do: their top ``k`` is not a union of walks.

Walks and layers (the authors' code, github.com/ShreyasMalakarjunPatil/PHEW, Prune/phew_utils.py): the covered
weights, of linear layers and convolutions, form a chain, whose order and links a forward pass of ones checks
(:func:`_order`); a unit of a linear layer is a neuron, of a convolution a channel.
From input channel ``u`` of a convolution a forward step picks output channel ``i`` with probability proportional
to the L1 norm of kernel ``W[i, u]`` and then one weight of that kernel proportional to its magnitude, that is, one
entry of ``W[:, u]`` proportional to ``|W|``; a backward step from output channel ``i`` picks one entry of
``W[i, :]`` likewise. From a convolution into a linear layer (the flattened feature map), a forward step enters at a
position of the channel's block chosen uniformly, and a backward step leaves to the channel of its position. Forward
walks start at the input units in turn (round robin), backward walks at the output units in turn. Networks that are
not a chain (residual sums, attention, recurrence, grouped convolutions) are refused before any walk, with a message;
the authors' code handles ResNet shortcuts by choosing a branch at random, which this module does not do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.layer_rules import parameter_owners
from prunelab.scores.registry import Scores, register_method
from prunelab.validate import check_input_shape, check_seed, check_target_sparsity

WALKS_PER_CHUNK = 512  # walks drawn together (half forward, half backward); fixed, so a seed gives one mask
MAX_WALKS_PER_WEIGHT = 200  # walks allowed per weight to keep before giving up (a budget the walks cannot fill)


@dataclass
class _Layer:
    name: str
    absw: torch.Tensor  # |w * mask| as (out, in, kernel entries), float64 on the CPU
    norms: torch.Tensor  # (out, in): L1 norm of each kernel
    block: int  # positions per input unit coming from the previous layer's units (>1: conv -> linear)

    @property
    def shape(self):
        return self.absw.shape


def _order(model, mask, input_shape) -> list[str]:
    """The covered weights in the order the signal crosses them, checked on one forward pass of a
    ``(2, *input_shape)`` input of ones: each covered layer must be a linear layer or an ungrouped convolution,
    called once, whose input comes from exactly one other covered layer (through activations, pooling, reshapes,
    normalization: anything but another covered layer), except the first, whose input comes from the network's;
    and no layer may feed two. Anything else (a residual sum, attention, recurrence, a shared module) is not a
    chain of layers and is refused, rather than walked along a graph the network does not have."""
    owners = parameter_owners(model)
    records: dict[str, list] = {}
    for name in mask:  # every layer checked before any hook is put on the caller's model
        module, local = owners.get(name, (None, name))
        ok = isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd)
                                                and module.groups == 1 and not module.transposed)
        if not ok or local != "weight":
            what = type(module).__name__ if module is not None else "no module"
            raise ValueError(f"phew walks through the weights of linear layers and ungrouped convolutions "
                             f"(Patil & Dovrolis 2021); {name!r} is the {local} of {what}: exclude it from the mask "
                             "or use another data-free criterion (synflow)")

    def hook(m, args, out, name):
        records.setdefault(name, []).append((args[0].grad_fn, out.grad_fn))

    handles = [owners[name][0].register_forward_hook(functools.partial(hook, name=name)) for name in mask]
    param = next(iter(model.parameters()))
    tensors = {n: b.clone() for n, b in model.named_buffers()}  # a train-mode BatchNorm updates the clones
    tensors.update({n: p.detach().requires_grad_(True) for n, p in model.named_parameters()})
    x = torch.ones((2, *input_shape), dtype=param.dtype, device=param.device)
    try:
        with torch.enable_grad():
            torch.func.functional_call(model, tensors, (x,))
    except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(f"phew walks the chain of layers that a forward pass of ones of shape {tuple(x.shape)} "
                         f"finds, and the model cannot take that input ({reason}); PHEW needs a network of linear "
                         "layers and convolutions fed a tensor of numbers: use another criterion") from e
    finally:
        for h in handles:
            h.remove()
    made = {}
    for name, calls in records.items():
        if len(calls) != 1:
            raise ValueError(f"phew walks a chain of layers, each crossed once, and {name!r} is used {len(calls)} "
                             "times in one forward pass")
        made[calls[0][1]] = name
    missing = [n for n in mask if n not in records]
    if missing:
        raise ValueError(f"phew walks the layers of a forward pass, and {missing[0]!r} takes no part in that of an "
                         f"input of shape {tuple(input_shape)}; exclude it from the mask")
    before: dict[str, set[str]] = {}
    for name, ((into, _),) in records.items():
        found, seen, stack = set(), set(), [into]
        while stack:  # back through the autograd graph from the layer's input to the covered layers it comes from
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            if fn in made:
                found.add(made[fn])
                continue
            stack.extend(f for f, _ in fn.next_functions)
        before[name] = found
    after: dict[str, list[str]] = {}
    for name, found in before.items():
        if len(found) > 1:
            raise ValueError(
                f"phew walks a chain of layers (Patil & Dovrolis 2021) and the input of {name!r} comes from "
                f"{len(found)} of them ({', '.join(sorted(found)[:3])}): networks with branches (residual sums, "
                "attention) are not supported; use another data-free criterion (synflow)")
        for f in found:
            after.setdefault(f, []).append(name)
    firsts = [n for n, found in before.items() if not found]
    forks = {f: nexts for f, nexts in after.items() if len(nexts) > 1}
    if len(firsts) != 1 or forks:
        where = (f"{', '.join(firsts)} all read the network's input" if len(firsts) != 1
                 else f"{next(iter(forks))!r} feeds {len(next(iter(forks.values())))} layers")
        raise ValueError(f"phew walks a chain of layers (Patil & Dovrolis 2021), and here {where}; networks with "
                         "branches are not supported: use another data-free criterion (synflow)")
    order = firsts
    while order[-1] in after:
        order.append(after[order[-1]][0])
    return order


def _chain(model, mask, input_shape) -> list[_Layer]:
    params = mask.check_compatible(model)
    layers: list[_Layer] = []
    for name in _order(model, mask, input_shape):
        p = params[name]
        w = p.detach()
        if not bool(mask[name].all()):
            w = w * mask[name].to(w.device)
        absw = w.to("cpu", torch.float64).abs().reshape(p.shape[0], p.shape[1], -1)
        block = 1
        if layers:
            prev = layers[-1]
            n_prev, n_in = prev.shape[0], absw.shape[1]
            if prev.absw.shape[2] > 1 and absw.shape[2] == 1 and n_in != n_prev and n_in % n_prev == 0:
                block = n_in // n_prev  # a flattened feature map: block positions per channel
            elif n_in != n_prev:
                raise ValueError(
                    "phew walks from a unit of one layer to the same unit of the next (from a convolution into a "
                    f"linear layer, to a position of the channel's flattened map), and {name!r} takes {n_in} inputs "
                    f"from {prev.name!r}, which has {n_prev} outputs")
        layers.append(_Layer(name, absw, absw.sum(2), block))
    return layers


def _pick(weights: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row of ``weights`` (rows of nonnegative floats) with probability proportional to the entry,
    and whether the row had any weight (a walk at a unit whose connections are all 0 stops there)."""
    alive = weights.sum(1) > 0
    safe = torch.where(alive[:, None], weights, torch.ones_like(weights))
    return torch.multinomial(safe, 1, generator=gen).squeeze(1), alive


def _forward_walks(layers: list[_Layer], starts: torch.Tensor, gen) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (flat index into the weight, alive) of each walk, from input units ``starts``."""
    out, unit = [], starts
    alive = torch.ones(len(starts), dtype=torch.bool)
    for k, layer in enumerate(layers):
        n_out, n_in, n_k = layer.shape
        if k > 0 and layer.block > 1:
            unit = unit * layer.block + torch.randint(layer.block, unit.shape, generator=gen)
        i, live = _pick(layer.norms[:, unit].T, gen)  # output unit, by kernel L1 norm
        kk, _ = _pick(layer.absw[i, unit], gen)  # the weight within the kernel, by |w|
        alive &= live
        out.append(((i * n_in + unit) * n_k + kk, alive.clone()))
        unit = i
    return out


def _backward_walks(layers: list[_Layer], starts: torch.Tensor, gen) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, from the last one back, (flat index, alive) of each walk, from output units ``starts``."""
    out, unit = [], starts
    alive = torch.ones(len(starts), dtype=torch.bool)
    for k in range(len(layers) - 1, -1, -1):
        layer = layers[k]
        n_out, n_in, n_k = layer.shape
        j, live = _pick(layer.norms[unit], gen)  # input unit, by kernel L1 norm
        kk, _ = _pick(layer.absw[unit, j], gen)
        alive &= live
        out.append(((unit * n_in + j) * n_k + kk, alive.clone()))
        unit = j // layer.block
    return out


def _chunks(layers: list[_Layer], gen: torch.Generator):
    """Endless chunks of walks: per chunk, ``[(layer index, flat index, order, alive)]``, where ``order`` numbers the
    weights crossed in walk order (walk ``2t`` forward, ``2t + 1`` backward; forward crosses the layers first to
    last, backward last to first)."""
    n_in, n_out, depth = layers[0].shape[1] // layers[0].block, layers[-1].shape[0], len(layers)
    half = WALKS_PER_CHUNK // 2
    t = 0
    while True:
        pairs = torch.arange(t, t + half)
        fwd = _forward_walks(layers, pairs % n_in, gen)
        bwd = _backward_walks(layers, pairs % n_out, gen)
        chunk = []
        for step in range(depth):
            flat, alive = fwd[step]
            chunk.append((step, flat, (2 * pairs) * depth + step, alive))
            flat, alive = bwd[step]
            chunk.append((depth - 1 - step, flat, (2 * pairs + 1) * depth + step, alive))
        yield chunk
        t += half


def walk_visits(model, walks: int, input_shape, seed: int = 0, mask=None) -> dict[str, torch.Tensor]:
    """How many of ``walks`` PHEW walks (alternately forward and backward, as :func:`phew` draws them) cross each
    covered weight; float64 counts of each weight's shape. For inspecting and testing the walk statistics."""
    from prunelab.masks import Mask

    mask = Mask.ones(model) if mask is None else mask
    layers = _chain(model, mask, check_input_shape(input_shape, "phew"))
    counts = [torch.zeros(layer.absw.numel(), dtype=torch.float64) for layer in layers]
    gen = torch.Generator().manual_seed(int(seed))
    done = 0
    for chunk in _chunks(layers, gen):
        take = min(WALKS_PER_CHUNK, walks - done)
        for k, flat, order, alive in chunk:
            walk = order // len(layers) - done  # the walk's number within the chunk
            use = alive & (walk < take)
            counts[k].index_add_(0, flat[use], torch.ones(int(use.sum()), dtype=torch.float64))
        done += take
        if done >= walks:
            break
    return {layer.name: c.view(mask[layer.name].shape) for layer, c in zip(layers, counts)}


@register_method(
    "phew",
    needs_data=False,
    needs_input_shape=True,
    family="init_data_free",
    year=2021,
    builds_mask=True,
    description="the union of random walks input<->output biased by |w|, up to the budget (Patil & Dovrolis 2021)",
)
def phew(model, mask, batch=None, *, sparsity: float | None = None, seed: int = 0, input_shape=None) -> Scores:
    """PHEW's mask as scores: the order in which magnitude-biased random walks first reach each weight
    (see the module's documentation), so that pruning to ``sparsity`` keeps exactly the walked weights.

    Patil & Dovrolis 2021: paths of higher edge weights, data-free, built at initialization; walks alternate
    input-to-output and output-to-input, each step choosing a connection with probability proportional to its
    weight's magnitude (for a convolution, a kernel by its L1 norm, then a weight within it), until
    ``1 - sparsity`` of the covered weights are kept. ``sparsity``: :func:`prunelab.prune` passes its own; with
    :func:`prunelab.score` give it. ``input_shape``: of one input, for the forward pass of ones that finds the
    order of the layers and checks that they form a chain (:func:`_order`). ``seed``: the walks' generator (CPU,
    so the same mask on any device). Weights ``mask`` prunes count as zero and are never walked. Returns float64
    scores on the CPU.
    """
    from prunelab.pruning.targets import num_to_prune  # the pruning layer imports scores

    s = check_target_sparsity(sparsity, "phew")
    seed = check_seed(seed)
    layers = _chain(model, mask, check_input_shape(input_shape, "phew"))
    total = sum(layer.absw.numel() for layer in layers)
    budget = min(total - num_to_prune(s, total), mask.num_kept)
    first = [torch.full((layer.absw.numel(),), torch.inf, dtype=torch.float64) for layer in layers]
    reached, walks = 0, 0
    gen = torch.Generator().manual_seed(int(seed))
    for chunk in _chunks(layers, gen):
        if reached >= budget:
            break
        if walks > MAX_WALKS_PER_WEIGHT * budget + WALKS_PER_CHUNK:
            raise ValueError(
                f"phew: after {walks:,} random walks only {reached:,} of the {budget:,} weights to keep were reached "
                f"(sparsity {s:g}); its walks favour large weights and rarely reach the small ones, so PHEW is meant "
                "for high sparsities (Patil & Dovrolis 2021): use a higher sparsity")
        for k, flat, order, alive in chunk:
            first[k].scatter_reduce_(0, flat[alive], order[alive].to(torch.float64), reduce="amin")
        reached = sum(int(torch.isfinite(f).sum()) for f in first)
        walks += WALKS_PER_CHUNK
    last = max(float(f[torch.isfinite(f)].max()) if bool(torch.isfinite(f).any()) else 0.0 for f in first)
    # earliest reached = highest score; never reached = 0 (every reached weight scores at least 1)
    scores = [torch.where(torch.isfinite(f), last + 1.0 - f, 0.0) for f in first]
    return Scores({layer.name: sc.view(mask[layer.name].shape) for layer, sc in zip(layers, scores)})
