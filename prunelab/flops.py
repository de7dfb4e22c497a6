"""Forward FLOPs of one example, dense and under a mask, per covered weight tensor.

What counts as a FLOP is what ``torch.utils.flop_counter`` counts, with its own per-operator
formulas (nothing here is a hand-written counter): 2 FLOPs per multiply-add of a matrix product or a
convolution (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``convolution``, scaled-dot-product attention,
...). Following that library's convention, the bias term of ``addmm`` and of a convolution is not
counted, and neither are elementwise operators (activations, normalization, residual additions,
pooling), embedding lookups or any operator the library has no formula for: they count 0.

Each counted operator is attributed to the covered weight tensor that is one of its operands,
recognised by the memory it reads (a transposed or sliced view of a weight, as ``nn.Linear`` passes to
``addmm`` and ``nn.MultiheadAttention`` passes per-projection slices of ``in_proj_weight``, reads the
weight's own bytes). FLOPs of operators with no covered operand — the query-key and attention-value products of
attention, products with a weight the mask does not cover — go to ``other``. If an operator has
several covered operands (a covered bias in ``addmm``), the one with the most dimensions, first in
argument order, takes the FLOPs.

Masked FLOPs follow Evci et al. 2020 (App. H): a sparse layer costs its dense FLOPs times its density,
so each covered tensor's FLOPs are scaled by that tensor's density in the mask; ``other`` is
unchanged, since no pruned weight enters it.

PyTorch's fused kernels that run a whole layer as one operator the counter has no formula for are
switched off while counting, so that the layer runs as the matrix products it is made of: the
attention "fast path" (``torch.backends.mha``), and the oneDNN and cuDNN kernels of ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN`` (``torch.backends.mkldnn``, ``torch.backends.cudnn``; the decomposed
recurrence performs 2 x (sequence length) x (weight elements) FLOPs per weight matrix, what the fused
kernels do too). The CPU kernel of flash attention (``_scaled_dot_product_flash_attention_for_cpu``)
is counted with the library's formula for ``_scaled_dot_product_flash_attention``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from prunelab.coverage import prunable_parameters
from prunelab.masks import Mask
from prunelab.validate import check_input_shape

__all__ = ["FlopCount", "flops"]

aten = torch.ops.aten


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs of one example: ``per_layer`` maps each covered tensor's name to
    (dense FLOPs, masked FLOPs); ``other`` are FLOPs no covered weight takes part in."""

    per_layer: dict[str, tuple[int, float]]
    other: int

    @property
    def dense(self) -> int:
        return sum(d for d, _ in self.per_layer.values()) + self.other

    @property
    def masked(self) -> float:
        return sum(m for _, m in self.per_layer.values()) + self.other

    @property
    def ratio(self) -> float:
        """Dense over masked FLOPs: the speed-up a sparse kernel could reach at best (inf if 0 remain)."""
        masked = self.masked
        return self.dense / masked if masked else math.inf

    def to_dict(self) -> dict:
        """JSON-ready: plain ints and floats (``ratio`` is None when no FLOPs remain)."""
        ratio = self.ratio
        return {
            "per_layer": {n: {"dense": int(d), "masked": float(m)} for n, (d, m) in self.per_layer.items()},
            "other": int(self.other),
            "dense": int(self.dense),
            "masked": float(self.masked),
            "ratio": ratio if math.isfinite(ratio) else None,
        }

    def __str__(self) -> str:
        rows = [(n, f"{d:,}", f"{m / d:.4f}" if d else "-", f"{m:,.0f}") for n, (d, m) in self.per_layer.items()]
        rows.append(("(other)", f"{self.other:,}", "-", f"{self.other:,}"))
        rows.append(("total", f"{self.dense:,}", f"{self.masked / self.dense:.4f}" if self.dense else "-",
                     f"{self.masked:,.0f}"))
        header = ("tensor", "dense FLOPs", "density", "masked FLOPs")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        def line(r):
            return r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:]))

        lines = [line(r) for r in [header, *rows[:-1]]]
        lines += ["-" * (sum(widths) + 6), line(rows[-1])]
        lines.append(f"dense/masked = {self.ratio:.3f}x")
        return "\n".join(lines)


def _cpu_flash_attention_flop(*args, out_val=None, **kwargs) -> int:
    return flop_registry[aten._scaled_dot_product_flash_attention](*args, out_val=out_val, **kwargs)


_cpu_flash_attention_flop._get_raw = True  # FlopCounterMode: the wrapped formula already takes tensors

_EXTRA_FORMULAS = (
    {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu")
    and aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry
    else {}
)


class _AttributingCounter(FlopCounterMode):
    """``FlopCounterMode`` that also splits each operator's FLOPs by covered weight operand.

    It reuses the library's dispatch (decomposition of operators without a formula, higher-order
    operators) and hooks only the step where an operator's formula is evaluated.
    """

    def __init__(self, owners: dict[int, list[tuple[int, int, str]]]):
        super().__init__(display=False, custom_mapping=_EXTRA_FORMULAS)
        self.owners = owners
        self.by_tensor: dict[str, int] = defaultdict(int)
        self.other = 0

    def _owner(self, args, kwargs) -> str | None:
        best, best_dim = None, -1
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.numel() > 0 and t.dim() > best_dim:
                name = self._covered_name(t)
                if name is not None:
                    best, best_dim = name, t.dim()
        return best

    def _covered_name(self, t: torch.Tensor) -> str | None:
        spans = self.owners.get(t.untyped_storage().data_ptr())
        if not spans:
            return None
        # The bytes the operand reads; overlap, not equality, so that a slice of a weight (attention
        # projections) and weights packed in one buffer (cuDNN's flattened RNN weights) are told apart.
        start = t.data_ptr()
        end = start + t.element_size() * (1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())))
        for lo, hi, name in spans:
            if start < hi and lo < end:
                return name
        return None

    def _count_flops(self, func_packet, out, args, kwargs):
        formula = self.flop_registry.get(func_packet)
        if formula is not None:
            count = int(formula(*args, **kwargs, out_val=out))
            owner = self._owner(args, kwargs)
            if owner is None:
                self.other += count
            else:
                self.by_tensor[owner] += count
        return super()._count_flops(func_packet, out, args, kwargs)


def _warn_uncounted(model: nn.Module, covered: dict[str, nn.Parameter], counted: dict[str, int]) -> None:
    """Warn about weight matrices no counted operator used (a custom operator or fused kernel
    torch.utils.flop_counter has no formula for), so a 0 is not mistaken for a measurement. Embedding
    tables are exempt: a lookup is, by the library's convention, 0 FLOPs."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    missed = [n for n, p in covered.items() if p.dim() >= 2 and not counted.get(n) and id(p) not in tables]
    if missed:
        more = f" and {len(missed) - 3} more" if len(missed) > 3 else ""
        warnings.warn(
            f"no operator with a FLOP formula in torch.utils.flop_counter used {', '.join(missed[:3])}{more}; "
            "their FLOPs are counted as 0 (an operator the library has no formula for)",
            UserWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def _unfused_recurrent_layers():
    """oneDNN and cuDNN off: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` then run as ``addmm`` per step, which the
    counter has formulas for. (Switching oneDNN's flags off warns about TF32 on Intel GPUs; not ours.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TF32 acceleration on top of oneDNN.*")
        with torch.backends.mkldnn.flags(enabled=False), torch.backends.cudnn.flags(enabled=False):
            yield


def flops(
    model: nn.Module,
    input_shape: Sequence[int],
    mask: Mask | None = None,
    *,
    input_dtype: torch.dtype | None = None,
    **coverage_options,
) -> FlopCount:
    """Forward FLOPs of one example (batch 1) through ``model``, dense and with ``mask``'s kept weights.

    The model runs once in eval mode under ``torch.no_grad`` on zeros of shape ``(1, *input_shape)``
    on the device of its first parameter; every module's training flag is restored afterwards. The
    input is float32, or ``torch.long`` (token 0) when the model contains an ``nn.Embedding`` or
    ``nn.EmbeddingBag``; ``input_dtype`` overrides either. Zeros are enough: the counted formulas
    depend on shapes only.

    ``per_layer`` lists the tensors ``mask`` covers, or without a mask those of
    ``prunable_parameters(model, **coverage_options)`` (masked = dense); a mask already fixes what it
    covers, so passing both is an error. See the module docstring for what counts as a FLOP.
    """
    shape = check_input_shape(input_shape)
    if mask is not None:
        if coverage_options:
            raise ValueError(
                f"pass either a mask or coverage options ({', '.join(sorted(coverage_options))}), not both: "
                "the mask already says which tensors it covers"
            )
        if not isinstance(mask, Mask):
            raise ValueError(f"mask must be a prunelab.Mask, got {type(mask).__name__}")
        covered = mask.check_compatible(model)
        density = mask.layer_density()
    else:
        covered = prunable_parameters(model, **coverage_options)
        density = dict.fromkeys(covered, 1.0)
    if input_dtype is None:
        tokens = any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
        input_dtype = torch.long if tokens else torch.float32
    if not isinstance(input_dtype, torch.dtype):
        raise ValueError(f"input_dtype must be a torch.dtype such as torch.float32 or torch.long, got {input_dtype!r}")
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    owners: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
    for n, p in covered.items():
        if p.numel() > 0:
            start = p.data_ptr()
            owners[p.untyped_storage().data_ptr()].append((start, start + p.numel() * p.element_size(), n))

    flags = [(m, m.training) for m in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    counter = _AttributingCounter(owners)
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        model.eval()
        x = torch.zeros((1, *shape), dtype=input_dtype, device=device)
        with torch.no_grad(), _unfused_recurrent_layers(), counter:
            model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, flag in flags:
            m.training = flag
    _warn_uncounted(model, covered, counter.by_tensor)
    per_layer = {}
    for n in covered:
        dense = counter.by_tensor.get(n, 0)
        per_layer[n] = (dense, dense * density[n])
    return FlopCount(per_layer=per_layer, other=counter.other)
