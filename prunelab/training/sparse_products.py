"""The products of sparse execution (:mod:`prunelab.training.sparse_kernels`): the structure of a mask as CSR
index arrays, and a run of sparse linear layers (a ReLU or nothing between two of them) as one autograd node with
its backward written out: forward and input gradient through ``embedding_bag`` over the mask's rows, the weight
gradient at the kept positions only (``torch.sparse.sampled_addmm``). The layouts and the measurements behind
them: the module docstring of :mod:`prunelab.training.sparse_kernels`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

#: The kernels' generation: part of the key of the measured crossovers (``sparse_crossover``), so that
#: ``--sparse-kernels auto`` measures again when the kernels change (2: ``embedding_bag`` products, chained layers).
KERNELS_VERSION = 2


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
        # the same rows as bags of torch.nn.functional.embedding_bag (64-bit: its fast path)
        self.bags = (self.col.long(), self.crow[:-1].long())
        self.bags_t = (self.col_t.long(), self.crow_t[:-1].long())

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

    def mm(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``W @ dense`` (``dense`` contiguous, ``in x batch``): row ``i`` of the product is the sum of the rows
        ``j`` of ``dense`` weighted by the kept ``W_ij``, which is ``embedding_bag`` with per-sample weights
        (2 to 2.5 times faster than MKL's CSR product, ``torch.sparse.mm``, on LeNet-300-100's layers at batch
        128 and densities 1.8 to 30%, one thread)."""
        index, offsets = self.bags
        return nn.functional.embedding_bag(index, dense, offsets, mode="sum", per_sample_weights=values.detach())

    def mm_t(self, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``Wᵀ @ dense`` (``dense``: ``out x batch``, contiguous), as :meth:`mm`."""
        c = self._tensors(values)
        torch.index_select(values.detach(), 0, self.perm, out=c[4])
        index, offsets = self.bags_t
        return nn.functional.embedding_bag(index, dense, offsets, mode="sum", per_sample_weights=c[4])


def _crow(counts: torch.Tensor) -> torch.Tensor:
    crow = counts.new_zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


class Slot:
    """Where one layer's kept values (or its bias) live: ``tensors[index][start:stop]`` of the tensors handed
    to :class:`_SparseChainFunction`, and that slice as a detached view (for the products; a CSR tensor over it
    aliases the parameter, so the optimizer's in-place steps reach it)."""

    __slots__ = ("index", "start", "stop", "view")

    def __init__(self, index: int, start: int, stop: int, view: torch.Tensor):
        self.index, self.start, self.stop, self.view = index, start, stop, view


class _SparseChainFunction(torch.autograd.Function):
    """Consecutive sparse linear layers, a ReLU or nothing between two of them, as one autograd node:
    ``relu(x W₀ᵀ + b₀) W₁ᵀ + b₁ ...``, its backward written out. One node instead of one per layer and per
    ReLU: each costs tens of microseconds of autograd bookkeeping, as much as a small sparse product.

    Per layer: forward ``yᵀ = W xᵀ`` (``torch.sparse.mm``/``addmm`` of the CSR ``W`` and ``xᵀ`` contiguous, the
    layout MKL is fastest with), input gradient ``gxᵀ = Wᵀ gᵀ``, weight gradient at the kept positions only
    (``torch.sparse.sampled_addmm``), bias gradient ``Σ_b g``; the activations stay in the ``features x batch``
    layout of the products, so a ReLU's backward (``threshold_backward``) reads two tensors of one layout.
    The weights and biases are slices of ``tensors`` (:class:`Slot`): the flat parameter that holds every sparse
    layer's kept values and biases gets one gradient tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, structures: tuple, slots: tuple, relus: tuple, *tensors: torch.Tensor):
        lead = None if x.dim() == 2 else x.shape[:-1]
        at = _transpose(x if lead is None else x.reshape(-1, x.shape[-1]))  # in x batch
        acts = [at]
        last = len(structures) - 1
        for k, s in enumerate(structures):
            vs, bs = slots[2 * k], slots[2 * k + 1]
            at = s.mm(vs.view, at)
            if bs is not None:
                at += bs.view.unsqueeze(1)
            if k < last:
                if relus[k]:
                    at = torch.relu_(at)
                acts.append(at)
        ctx.structures, ctx.slots, ctx.relus, ctx.lead = structures, slots, relus, lead
        ctx.sizes = [t.shape[0] for t in tensors]
        ctx.save_for_backward(*acts, *tensors)  # the tensors for autograd's check that no step ran in between
        return at.t() if lead is None else at.t().reshape(*lead, at.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        structures, slots, relus, lead = ctx.structures, ctx.slots, ctx.relus, ctx.lead
        n = len(structures)
        acts = ctx.saved_tensors[:n]  # (raises if a tensor was modified in place since the forward)
        needs = ctx.needs_input_grad
        wanted = [needs[4 + i] for i in range(len(ctx.sizes))]
        pieces: list[list[tuple[int, torch.Tensor]]] = [[] for _ in ctx.sizes]
        gx = None
        gt = (grad if lead is None else grad.reshape(-1, grad.shape[-1])).t().contiguous()  # out x batch

        def layer_needs(k):
            return any(sl is not None and wanted[sl.index] for sl in slots[2 * k: 2 * k + 2])

        first = 0 if needs[0] else min((k for k in range(n) if layer_needs(k)), default=n)
        for k in range(n - 1, first - 1, -1):
            s, vs, bs = structures[k], slots[2 * k], slots[2 * k + 1]
            if wanted[vs.index]:
                pieces[vs.index].append((vs.start, torch.sparse.sampled_addmm(
                    s.csr(vs.view), gt, acts[k].t(), beta=0.0).values()))
            if bs is not None and wanted[bs.index]:
                pieces[bs.index].append((bs.start, gt.sum(1)))
            if k > first or (k == 0 and needs[0]):
                ga = s.mm_t(vs.view, gt)  # in x batch
                if k == 0:
                    gx = ga.t() if lead is None else ga.t().reshape(*lead, ga.shape[0])
                else:
                    gt = torch.ops.aten.threshold_backward(ga, acts[k], 0) if relus[k - 1] else ga
        grads = [_assemble(p, size, grad) if w else None for p, size, w in zip(pieces, ctx.sizes, wanted)]
        return (gx, None, None, None, *grads)


def _transpose(x: torch.Tensor) -> torch.Tensor:
    """``x.t().contiguous()`` of a 2-d ``x``, in 8x8 blocks where both sizes allow (a 128x784 batch: 44 against
    53 us)."""
    b, f = x.shape
    if b % 8 or f % 8 or not x.is_contiguous():
        return x.t().contiguous()
    return x.view(b // 8, 8, f // 8, 8).permute(2, 3, 0, 1).contiguous().view(f, b)


def _assemble(pieces: list[tuple[int, torch.Tensor]], size: int, like: torch.Tensor) -> torch.Tensor:
    """One gradient tensor of ``size`` from gradients of its slices (0 where none)."""
    pieces = sorted(pieces, key=lambda p: p[0])
    at = 0
    for start, g in pieces:
        if start != at:
            break
        at += g.numel()
    else:
        if at == size:  # the slices tile the tensor, as they do for a chain over a whole flat parameter
            return pieces[0][1] if len(pieces) == 1 else torch.cat([g for _, g in pieces])
    out = like.new_zeros(size)
    for start, g in pieces:
        out[start:start + g.numel()] += g
    return out


def apply_chain(x: torch.Tensor, structures: list, slots: list, relus: list, tensors: list) -> torch.Tensor:
    return _SparseChainFunction.apply(x, tuple(structures), tuple(slots), tuple(relus), *tensors)


def sparse_linear(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, structure: Structure):
    """``F.linear`` of a weight given by its kept ``values`` at the positions of ``structure``."""
    return sparse_chain(x, [(values, bias)], [structure], [])


def sparse_chain(x: torch.Tensor, params: list, structures: list[Structure], relus: list[bool]) -> torch.Tensor:
    """Linear layers given by ``(values, bias)`` pairs (``bias`` may be None) and their :class:`Structure`, a
    ReLU after layer ``k`` where ``relus[k]``: one autograd node (:class:`_SparseChainFunction`)."""
    tensors, slots = [], []
    for pair in params:
        for t in pair:
            if t is None:
                slots.append(None)
            else:
                slots.append(Slot(len(tensors), 0, t.shape[0], t.detach()))
                tensors.append(t)
    return apply_chain(x, structures, slots, relus, tensors)
