"""Sparse execution of masked linear layers: the products of a training step on the kept entries only.

Pruning at initialization is meant to make training cheaper (Frankle et al. 2021, §1 and §7; Tanaka et
al. 2020, §1), but the masked step of :mod:`prunelab.mask_binding` multiplies dense matrices full of zeros:
it trains a 98%-sparse network at the speed of the dense one. Here a masked ``nn.Linear`` runs its
forward product, its input gradient and its weight gradient on the kept weights only:

* the weight is held as a CSR matrix (``torch.sparse_csr_tensor``; ``torch.sparse`` is the kept library
  that does this on the CPU and on CUDA): forward ``yᵀ = W xᵀ`` and input gradient ``gxᵀ = Wᵀ gᵀ``
  (a second CSR with the same values in the order of ``Wᵀ``), both with a dense operand laid out
  row-major in the batch (``xᵀ`` contiguous), the layout that ``torch.sparse.mm`` is fastest with; the
  output is returned as a transposed view, so a chain of sparse layers with elementwise activations
  between them never transposes again;
* the weight gradient at the kept positions only, ``∂L/∂W_ij = Σ_b g_bi x_bj`` for kept ``(i, j)``:
  a sampled dense-dense product (``torch.sparse.sampled_addmm``: on a 300x784 layer at batch 128 it measured
  9x faster than gathering the rows of both operands and summing at 2% density, 21x at 10%);
* the optimizer steps on a flat parameter of the kept values (:class:`SparseLinear`), which takes the
  weight's place in the optimizer; after every step the values are written into the layer's ordinary
  dense weight, so evaluation, checkpoints (the dense ``state_dict``, the optimizer state scattered back
  to dense shapes) and mask updates see what the dense masked path would.

The numbers are those of the dense masked path up to float rounding: the optimizers are elementwise (SGD
with momentum, Nesterov and weight decay; Adam; AdamW), a pruned weight of the dense path stays 0 with
0 state, and so the kept values follow the same updates; only the order of the sums in the products
differs. Pruned weights stay exactly 0 (nothing writes them).

:func:`sparse_execution` engages this for a model and its optimizer (the training loop does it under
``RuntimeOptions.sparse_kernels``: ``off``, ``on``, or ``auto``, which runs a layer sparse only where a
crossover measured once per machine and layer shape says it pays, :mod:`prunelab.training.sparse_crossover`).
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

from prunelab.mask_binding import applied_mask
from prunelab.training.runtime import SPARSE_KERNEL_MODES as MODES
from prunelab.training.trainer import Callback, Loop
from prunelab.validate import check_name
from prunelab.wrappers import unwrap

__all__ = ["MODES", "SparseExecution", "SparseKernels", "SparseLinear", "sparse_chain", "sparse_execution",
           "sparse_linear"]


# ---- the structure of a mask and the products -----------------------------------------------------

class Structure:
    """The kept positions of one ``out x in`` weight as the index arrays of two CSR matrices: of ``W`` (values in
    row-major order of the kept positions, the order of :attr:`flat`) and of ``Wᵀ`` (its values are
    ``values[perm]``).

    The CSR tensors are made once per values tensor and reused while it is the same tensor: a CSR tensor
    aliases its values, so the optimizer's in-place steps on them reach it (``Wᵀ``'s values, a permuted copy,
    are gathered again at each use, into the same buffer).
    """

    def __init__(self, keep: torch.Tensor):
        out, inp = keep.shape
        self.shape = (out, inp)
        self.flat = keep.reshape(-1).nonzero().squeeze(1)  # row-major flat index of each kept position
        flat_t = keep.t().reshape(-1).nonzero().squeeze(1)  # j * out + i, in row-major order of Wᵀ
        rows_t, cols_t = flat_t // out, flat_t % out  # (j, i)
        # 32-bit CSR indices where they fit: MKL's sparse products take them, and 64-bit ones were converted
        # at every product (two copies per call, ten per LeNet-300-100 step).
        index = torch.int32 if keep.numel() < 2**31 else torch.int64
        self.crow, self.col = _crow(keep.sum(1)).to(index), (self.flat % inp).to(index)
        self.crow_t, self.col_t = _crow(keep.sum(0)).to(index), cols_t.to(index)
        self.perm = torch.searchsorted(self.flat, cols_t * inp + rows_t)  # Wᵀ's k-th value is values[perm[k]]
        self._csr: tuple | None = None  # (values, its data pointer, W, Wᵀ, Wᵀ's values buffer)

    @classmethod
    def of(cls, keep: torch.Tensor) -> Structure:
        return cls(keep)

    @property
    def nnz(self) -> int:
        return self.flat.numel()

    def _tensors(self, values: torch.Tensor) -> tuple:
        c = self._csr
        if c is None or c[0] is not values or c[1] != values.data_ptr():
            v = values.detach()
            vt = v.index_select(0, self.perm)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": torch's, once per process; not news
                warnings.simplefilter("ignore", UserWarning)
                w = torch.sparse_csr_tensor(self.crow, self.col, v, self.shape, check_invariants=False)
                wt = torch.sparse_csr_tensor(self.crow_t, self.col_t, vt, self.shape[::-1], check_invariants=False)
            c = self._csr = (values, values.data_ptr(), w, wt, vt)
        return c

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """``W`` as a CSR tensor over ``values`` (aliased)."""
        return self._tensors(values)[2]

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """``Wᵀ`` as a CSR tensor, its values gathered from ``values`` now."""
        c = self._tensors(values)
        torch.index_select(values.detach(), 0, self.perm, out=c[4])
        return c[3]


def _crow(counts: torch.Tensor) -> torch.Tensor:
    crow = counts.new_zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


class _SparseLinearFunction(torch.autograd.Function):
    """``x Wᵀ + b`` with ``W`` given by its kept ``values`` and a :class:`Structure`; gradients of ``x``,
    ``values`` and ``b`` on the kept entries only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, s: Structure) -> torch.Tensor:
        # Each tensor call costs a few microseconds of dispatch, as much as a small layer's product: a 2-d x
        # (the common case) skips the reshapes, and a transposed x (the output of a sparse layer) its copy.
        two_d = x.dim() == 2
        xt = (x if two_d else x.reshape(-1, x.shape[-1])).t().contiguous()  # in x batch
        w = s.csr(values)
        yt = torch.sparse.mm(w, xt) if bias is None else torch.addmm(bias.unsqueeze(1), w, xt)
        ctx.s, ctx.lead = s, None if two_d else x.shape[:-1]
        ctx.save_for_backward(xt, values)
        return yt.t() if two_d else yt.t().reshape(*ctx.lead, s.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s: Structure = ctx.s
        xt, values = ctx.saved_tensors
        lead = ctx.lead
        gt = (grad if lead is None else grad.reshape(-1, s.shape[0])).t().contiguous()  # out x batch
        gx = gv = gb = None
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        if need_x:  # not for the first layer, whose input needs no gradient
            gx = torch.sparse.mm(s.csr_t(values), gt).t()
            if lead is not None:
                gx = gx.reshape(*lead, s.shape[1])
        if need_values:
            gv = torch.sparse.sampled_addmm(s.csr(values), gt, xt.t(), beta=0.0).values()
        if need_bias:
            gb = gt.sum(1)
        return gx, gv, gb, None


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, structure: Structure):
    """``F.linear`` of a weight given by its kept ``values`` at the positions of ``structure``."""
    return _SparseLinearFunction.apply(x, values, bias, structure)


class _SparseChainFunction(torch.autograd.Function):
    """Consecutive sparse linear layers, a ReLU or nothing between two of them, as one autograd node:
    ``relu(x W₀ᵀ + b₀) W₁ᵀ + b₁ ...``, its backward written out (the per-layer products of
    :class:`_SparseLinearFunction`, the ReLUs' ``threshold_backward``). One node instead of one per layer and
    per ReLU: each costs tens of microseconds of autograd bookkeeping, as much as a small sparse product. The
    activations stay in the ``features x batch`` layout of the products throughout, so the ReLU's backward
    reads two tensors of one layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, structures: tuple, relus: tuple, *params: torch.Tensor | None) -> torch.Tensor:
        at = x.t().contiguous()  # in x batch
        acts = [at]
        last = len(structures) - 1
        for k, s in enumerate(structures):
            values, bias = params[2 * k], params[2 * k + 1]
            w = s.csr(values)
            at = torch.sparse.mm(w, at) if bias is None else torch.addmm(bias.unsqueeze(1), w, at)
            if k < last:
                if relus[k]:
                    at = torch.relu_(at)
                acts.append(at)
        ctx.structures, ctx.relus = structures, relus
        ctx.save_for_backward(*acts, *params[0::2])
        return at.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        structures, relus = ctx.structures, ctx.relus
        n = len(structures)
        saved = ctx.saved_tensors
        acts, values = saved[:n], saved[n:]
        needs = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        gx = None
        gt = grad.t().contiguous()  # out x batch
        # the first layer whose input needs a gradient: the chain's input, or a layer's parameters
        first = 0 if needs[0] else min((k for k in range(n) if needs[3 + 2 * k] or needs[4 + 2 * k]), default=n)
        for k in range(n - 1, first - 1, -1):
            s = structures[k]
            if needs[3 + 2 * k]:
                grads[2 * k] = torch.sparse.sampled_addmm(s.csr(values[k]), gt, acts[k].t(), beta=0.0).values()
            if needs[4 + 2 * k]:
                grads[2 * k + 1] = gt.sum(1)
            if k > first or (k == 0 and needs[0]):
                ga = torch.sparse.mm(s.csr_t(values[k]), gt)  # in x batch
                if k == 0:
                    gx = ga.t()
                else:
                    gt = torch.ops.aten.threshold_backward(ga, acts[k], 0) if relus[k - 1] else ga
        return (gx, None, None, *grads)


def sparse_chain(x: torch.Tensor, params: list, structures: list[Structure], relus: list[bool]) -> torch.Tensor:
    """Linear layers given by ``(values, bias)`` pairs and their :class:`Structure`, a ReLU after layer ``k``
    where ``relus[k]``, on a 2-d ``x`` (one autograd node: :class:`_SparseChainFunction`)."""
    flat = [t for pair in params for t in pair]
    return _SparseChainFunction.apply(x, tuple(structures), tuple(relus), *flat)


# ---- one layer --------------------------------------------------------------------------------------

class SparseLinear:
    """The sparse execution of one masked ``nn.Linear``: its kept values as a flat parameter (which the
    optimizer steps on), the CSR structure of its mask, and a ``forward`` installed on the module.

    The module's own dense ``weight`` stays its parameter and its ``state_dict`` entry; :meth:`write_back`
    copies the values into it after every optimizer step. A forward that finds another tensor than that
    weight in the module (``torch.func.functional_call``: RigL's dense gradient, SNIP scores) runs the
    ordinary dense ``F.linear`` on it.
    """

    def __init__(self, name: str, module: nn.Linear, keep: torch.Tensor):
        self.name, self.module = name, module
        self.weight = module.weight
        self.keep = keep
        self.structure = Structure.of(keep.to(self.weight.device))
        self.values = nn.Parameter(self.gather(self.weight.detach()), requires_grad=self.weight.requires_grad)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.reshape(-1).index_select(0, self.structure.flat)

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(self.weight.shape).reshape(-1).index_copy_(0, self.structure.flat, values) \
            .view(self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        if module._parameters.get("weight") is not self.weight or x.dtype != self.values.dtype:
            return nn.functional.linear(x, module.weight, module.bias)
        return _SparseLinearFunction.apply(x, self.values, module.bias, self.structure)

    def write_back(self) -> None:
        """The kept values into the dense weight; call under ``torch.no_grad()`` (one context for all layers:
        a decorator per layer cost as much as the copies)."""
        self.weight.view(-1).index_copy_(0, self.structure.flat, self.values)

    def install(self) -> None:
        self.module.__dict__["forward"] = self.forward  # an instance attribute: the class stays nn.Linear

    def uninstall(self) -> None:
        if self.module.__dict__.get("forward") == self.forward:
            del self.module.__dict__["forward"]

    @torch.no_grad()
    def restructure(self, keep: torch.Tensor) -> None:
        """A new mask for this layer: the structure rebuilt, the values gathered again from the dense weight
        (which the mask update changed: zeros where a weight grew or was dropped)."""
        self.keep = keep
        self.structure = Structure.of(keep.to(self.weight.device))
        self.values = nn.Parameter(self.gather(self.weight.detach()), requires_grad=self.weight.requires_grad)

    def regather(self, old: Structure, state: torch.Tensor) -> torch.Tensor:
        """A per-value optimizer state tensor of the ``old`` structure at the positions of the current one: kept
        positions keep their state, new ones start at 0, which is what
        :func:`prunelab.sparse_training.reset_optimizer_state` gives the dense path."""
        dense = state.new_zeros(self.weight.numel()).index_copy_(0, old.flat, state)
        return dense.index_select(0, self.structure.flat)


# ---- runs of sparse layers in a Sequential ---------------------------------------------------------------

def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


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

    @staticmethod
    def find(seq: nn.Module, by_module: dict[int, SparseLinear]) -> SparseChains | None:
        if type(seq).forward is not nn.Sequential.forward or "forward" in seq.__dict__:
            return None
        mods = list(seq._modules.values())
        runs, i = [], 0
        while i < len(mods):
            if id(mods[i]) not in by_module:
                i += 1
                continue
            layers, relus, j = [by_module[id(mods[i])]], [], i + 1
            while True:
                if j + 1 < len(mods) and type(mods[j]) is nn.ReLU and id(mods[j + 1]) in by_module:
                    layers.append(by_module[id(mods[j + 1])])
                    relus.append(True)
                    j += 2
                elif j < len(mods) and id(mods[j]) in by_module:
                    layers.append(by_module[id(mods[j])])
                    relus.append(False)
                    j += 1
                else:
                    break
            if len(layers) >= 2:
                runs.append((i, j, layers, relus))
            i = j
        return SparseChains(seq, runs) if runs else None

    def _usable(self, x: torch.Tensor, start: int, end: int, layers: list[SparseLinear]) -> bool:
        if x.dim() != 2 or _global_hooks():
            return False
        for layer in layers:
            if layer.module._parameters.get("weight") is not layer.weight or x.dtype != layer.values.dtype:
                return False
        return not any(_hooked(m) for m in self.mods[start:end])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = tuple(self.seq._modules.values())
        if mods != self.mods:
            for m in mods:
                x = m(x)
            return x
        at = 0
        for start, end, layers, relus in self.runs:
            for m in mods[at:start]:
                x = m(x)
            if self._usable(x, start, end, layers):
                x = sparse_chain(x, [(layer.values, layer.module.bias) for layer in layers],
                                 [layer.structure for layer in layers], relus)
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

            density = float(keep.sum()) / keep.numel()
            at = crossover(tuple(keep.shape), self.batch_size, module.weight.device)
            if density > at:
                self.choices[name] = f"dense: density {density:.4f} above the crossover {at:g}"
                return None
        self.choices[name] = "sparse"
        return module

    def _sync(self) -> bool:
        """Every masked layer run as the mode and its current mask say: new layers engaged, layers whose mask
        changed rebuilt, layers that no longer pay (``auto``, a mask that grew) back to dense. Whether any changed."""
        mask = applied_mask(self.model) or {}
        changed = False
        for name in [n for n in self.layers if n not in mask]:
            self._release(name)
            changed = True
        for name, keep in mask.items():
            if keep is self._keeps.get(name):
                continue
            self._keeps[name] = keep
            layer = self.layers.get(name)
            module = self._wanted(name, keep)
            if layer is not None and module is None:
                self._release(name)
            elif layer is None and module is not None:
                layer = self.layers[name] = SparseLinear(name, module, keep)
                self._swap_in(layer.weight, layer.values, layer.gather)
                layer.install()
            elif layer is not None and not torch.equal(keep, layer.keep):
                old_values, old = layer.values, layer.structure
                layer.restructure(keep)
                self._swap_in(old_values, layer.values, lambda t, layer=layer, old=old: layer.regather(old, t))
            else:
                continue
            changed = True
        if changed:
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

    def _release(self, name: str) -> None:
        layer = self.layers.pop(name)
        with torch.no_grad():
            layer.write_back()
        self._swap_in(layer.values, layer.weight, layer.scatter)
        layer.uninstall()

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
        for name in list(self.layers):
            self._release(name)
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

    def _swap_in(self, old: torch.Tensor, new: torch.Tensor, convert) -> None:
        """``new`` in ``old``'s place in the optimizer, with ``old``'s per-weight state converted."""
        for group in self.optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if p is old:
                    group["params"][i] = new
        state = self.optimizer.state.pop(old, None)
        if state:
            self.optimizer.state[new] = {k: convert(v) if _per_weight(v, old) else v for k, v in state.items()}

    # -- keeping the dense weights current
    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for layer in self.layers.values():
                layer.write_back()

    # -- the optimizer's state_dict in dense shapes
    def _indexed_layers(self) -> dict[int, SparseLinear]:
        by_param = {id(layer.values): layer for layer in self.layers.values()}
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return {i: by_param[id(p)] for i, p in enumerate(params) if id(p) in by_param}

    def _dense_state_dict(self, optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in self._indexed_layers().items():
            if i in state:
                state[i] = {k: layer.scatter(v) if _per_weight(v, layer.values) else v for k, v in state[i].items()}
        return {**state_dict, "state": state}

    def _sparse_state_dict(self, optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in self._indexed_layers().items():
            if i in state:
                state[i] = {k: layer.gather(v.to(layer.weight.device)) if _per_weight(v, layer.weight) else v
                            for k, v in state[i].items()}
        return {**state_dict, "state": state}

    def record(self) -> dict[str, Any]:
        """The mode, the masked layers that run sparse now, and why each other one runs dense."""
        return {"sparse_kernels": self.mode, "sparse_layers": self.sparse_layers(),
                "dense_layers": {n: why for n, why in self.choices.items() if why != "sparse"}}


def _per_weight(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0


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
    the loop stops. The loop's ``execution`` record gets the mode, the layers sparse at the end, why each other
    masked layer ran dense, and ``sparse_steps``: how many of this session's steps each layer ran sparse.

    It stays off, said in one line, where the products would not be the dense path's: distributed training
    (DDP reduces the dense weights' gradients), mixed precision (the sparse products are float32), and a
    schedule that grows by the step's own dense gradient (``RigL(grow_gradient="step")``), which a sparse
    step does not compute."""

    def __init__(self, mode: str, mask_schedule=None):
        self.mode, self.schedule = check_name("sparse kernels mode", mode, MODES), mask_schedule
        self.execution: SparseExecution | None = None
        self.mask = None
        self.sparse_steps: dict[str, int] = {}

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
            loop.execution.update({"sparse_kernels": self.mode, "sparse_layers": []})
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
            loop.execution.update({**self.execution.record(), "sparse_steps": self.sparse_steps})
            self.execution.disengage()
            self.execution = None
