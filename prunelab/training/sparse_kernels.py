"""Sparse execution of masked linear layers: the products of a training step on the kept entries only.

Pruning at initialization is meant to make training cheaper (Frankle et al. 2021, §1 and §7; Tanaka et
al. 2020, §1), but the masked step of :mod:`prunelab.mask_binding` multiplies dense matrices full of zeros:
it trains a 98%-sparse network at the speed of the dense one. Here a masked ``nn.Linear`` runs its
forward product, its input gradient and its weight gradient on the kept weights only:

* forward ``yᵀ = W xᵀ`` and input gradient ``gxᵀ = Wᵀ gᵀ`` with the dense operand laid out ``features x
  batch`` (``xᵀ`` contiguous): row ``i`` of ``W xᵀ`` is the sum of the rows ``j`` of ``xᵀ`` weighted by the
  kept ``W_ij``, which is ``torch.nn.functional.embedding_bag`` with per-sample weights over the CSR rows of
  the mask (:meth:`Structure.mm`; 2 to 2.5 times faster than MKL's CSR product ``torch.sparse.mm`` on
  LeNet-300-100's layers at batch 128, densities 1.8% to 30%, one thread); ``Wᵀ`` is the same with the
  values in the order of ``Wᵀ``. The activations stay in that layout, so layers in a row never transpose;
* the weight gradient at the kept positions only, ``∂L/∂W_ij = Σ_b g_bi x_bj`` for kept ``(i, j)``:
  a sampled dense-dense product (``torch.sparse.sampled_addmm`` over the CSR of ``W``: on a 300x784 layer at
  batch 128 it measured 9x faster than gathering the rows of both operands and summing at 2% density, 21x
  at 10%);
* one autograd node for a run of sparse layers with ReLUs between them in an ``nn.Sequential``
  (:class:`SparseChains`, LeNet-300-100's three layers), its backward written out; a single layer elsewhere;
* the optimizer steps on one flat parameter per parameter group holding the sparse layers' kept values and
  their biases (:class:`Pack`), which takes their place in the group; after every step the flat parameter
  is written into the layers' ordinary dense weights and biases, so evaluation, checkpoints (the dense
  ``state_dict``; the optimizer's ``state_dict`` in the dense shapes and numbering, and a dense one loads)
  and mask updates see what the dense masked path would.

The numbers are those of the dense masked path up to float rounding: the optimizers are elementwise (SGD
with momentum, Nesterov and weight decay; Adam; AdamW), a pruned weight of the dense path stays 0 with
0 state, and so the kept values follow the same updates; only the order of the sums in the products
differs. Pruned weights stay exactly 0 (nothing writes them). One difference where a model skips a sparse
layer in a step that uses another of its pack: the skipped layer's values get a zero gradient (weight decay
and momentum act on them) where the dense path would leave them without one.

The products are :mod:`prunelab.training.sparse_products`, the flat parameters
:mod:`prunelab.training.sparse_packs`; here: the layers, the chains, and :func:`sparse_execution`, which engages
this for a model and its optimizer (the training loop does it under ``RuntimeOptions.sparse_kernels``: ``off``,
``on``, or ``auto``, which runs a layer sparse only where a crossover measured once per machine and layer shape says
it pays, :mod:`prunelab.training.sparse_crossover`).
Convolutions stay dense: as unfolded patches times this kernel, a 3x3 convolution of ResNet-20 or LeNet-5-Caffe's
second (5x5) convolution measured 1.4 to 20 times slower than the dense one at every density from 50% to 1%; it won only
where the dense kernel itself is slow (one input channel, 1x1 stride-2 shortcuts), layers of a few percent of a step
(``bench/sparse_training.py --conv``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module_globals

from prunelab.mask_binding import applied_mask
from prunelab.training.loop import Callback, Loop
from prunelab.training.runtime import SPARSE_KERNEL_MODES as MODES
from prunelab.training.sparse_packs import Pack, numbered_state, same_state
from prunelab.training.sparse_products import KERNELS_VERSION, Slot, Structure, apply_chain, sparse_chain, sparse_linear
from prunelab.validate import check_name
from prunelab.wrappers import unwrap

__all__ = ["KERNELS_VERSION", "MODES", "SparseExecution", "SparseKernels", "SparseLinear", "Structure", "sparse_chain",
           "sparse_execution", "sparse_linear"]


# ---- one layer --------------------------------------------------------------------------------------

class SparseLinear:
    """The sparse execution of one masked ``nn.Linear``: the CSR structure of its mask, where its kept values
    and its bias live (slices of a :class:`Pack`'s flat parameter, which the optimizer steps on; a bias that is
    no pack's stays the module's parameter), and a ``forward`` installed on the module.

    The module's own dense ``weight`` (and ``bias``) stay its parameters and its ``state_dict`` entries; the
    pack writes the values into them after every optimizer step. A forward that finds other tensors than those
    in the module (``torch.func.functional_call``: RigL's dense gradient, SNIP scores) runs the ordinary dense
    ``F.linear`` on them.
    """

    def __init__(self, name: str, module: nn.Linear, keep: torch.Tensor):
        self.name, self.module = name, module
        self.weight = module.weight
        self.keep = keep
        self.structure = Structure.of(keep.to(self.weight.device))
        self.values_slot: tuple[Pack, int, int] | None = None  # (pack, start, stop), set by Pack
        self.bias_slot: tuple[Pack, int, int] | None = None
        self.bias: torch.Tensor | None = None  # the module's bias when its slot was set

    @property
    def values(self) -> torch.Tensor:
        """The kept values (a view of the pack's flat parameter)."""
        pack, a, b = self.values_slot
        return pack.flat[a:b]

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.reshape(-1).index_select(0, self.structure.flat)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(self.weight.shape).reshape(-1).index_copy_(0, self.structure.flat, values) \
            .view(self.weight.shape)

    def usable(self, x: torch.Tensor) -> bool:
        """Whether a call on ``x`` computes what the module's own forward would."""
        params = self.module._parameters
        return (params.get("weight") is self.weight and x.dtype == self.weight.dtype
                and (self.bias_slot is None or params.get("bias") is self.bias))

    def operands(self, tensors: list, index: dict) -> tuple[Slot, Slot | None]:
        """This layer's :class:`Slot` of values and of bias, their tensors appended to ``tensors`` (``index``:
        ``id`` of a tensor -> its place)."""
        def slot(t, a, b, view):
            if id(t) not in index:
                index[id(t)] = len(tensors)
                tensors.append(t)
            return Slot(index[id(t)], a, b, view)

        pack, a, b = self.values_slot
        vs = slot(pack.flat, a, b, pack.views[(a, b)])
        bias = self.module.bias
        if bias is None:
            return vs, None
        if self.bias_slot is None:
            return vs, slot(bias, 0, bias.shape[0], bias.detach())
        pack, a, b = self.bias_slot
        return vs, slot(pack.flat, a, b, pack.views[(a, b)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.usable(x):
            return nn.functional.linear(x, self.module.weight, self.module.bias)
        tensors: list = []
        vs, bs = self.operands(tensors, {})
        return apply_chain(x, [self.structure], [vs, bs], [], tensors)

    def install(self) -> None:
        self.module.__dict__["forward"] = self.forward  # an instance attribute: the class stays nn.Linear

    def uninstall(self) -> None:
        if self.module.__dict__.get("forward") == self.forward:
            del self.module.__dict__["forward"]


# ---- runs of sparse layers in a Sequential ---------------------------------------------------------------

def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    m = _module_globals
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def linear_runs(seq: nn.Module, member) -> list[tuple[int, int, list[nn.Module], list[bool]]]:
    """Runs of two or more children of a plain ``nn.Sequential`` (its own forward) for which ``member(child)``
    holds, a ``nn.ReLU`` or nothing between two of them: (first index, index after the last, the members, whether a
    ReLU follows each but the last)."""
    if type(seq).forward is not nn.Sequential.forward or "forward" in seq.__dict__:
        return []
    mods = list(seq._modules.values())
    runs, i = [], 0
    while i < len(mods):
        if not member(mods[i]):
            i += 1
            continue
        members, relus, j = [mods[i]], [], i + 1
        while True:
            if j + 1 < len(mods) and type(mods[j]) is nn.ReLU and member(mods[j + 1]):
                members.append(mods[j + 1])
                relus.append(True)
                j += 2
            elif j < len(mods) and member(mods[j]):
                members.append(mods[j])
                relus.append(False)
                j += 1
            else:
                break
        if len(members) >= 2:
            runs.append((i, j, members, relus))
        i = j
    return runs


class SparseChains:
    """The forward of an ``nn.Sequential`` whose children hold runs of two or more sparse linear layers, a
    ``nn.ReLU`` or nothing between two of them (LeNet-300-100: ``Linear, ReLU, Linear, ReLU, Linear``): each
    run is one :func:`sparse_chain` call. Installed on the Sequential as an instance attribute, like
    :meth:`SparseLinear.install`. A call that the chain would not compute as the children would falls back to
    calling them (each sparse layer then runs its own :meth:`SparseLinear.forward`): children replaced, a hook
    on any of them (or a global module hook, which the children's calls would run), a weight swapped in
    (``functional_call``), an input that is not 2-d or not of the values' dtype."""

    def __init__(self, seq: nn.Sequential, runs: list[tuple[int, int, list[SparseLinear], list[bool]]]):
        self.seq, self.runs = seq, runs
        self.mods = tuple(seq._modules.values())
        self.structures = [[layer.structure for layer in layers] for _, _, layers, _ in runs]
        # the operands, where they are fixed: every bias in a pack (a bias of the module's own is read per call)
        self.fixed = [self._operands(layers) if all(layer.bias_slot is not None or layer.module.bias is None
                                                    for layer in layers) else None for _, _, layers, _ in runs]

    @staticmethod
    def find(seq: nn.Module, by_module: dict[int, SparseLinear]) -> SparseChains | None:
        runs = [(start, end, [by_module[id(m)] for m in members], relus)
                for start, end, members, relus in linear_runs(seq, lambda m: id(m) in by_module)]
        return SparseChains(seq, runs) if runs else None

    def _usable(self, x: torch.Tensor, start: int, end: int, layers: list[SparseLinear]) -> bool:
        if x.dim() < 2 or _global_hooks():
            return False
        return all(layer.usable(x) for layer in layers) and not any(_hooked(m) for m in self.mods[start:end])

    @staticmethod
    def _operands(layers: list[SparseLinear]) -> tuple[list, list]:
        tensors: list = []
        index: dict = {}
        slots = [slot for layer in layers for slot in layer.operands(tensors, index)]
        return tensors, slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = tuple(self.seq._modules.values())
        if mods != self.mods:
            for m in mods:
                x = m(x)
            return x
        at = 0
        for (start, end, layers, relus), structures, fixed in zip(self.runs, self.structures, self.fixed):
            for m in mods[at:start]:
                x = m(x)
            if self._usable(x, start, end, layers):
                tensors, slots = fixed if fixed is not None else self._operands(layers)
                x = apply_chain(x, structures, slots, relus, tensors)
            else:
                for m in mods[start:end]:
                    x = m(x)
            at = end
        for m in mods[at:]:
            x = m(x)
        return x

    def install(self) -> None:
        self.seq.__dict__["forward"] = self.forward

    def uninstall(self) -> None:
        if self.seq.__dict__.get("forward") == self.forward:
            del self.seq.__dict__["forward"]


# ---- a model and its optimizer -----------------------------------------------------------------------

def _density(keep: torch.Tensor) -> float:
    return float(keep.sum()) / keep.numel()


def eligible(module: nn.Module, weight_name: str) -> bool:
    """A layer that runs sparse: an ``nn.Linear`` (its own forward, not an override) with a 2-d float weight."""
    return (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward and weight_name == "weight"
            and module.weight.dim() == 2 and module.weight.is_floating_point() and module.weight.is_contiguous())


class SparseExecution:
    """Sparse execution of the masked linear layers of ``model`` trained by ``optimizer``
    (see the module docstring); :meth:`engage` and :meth:`disengage`, or :func:`sparse_execution`.

    ``mode``: ``"on"`` runs every eligible masked linear layer sparse, ``"auto"`` those whose measured
    crossover density (:func:`prunelab.training.sparse_crossover.crossover`, at ``batch_size``) lies above
    their density. Masked layers of other kinds stay dense, said in one warning under ``"on"``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, mode: str = "auto",
                 batch_size: int | None = None):
        check_name("sparse kernels mode", mode, MODES)
        if mode == "auto" and batch_size is None:
            raise ValueError("sparse kernels 'auto' needs the batch size, at which it measures the crossover")
        self.model, self.optimizer, self.mode, self.batch_size = unwrap(model), optimizer, mode, batch_size
        self.layers: dict[str, SparseLinear] = {}
        self.choices: dict[str, str] = {}  # masked layer -> "sparse" or why it runs dense
        self._keeps: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self.chains: list[SparseChains] = []
        self.packs: list[tuple[int, Pack]] = []  # (optimizer group, pack) of the packs in the optimizer
        self._groups: dict[int, tuple[list, list]] = {}  # group -> (its parameters dense, packed)

    # -- choosing layers
    def _wanted(self, name: str, keep: torch.Tensor) -> nn.Linear | None:
        """The layer's module if it runs sparse under the mode; else None, and why in :attr:`choices`."""
        owner, _, local = name.rpartition(".")
        module = self.model.get_submodule(owner)
        if not eligible(module, local):
            self.choices[name] = "dense: not a linear layer"
            return None
        if self.mode == "auto":
            from prunelab.training.sparse_crossover import crossover

            density = _density(keep)
            at = crossover(tuple(keep.shape), self.batch_size, module.weight.device)
            if density > at:
                self.choices[name] = f"dense: density {density:.4f} above the crossover {at:g}"
                return None
        self.choices[name] = "sparse"
        return module

    def _decide(self, mask: dict[str, torch.Tensor]) -> dict[str, nn.Linear | None]:
        """``auto``: each masked layer's module if it runs sparse, else None. A layer pays sparse alone below its
        crossover; one that does not, next to one that does in an ``nn.Sequential`` (:func:`linear_runs`), joins
        that one's chain where its density is at or below its crossover *in a chain* (measured behind a sparse layer,
        :func:`prunelab.training.sparse_crossover.crossover`), and so on along the run."""
        from prunelab.training.sparse_crossover import crossover

        wanted = {name: self._wanted(name, keep) for name, keep in mask.items()}
        owners = {name: self.model.get_submodule(name.rpartition(".")[0]) for name in mask}
        names = {id(m): name for name, m in owners.items() if eligible(m, name.rpartition(".")[2])}
        for seq in self.model.modules():
            for _, _, members, _ in linear_runs(seq, lambda m: id(m) in names):
                run, tried = [names[id(m)] for m in members], set()
                while True:
                    joining = [name for k, name in enumerate(run) if wanted[name] is None and name not in tried
                               and any(wanted[n] is not None for n in run[max(k - 1, 0):k + 2])]
                    if not joining:
                        break
                    for name in joining:
                        tried.add(name)
                        keep = mask[name]
                        at = crossover(tuple(keep.shape), self.batch_size, owners[name].weight.device, chained=True)
                        if _density(keep) <= at:
                            wanted[name], self.choices[name] = owners[name], "sparse"
                        else:
                            self.choices[name] += f"; in a sparse neighbour's chain too (crossover there {at:g})"
        return wanted

    def _sync(self) -> bool:
        """Every masked layer run as the mode and its current mask say: new layers engaged, layers whose mask
        changed rebuilt, layers that no longer pay (``auto``, a mask that grew) back to dense; the packs made
        again (:meth:`_pack`). Whether any changed."""
        mask = applied_mask(self.model) or {}
        changed = False

        def change():
            nonlocal changed
            if not changed:
                self._unpack()  # the optimizer back on the dense tensors, their state in the old structures
                changed = True

        for name in [n for n in self.layers if n not in mask]:
            change()
            self.layers.pop(name).uninstall()
        renewed = {name for name, keep in mask.items() if keep is not self._keeps.get(name)}
        # auto decides every layer again when one changes: a layer joins a sparse neighbour's chain
        wanted = self._decide(mask) if self.mode == "auto" and renewed else {}
        for name, keep in mask.items():
            if name not in renewed and (name not in wanted or (name in self.layers) == (wanted[name] is not None)):
                continue
            self._keeps[name] = keep
            layer = self.layers.get(name)
            module = wanted[name] if name in wanted else self._wanted(name, keep)
            if layer is not None and module is None:
                change()
                self.layers.pop(name).uninstall()
            elif layer is None and module is not None:
                change()
                layer = self.layers[name] = SparseLinear(name, module, keep)
                layer.install()
            elif layer is not None and not torch.equal(keep, layer.keep):
                change()
                layer.keep = keep
                layer.structure = Structure.of(keep.to(layer.weight.device))
        if changed:
            self._pack()
            self._link()
        return changed

    def _link(self) -> None:
        """The runs of sparse layers in Sequentials as chains (:class:`SparseChains`), found again."""
        self._unlink()
        by_module = {id(layer.module): layer for layer in self.layers.values()}
        for module in self.model.modules():
            chains = SparseChains.find(module, by_module)
            if chains is not None:
                chains.install()
                self.chains.append(chains)

    def _unlink(self) -> None:
        for chains in self.chains:
            chains.uninstall()
        self.chains = []

    # -- the packs: one flat parameter per optimizer group
    def _pack(self) -> None:
        """Per optimizer parameter group, the sparse layers' weights in it and their biases in it as one
        :class:`Pack` (one per (dtype, device); one per tensor where their optimizer states cannot be one),
        which takes their place in the group, their state packed; a sparse layer whose weight is in no group
        gets a pack of its own, outside the optimizer. The dense tensors must be current (they are after
        every step)."""
        for layer in self.layers.values():
            layer.values_slot = layer.bias_slot = layer.bias = None
        weights = {id(layer.weight): layer for layer in self.layers.values()}
        biases = {id(layer.module.bias): layer for layer in self.layers.values() if layer.module.bias is not None}
        state = self.optimizer.state
        for gi, group in enumerate(self.optimizer.param_groups):
            params = list(group["params"])
            kinds: dict[tuple, list] = {}
            for p in params:
                if id(p) in weights:
                    member = (p, weights[id(p)], "weight")
                elif id(p) in biases and p.dim() == 1:
                    member = (p, biases[id(p)], "bias")
                else:
                    continue
                kinds.setdefault((p.dtype, p.device, p.requires_grad), []).append(member)
            if not kinds:
                continue
            packs = []
            for members in kinds.values():
                states = [state.get(p, {}) for p, _, _ in members]
                packs += [Pack(members)] if same_state(states, members) else [Pack([m]) for m in members]
            owner = {id(p): pack for pack in packs for p, _, _ in pack.members}
            packed, placed = [], set()
            for p in params:
                pack = owner.get(id(p))
                if pack is None:
                    packed.append(p)
                elif id(pack) not in placed:
                    placed.add(id(pack))
                    packed.append(pack.flat)
            for pack in packs:
                states = [state.pop(p, None) or {} for p, _, _ in pack.members]
                if any(states):
                    state[pack.flat] = pack.pack_state(states)
                self.packs.append((gi, pack))
            group["params"] = packed
            self._groups[gi] = (params, list(packed))
        for layer in self.layers.values():
            if layer.values_slot is None:
                Pack([(layer.weight, layer, "weight")])  # outside the optimizer: the weight is no group's

    def _unpack(self) -> None:
        """The dense tensors back in the optimizer's groups, the packs' state scattered to their shapes."""
        state = self.optimizer.state
        for _, pack in self.packs:
            packed = state.pop(pack.flat, None)
            if packed:
                for (p, _, _), s in zip(pack.members, pack.unpack_state(packed)):
                    state[p] = s
        for gi in self._groups:
            self.optimizer.param_groups[gi]["params"] = self._dense_params(gi)
        self.packs, self._groups = [], {}

    def _dense_params(self, gi: int) -> list[torch.Tensor]:
        """Group ``gi``'s parameters as they were before packing (each pack's flat parameter as its members)."""
        current = self.optimizer.param_groups[gi]["params"]
        dense, packed = self._groups.get(gi, (current, current))
        if len(packed) == len(current) and all(p is q for p, q in zip(packed, current)):
            return list(dense)
        flats = {id(pack.flat): pack for _, pack in self.packs}
        return [m for p in current for m in ([q for q, _, _ in flats[id(p)].members] if id(p) in flats else [p])]

    # -- engaging
    def engage(self) -> SparseExecution:
        if applied_mask(self.model) is None:
            raise ValueError("sparse kernels need a model with an applied mask (mask.apply(model))")
        self._sync()
        other = [n for n, why in self.choices.items() if why == "dense: not a linear layer"]
        if other and self.mode == "on":
            warnings.warn(f"sparse kernels: {len(other)} masked layer(s) that are not linear layers run dense "
                          f"({', '.join(other[:4])}{', ...' if len(other) > 4 else ''})", UserWarning, stacklevel=2)
        self._hooks = [self.optimizer.register_step_post_hook(self._after_optimizer_step),
                       self.optimizer.register_state_dict_post_hook(self._dense_state_dict),
                       self.optimizer.register_load_state_dict_pre_hook(self._sparse_state_dict)]
        return self

    def disengage(self) -> None:
        self._unlink()
        with torch.no_grad():
            for _, pack in self.packs:
                pack.write_back()
        self._unpack()
        for layer in self.layers.values():
            layer.uninstall()
        self.layers = {}
        for h in self._hooks:
            h.remove()
        self._hooks, self._keeps = [], {}

    def refresh(self) -> bool:
        """Follow a mask update (:class:`~prunelab.MaskUpdates`: gradual pruning, SET, RigL): the layers whose
        mask changed rebuilt (or moved between sparse and dense under ``auto``); returns whether any changed.
        Call after the update, before the next step."""
        return self._sync()

    def sparse_layers(self) -> list[str]:
        return list(self.layers)

    # -- keeping the dense weights current
    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for _, pack in self.packs:
                pack.write_back()

    # -- the optimizer's state_dict in dense shapes and order
    def _members(self) -> dict[int, tuple[Pack, int]]:
        return {id(p): (pack, m) for _, pack in self.packs for m, (p, _, _) in enumerate(pack.members)}

    def _dense_state_dict(self, optimizer, state_dict: dict) -> dict:
        """The state_dict that the optimizer would give on the dense tensors: each pack's entry as its members'
        (dense shapes), the parameters numbered in the dense order."""
        if not self.packs:
            return state_dict
        members, saved = self._members(), state_dict["state"]
        per_group = []
        for gi, group in enumerate(self.optimizer.param_groups):
            index = {id(p): i for p, i in zip(group["params"], state_dict["param_groups"][gi]["params"])}
            unpacked: dict[int, list[dict] | None] = {}
            states = []
            for p in self._dense_params(gi):
                if id(p) in members:
                    pack, m = members[id(p)]
                    if id(pack) not in unpacked:
                        s = saved.get(index[id(pack.flat)])
                        unpacked[id(pack)] = pack.unpack_state(s) if s else None
                    s = unpacked[id(pack)]
                    states.append(s[m] if s is not None else None)
                else:
                    states.append(saved.get(index[id(p)]))
            per_group.append(states)
        return numbered_state(state_dict, per_group)

    def _sparse_state_dict(self, optimizer, state_dict: dict) -> dict:
        """A dense state_dict (a checkpoint's) as the packed optimizer's."""
        if not self.packs:
            return state_dict
        saved = state_dict["state"]
        per_group = []
        for gi, group in enumerate(self.optimizer.param_groups):
            dense = self._dense_params(gi)
            given = state_dict["param_groups"][gi]["params"] if gi < len(state_dict["param_groups"]) else []
            if len(given) != len(dense):
                return state_dict  # not this optimizer's: load_state_dict says so
            index = {id(p): i for p, i in zip(dense, given)}
            states = []
            for p in group["params"]:
                pack = next((pk for _, pk in self.packs if pk.flat is p), None)
                if pack is None:
                    states.append(saved.get(index[id(p)]))
                    continue
                members = [saved.get(index[id(q)]) or {} for q, _, _ in pack.members]
                if any(members) and not same_state(members, pack.members):
                    raise ValueError("sparse kernels: the optimizer state of the tensors packed into one "
                                     "parameter differs (some without state, or another step count); load it "
                                     "with --sparse-kernels off")
                states.append(pack.pack_state(members) if any(members) else None)
            per_group.append(states)
        return numbered_state(state_dict, per_group)

    def record(self) -> dict[str, Any]:
        """The mode, the masked layers that run sparse now, and why each other one runs dense."""
        return {"sparse_kernels": self.mode, "sparse_layers": self.sparse_layers(),
                "dense_layers": {n: why for n, why in self.choices.items() if why != "sparse"}}


@contextlib.contextmanager
def sparse_execution(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str = "auto",
                     batch_size: int | None = None) -> Iterator[SparseExecution]:
    """Masked linear layers of ``model`` run sparse while the block runs (see :class:`SparseExecution`);
    after it the model and optimizer are ordinary again, the dense weights and optimizer state current.
    Call ``refresh()`` on the yielded object after a mask update."""
    ex = SparseExecution(model, optimizer, mode, batch_size)
    if mode == "off":
        yield ex
        return
    ex.engage()
    try:
        yield ex
    finally:
        ex.disengage()


# ---- in the training loop ----------------------------------------------------------------------------

class SparseKernels(Callback):
    """The training loop's sparse execution (``RuntimeOptions.sparse_kernels``): engaged before the first step
    (after a resume, whose checkpoint is dense), the layers rebuilt after every mask update, disengaged when
    the loop stops. The result's ``execution`` (:meth:`record`) gets the mode, the layers sparse at the end, why
    each other masked layer ran dense, and ``sparse_steps``: how many of this session's steps each layer ran sparse.

    It stays off, said in one line, where the products would not be the dense path's: distributed training
    (DDP reduces the dense weights' gradients), mixed precision (the sparse products are float32), and a
    schedule that grows by the step's own dense gradient (``RigL(grow_gradient="step")``), which a sparse
    step does not compute."""

    def __init__(self, mode: str, mask_schedule=None):
        self.mode, self.schedule = check_name("sparse kernels mode", mode, MODES), mask_schedule
        self.execution: SparseExecution | None = None
        self.mask = None
        self.sparse_steps: dict[str, int] = {}
        self._record: dict[str, Any] = {}  # the result's ``execution``, complete once the loop stopped

    def _why_not(self, loop: Loop) -> str | None:
        from prunelab.training import distributed

        if distributed.active():
            return "distributed training reduces the dense weights' gradients"
        if loop.precision.enabled:
            return "the sparse products are float32, and this run trains in mixed precision"
        if self.schedule is not None and self.schedule.needs_step_gradients:
            return "the mask schedule grows by each step's dense gradient, which a sparse step does not compute"
        if loop.mask is None:
            return "the model has no mask" if self.mode == "on" else ""
        return None

    def start(self, loop: Loop) -> None:
        why = self._why_not(loop)
        if why is not None:
            if why and loop.writer:
                warnings.warn(f"--sparse-kernels {self.mode} ignored: {why}; every layer runs dense", UserWarning,
                              stacklevel=2)
            self._record = {"sparse_kernels": self.mode, "sparse_layers": []}
            return
        self.execution = SparseExecution(loop.model, loop.optimizer, self.mode, loop.settings.batch_size).engage()
        self.mask = loop.mask

    def after_step(self, loop: Loop, batch) -> None:
        if self.execution is None:
            return
        for name in self.execution.layers:
            self.sparse_steps[name] = self.sparse_steps.get(name, 0) + 1
        if loop.mask is not self.mask:
            self.mask = loop.mask
            self.execution.refresh()

    def close(self, loop: Loop) -> None:
        if self.execution is not None:
            self._record = {**self.execution.record(), "sparse_steps": self.sparse_steps}
            self.execution.disengage()
            self.execution = None

    def record(self) -> dict[str, Any]:
        return {"execution": self._record}
