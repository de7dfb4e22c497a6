"""Compact exports: a trained pruned network in the form that runs fastest for inference, with the same outputs.

A masked network runs at dense cost: its zeros are multiplied like any other weight. :func:`compact` rewrites it
in two steps, and checks the result against the masked network before anything is returned or written:

1. **Dead channels out.** A channel that every layer reading it ignores (the input slice of each reader is all
   zeros: what structured criteria with ``axis="input"`` produce, Paganini & Forde 2020, §3.1, and what very sparse
   unstructured masks leave behind) changes no output, so it is removed physically: the producer's output channel,
   its BatchNorm entry and the readers' input slices, coupled through residual additions, concatenations and
   flattening. Which channels are coupled is Torch-Pruning's dependency graph (Fang et al. 2023, §3; the
   ``torch-pruning`` package, optional extra ``prunelab[compact]``), not a graph library of our own; this module
   only decides *which* channels of each coupled group are dead. A group that reaches a layer whose input
   channels mix (LayerNorm, attention, a custom layer), or the network's output, is left whole.
2. **A format per linear layer.** Each ``nn.Linear`` that remains is timed in every format of
   :data:`LAYER_FORMATS` that can take it (dense; CSR, :class:`CsrLinear`; 2:4 semi-structured on CUDA,
   ``torch.sparse.to_sparse_semi_structured``, when its mask is 2:4 along the input, Mishra et al. 2021, §2) on
   its own input at ``tune_batch``, and the fastest is kept: CSR only pays at low density (about 10% kept at
   batch 128 on a CPU, less at batch 1), so a fixed rule would make many exports slower. Convolutions stay
   dense: PyTorch has no sparse convolution kernel that beats cuDNN/oneDNN at these densities.

The outputs of the export equal the masked network's to float rounding: :func:`compact` compares them on a
random batch and raises instead of returning a network that differs. Output-axis channels (``axis="output"``)
are not removed: a pruned filter still emits its bias or BatchNorm shift, which the next layer reads; a warning
says how many such channels stay.

The saved file (:func:`save_compact`) holds the channel-compacted dense network and each linear layer's format;
:func:`load_compact` rebuilds the formats on the device it loads to, falling back to dense (with a warning) where
that device lacks one (a 2:4 plan loaded on a CPU).
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from prunelab.batches import logits
from prunelab.mask_binding import unbound_copy
from prunelab.masks import Mask
from prunelab.pruning.patterns import NMPattern, satisfies
from prunelab.timing import Timing, device_sync, paired, quartiles
from prunelab.wrappers import unwrap

__all__ = [
    "LAYER_FORMATS",
    "CompactReport",
    "CsrLinear",
    "LayerFormat",
    "compact",
    "latency",
    "load_compact",
    "remove_dead_channels",
    "save_compact",
]

_FORMAT = "prunelab.compact"
_VERSION = 1


class CompactWarning(UserWarning):
    """Something of the network the export could not make smaller or faster, said in one line."""


# ---- layer formats --------------------------------------------------------------------------------------

class CsrLinear(nn.Module):
    """``nn.Linear`` with its weight in compressed sparse row form: ``y = W x + b`` over the kept entries only.

    The rows, columns and values are plain buffers (the CSR tensor is assembled at each call, without a copy), so
    the layer moves between devices, deep-copies and saves like any module."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # torch's one-time "CSR support is in beta" note says nothing of this layer
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = linear.weight.detach().to_sparse_csr()
        self.register_buffer("crow_indices", csr.crow_indices())
        self.register_buffer("col_indices", csr.col_indices())
        self.register_buffer("values", csr.values())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def weight_csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       (self.out_features, self.in_features), check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.mm(self.weight_csr(), flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.values.numel()}"


def _semi_structured(linear: nn.Linear) -> nn.Module:
    """The layer with its weight as a 2:4 semi-structured tensor (cuSPARSELt or CUTLASS kernels)."""
    from torch.sparse import to_sparse_semi_structured

    out = copy.deepcopy(linear)
    out.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach().contiguous()), requires_grad=False)
    return out


def _no_reason(linear: nn.Linear) -> str | None:
    return None


def _csr_reason(linear: nn.Linear) -> str | None:
    if linear.weight.device.type not in ("cpu", "cuda"):
        return f"no CSR matmul on {linear.weight.device.type}"
    return None


_TWO_FOUR = NMPattern(2, 4)


def _semi_structured_reason(linear: nn.Linear) -> str | None:
    """Why ``torch.sparse.to_sparse_semi_structured`` cannot take this layer (None: it can)."""
    w = linear.weight
    if w.device.type != "cuda":
        return "2:4 kernels need a CUDA device"
    if not satisfies(w.detach() != 0, 1, _TWO_FOUR):
        return "its weights are not 2:4 along the input"
    from torch.sparse import SparseSemiStructuredTensor

    backends = [SparseSemiStructuredTensor] + list(SparseSemiStructuredTensor.__subclasses__())
    limits = [b._DTYPE_SHAPE_CONSTRAINTS.get(w.dtype) for b in backends if hasattr(b, "_DTYPE_SHAPE_CONSTRAINTS")]
    limits = [c for c in limits if c is not None]
    if not limits:
        return f"no 2:4 kernel for {w.dtype} (use float16 or bfloat16)"
    rows, cols = w.shape
    if not any(rows % c.sparse_min_rows == 0 and cols % c.sparse_min_cols == 0 for c in limits):
        return f"shape {tuple(w.shape)} is not a multiple of the 2:4 kernels' tile"
    return None


@dataclass(frozen=True)
class LayerFormat:
    """How a linear layer can be stored for inference: ``why_not(layer)`` says why it cannot take a layer (None:
    it can), ``convert(layer)`` builds the module that replaces it."""

    name: str
    why_not: Callable[[nn.Linear], str | None]
    convert: Callable[[nn.Linear], nn.Module]
    description: str = ""


LAYER_FORMATS: dict[str, LayerFormat] = {}


def register_layer_format(fmt: LayerFormat) -> LayerFormat:
    """Add a format :func:`compact` may choose for linear layers (it is timed against the others)."""
    LAYER_FORMATS[fmt.name] = fmt
    return fmt


register_layer_format(LayerFormat("dense", _no_reason, lambda layer: layer, "the dense weight, zeros included"))
register_layer_format(LayerFormat("csr", _csr_reason, CsrLinear, "compressed sparse rows (the kept entries only)"))
register_layer_format(LayerFormat("2:4", _semi_structured_reason, _semi_structured,
                                  "2:4 semi-structured, NVIDIA sparse tensor cores (CUDA, float16/bfloat16)"))


# ---- timing ---------------------------------------------------------------------------------------------

@torch.inference_mode()
def _times(fns: Sequence[Callable[[], object]], device: torch.device, repeats: int) -> list[list[Timing]]:
    """The timings of each of ``fns`` called in turn (:func:`prunelab.timing.paired`), without autograd."""
    return paired(fns, repeats, sync=device_sync(device))


@dataclass(frozen=True)
class Latency:
    """Median and quartiles of the wall time of one forward pass, and its median CPU time, in seconds."""

    median: float
    q1: float
    q3: float
    cpu: float

    @classmethod
    def of(cls, samples: Sequence[Timing]) -> Latency:
        q1, median, q3 = quartiles([s.wall for s in samples])
        return cls(median, q1, q3, statistics.median(s.cpu for s in samples))


def latency(models: Mapping[str, nn.Module], input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 128),
            repeats: int = 30, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32) -> dict[int, dict[str, Latency]]:
    """``{batch size: {name: Latency}}`` of a forward pass of each of ``models`` on random inputs of
    ``(batch, *input_shape)``, measured alternately in this process (medians and quartiles)."""
    device = torch.device(device)
    out = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b)).to(device, dtype)
        samples = _times([lambda m=m, x=x: m(x) for m in models.values()], device, repeats)
        out[b] = {name: Latency.of(s) for name, s in zip(models, samples)}
    return out


# ---- dead channels ----------------------------------------------------------------------------------------

def _readers() -> dict[Callable, int]:
    """Torch-Pruning's input-channel pruning functions whose layer ignores a channel when this weight dimension
    is all zeros at it."""
    import torch_pruning as tp

    return {tp.prune_conv_in_channels: 1, tp.prune_linear_in_channels: 1}


def _per_channel() -> set[Callable]:
    """Pruning functions of layers that treat each channel on its own (removing one changes no other)."""
    import torch_pruning as tp

    return {tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_batchnorm_out_channels,
            tp.prune_batchnorm_in_channels, tp.prune_depthwise_conv_out_channels,
            tp.prune_depthwise_conv_in_channels, tp.prune_prelu_out_channels, tp.prune_prelu_in_channels}


def _is_passthrough(dep) -> bool:
    """An element-wise or reshaping node of the graph (ReLU, addition, pooling, flatten): per channel."""
    import torch_pruning as tp

    return isinstance(dep.target.module, (tp.ops._ElementWiseOp, tp.ops._ReshapeOp, tp.ops._ConcatOp,
                                          tp.ops._SplitOp, tp.ops._SliceOp))


def _dead_in_group(group, readers: Mapping[Callable, int], per_channel: set[Callable]) -> list[int] | None:
    """The root indices of ``group`` that every reader ignores; None when the group cannot lose channels (it
    reaches a layer that mixes channels, or no layer reads it: the network's output)."""
    n_root = len(group.items[0].idxs)
    read_anywhere = torch.zeros(n_root, dtype=torch.bool)
    n_readers = 0
    for item in group.items:
        dep = item.dep
        if dep.handler in readers:
            module = dep.target.module
            if getattr(module, "groups", 1) != 1:
                return None  # grouped convolution: its input slices are per group
            dim = readers[dep.handler]
            w = module.weight.detach()
            idxs = torch.as_tensor(list(item.idxs), dtype=torch.long, device=w.device)
            other = [d for d in range(w.dim()) if d != dim]
            live = (w.index_select(dim, idxs) != 0).any(dim=other) if other else (w.index_select(dim, idxs) != 0)
            roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            read_anywhere.index_put_((roots,), live.cpu(), accumulate=True)
            n_readers += 1
        elif dep.handler not in per_channel and not _is_passthrough(dep):
            return None
    if n_readers == 0:
        return None
    return torch.nonzero(~read_anywhere).squeeze(1).tolist()


def remove_dead_channels(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Remove, in place, every channel of ``model`` that no layer reads (see the module docstring); returns
    ``{layer name: (output channels before, after)}`` of the layers that lost some. Needs ``torch-pruning``."""
    import torch_pruning as tp

    names = {id(m): n for n, m in model.named_modules()}
    roots = (nn.modules.conv._ConvNd, nn.Linear)
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    readers, per_channel = _readers(), _per_channel()
    plans = []
    for group in graph.get_all_groups(root_module_types=roots):
        dead = _dead_in_group(group, readers, per_channel)
        root = group.items[0].dep
        width = len(group.items[0].idxs)
        if dead and len(dead) < width:  # never a whole layer: the masked network would pass nothing there
            plans.append((root.target.module, root.handler, dead, width))
    changed = {}
    for module, handler, dead, width in plans:
        graph.get_pruning_group(module, handler, dead).prune()
        changed[names.get(id(module), type(module).__name__)] = (width, width - len(dead))
    return changed


# ---- the export -----------------------------------------------------------------------------------------

@dataclass
class LayerChoice:
    """The format chosen for one linear layer, the density of its weight, and the time each candidate took."""

    name: str
    shape: tuple[int, ...]
    density: float
    format: str
    seconds: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class CompactReport:
    """What :func:`compact` did: channels removed, a format per linear layer, parameter counts and the largest
    difference from the masked network's outputs."""

    channels: dict[str, tuple[int, int]]
    layers: list[LayerChoice]
    params_before: int
    params_after: int
    nonzeros: int
    max_abs_diff: float
    output_scale: float
    tune_batch: int

    def formats(self) -> dict[str, str]:
        return {c.name: c.format for c in self.layers}


def _linear_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each ``nn.Linear`` of ``model`` receives on ``example``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, args[0].detach())))
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, local = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, local, new)


def _choose_formats(model: nn.Module, example: torch.Tensor, formats: Sequence[str], repeats: int
                    ) -> list[LayerChoice]:
    """Per ``nn.Linear``: every format of ``formats`` that can take it, timed on its own input; the fastest. A
    layer whose replacement breaks the network or changes its outputs (a parent that reads ``.weight`` itself, as
    ``nn.TransformerEncoderLayer``'s fused path does) stays dense, and its choice says why."""
    device = example.device
    probe = example[:2]
    with torch.inference_mode():
        reference = logits(model(probe))
    choices = []
    for name, x in _linear_inputs(model, example).items():
        layer = model.get_submodule(name)
        w = layer.weight.detach()
        choice = LayerChoice(name, tuple(w.shape), float((w != 0).float().mean()), "dense")
        candidates = {}
        for fmt_name in formats:
            fmt = LAYER_FORMATS[fmt_name]
            reason = fmt.why_not(layer)
            if reason is None:
                try:
                    candidates[fmt_name] = fmt.convert(layer)
                except (RuntimeError, ValueError) as e:  # a kernel missing from this build of torch
                    reason = " ".join(str(e).split())[:120]
            if reason is not None:
                choice.refused[fmt_name] = reason
        if len(candidates) > 1:
            samples = _times([lambda m=m, x=x: m(x) for m in candidates.values()], device, repeats)
            choice.seconds = {n: statistics.median(t.wall for t in s) for n, s in zip(candidates, samples)}
            choice.format = min(choice.seconds, key=choice.seconds.get)
        elif candidates:
            choice.format = next(iter(candidates))
        if choice.format != "dense":
            _set_module(model, name, candidates[choice.format])
            why = _breaks(model, probe, reference)
            if why is not None:
                _set_module(model, name, layer)
                choice.refused[choice.format] = why
                choice.format = "dense"
        choices.append(choice)
    return choices


def _breaks(model: nn.Module, probe: torch.Tensor, reference: torch.Tensor) -> str | None:
    """Why ``model`` no longer computes ``reference`` on ``probe`` (None: it still does, to float rounding)."""
    try:
        with torch.inference_mode():
            out = logits(model(probe))
    except (AttributeError, RuntimeError, TypeError, NotImplementedError) as e:
        return f"the network breaks with it ({type(e).__name__}: {' '.join(str(e).split())[:80]})"
    scale = float(reference.abs().max()) or 1.0
    rtol = 2e-2 if reference.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if out.shape != reference.shape or not float((out.float() - reference.float()).abs().max()) <= rtol * scale:
        return "the network's outputs change with it (its parent reads the weight itself)"
    return None


def _check_formats(formats: Sequence[str] | None) -> tuple[str, ...]:
    from prunelab.validate import check_name

    chosen = tuple(LAYER_FORMATS) if formats is None else tuple(formats)
    if not chosen:
        raise ValueError(f"formats is empty; give at least one of: {', '.join(LAYER_FORMATS)}")
    for f in chosen:
        check_name("layer format", f, LAYER_FORMATS)
    return chosen


def compact(model: nn.Module, mask: Mask | None, input_shape: Sequence[int], *, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32, formats: Sequence[str] | None = None, tune_batch: int = 128,
            repeats: int = 20, remove_channels: bool = True, rtol: float | None = None
            ) -> tuple[nn.Module, CompactReport]:
    """The network ``model`` masked by ``mask`` (None: the mask applied to it, or its zeros as they are), rewritten
    to run faster for inference: dead channels removed, each linear layer in its fastest format of ``formats``
    (default: all of :data:`LAYER_FORMATS`) at batch ``tune_batch`` on ``device`` in ``dtype``. ``model`` is left
    as it was. The result is in eval mode; a ValueError when its outputs differ from the masked network's by more
    than float rounding (``rtol`` of the largest output; default 1e-4 in float32 or wider, 2e-2 in half precision).
    """
    from prunelab.validate import check_int

    chosen = _check_formats(formats)
    check_int(tune_batch, "tune_batch", 1, "the batch size the formats are timed at")
    check_int(repeats, "repeats", 1, "timed calls per format")
    device = torch.device(device)
    masked = unbound_copy(unwrap(model))
    if mask is not None:
        mask.zero_pruned(masked)
    masked = masked.to(device, dtype).eval()
    for p in masked.parameters():
        p.requires_grad_(True)  # the dependency graph is traced through autograd
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, *input_shape, generator=gen).to(device, dtype)
    net = copy.deepcopy(masked)
    channels: dict[str, tuple[int, int]] = {}
    if remove_channels:
        try:
            import torch_pruning  # noqa: F401
        except ModuleNotFoundError:
            warnings.warn("torch-pruning is not installed, so no channel is removed (linear layers still get their "
                          "fastest format): pip install 'prunelab[compact]'", CompactWarning, stacklevel=2)
        else:
            channels = remove_dead_channels(net, example)
    net.eval().requires_grad_(False)
    layers = _choose_formats(net, torch.randn(tune_batch, *input_shape, generator=gen).to(device, dtype), chosen,
                             repeats)
    _warn_dead_outputs(net)
    check = torch.randn(16, *input_shape, generator=gen).to(device, dtype)
    with torch.inference_mode():
        want, got = logits(masked(check)).float(), logits(net(check)).float()
    if got.shape != want.shape:
        raise ValueError(f"the compact network's outputs have shape {tuple(got.shape)}, the masked network's "
                         f"{tuple(want.shape)}: it is not exported")
    scale = float(want.abs().max()) or 1.0
    diff = float((want - got).abs().max())
    tol = rtol if rtol is not None else (2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4)
    if not diff <= tol * scale:
        raise ValueError(f"the compact network's outputs differ from the masked network's by {diff:.3g} (largest "
                         f"output {scale:.3g}): more than float rounding, so it is not exported")
    masked.requires_grad_(False)
    report = CompactReport(channels, layers, _count(masked), _count(net), _nonzeros(net), diff, scale, tune_batch)
    return net, report


def _count(model: nn.Module) -> int:
    """Stored weights: parameters (half of a 2:4 weight), and the values of CSR layers (their indices aside)."""
    return sum(p.numel() // 2 if _is_semi_structured(p) else p.numel() for p in model.parameters()) + sum(
        m.values.numel() + (0 if m.bias is None else m.bias.numel()) for m in model.modules()
        if isinstance(m, CsrLinear))


def _nonzeros(model: nn.Module) -> int:
    dense = sum(int((p.detach() != 0).sum()) if not _is_semi_structured(p) else p.numel() // 2
                for p in model.parameters())
    return dense + sum(int((m.values != 0).sum()) + (0 if m.bias is None else int((m.bias != 0).sum()))
                       for m in model.modules() if isinstance(m, CsrLinear))


def _warn_dead_outputs(model: nn.Module) -> None:
    """One line naming the layers that keep output channels whose weights are all zeros (pruned on the output
    axis): their bias or BatchNorm shift still reaches the next layer, so they stay."""
    kept = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not _is_semi_structured(m.weight):
            w = m.weight.detach()
            if w.layout != torch.strided or w.dim() < 2:
                continue
            out_dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
            other = [d for d in range(w.dim()) if d != out_dim]
            dead = int((w == 0).all(dim=other).sum())
            if dead and dead < w.shape[out_dim]:
                kept[name] = dead
    if kept:
        listed = ", ".join(f"{n} ({c})" for n, c in list(kept.items())[:4]) + (" ..." if len(kept) > 4 else "")
        warnings.warn(f"{sum(kept.values())} output channels with all-zero weights stay, in {listed}: their bias or "
                      "BatchNorm shift still reaches the next layer (channels pruned on the input axis are removed)",
                      CompactWarning, stacklevel=3)


# ---- files ----------------------------------------------------------------------------------------------

def save_compact(path: str | Path, net: nn.Module, report: CompactReport, input_shape: Sequence[int],
                 source: dict | None = None) -> Path:
    """Write the export crash-safely: the channel-compacted network with every layer dense, and the format of each
    linear layer, rebuilt by :func:`load_compact` on the device it loads to."""
    from prunelab.io import atomic_torch_save

    dense = _densified(net).to("cpu")
    return atomic_torch_save(path, {"format": _FORMAT, "version": _VERSION, "model": dense,
                                    "formats": report.formats(), "input_shape": list(input_shape),
                                    "source": source or {}})


def _densified(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with every linear layer dense (``net`` is left as it is): CSR layers back to
    ``nn.Linear``, 2:4 weights (tensor subclasses that may not deep-copy) to dense tensors."""
    memo: dict[int, object] = {}
    for m in net.modules():
        if isinstance(m, nn.Linear) and _is_semi_structured(m.weight):
            memo[id(m.weight)] = nn.Parameter(m.weight.to_dense(), requires_grad=False)
    out = copy.deepcopy(net, memo)
    for name, m in list(out.named_modules()):
        if isinstance(m, CsrLinear):
            layer = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                layer.weight.copy_(m.weight_csr().to_dense())
                if m.bias is not None:
                    layer.bias.copy_(m.bias)
            _set_module(out, name, layer.to(m.values.device).requires_grad_(False))
    return out


def _is_semi_structured(weight: torch.Tensor) -> bool:
    return type(weight) not in (torch.Tensor, nn.Parameter)


def load_compact(path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> nn.Module:
    """The network :func:`save_compact` wrote, on ``device`` (in ``dtype``), each linear layer in its saved format
    where ``device`` has it, else dense with a warning; in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compact export not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=False)  # a module: the user's own export
    if not (isinstance(obj, dict) and obj.get("format") == _FORMAT):
        raise ValueError(f"{path} is not a prunelab compact export")
    net = obj["model"].to(device, dtype) if dtype is not None else obj["model"].to(device)
    net.eval().requires_grad_(False)
    fallback = []
    for name, fmt_name in obj["formats"].items():
        fmt = LAYER_FORMATS.get(fmt_name)
        if fmt_name == "dense":
            continue
        if fmt is None:  # a format of another prunelab version
            fallback.append(f"{name} ({fmt_name}: not a format of this version; {', '.join(LAYER_FORMATS)} are)")
            continue
        layer = net.get_submodule(name)
        reason = fmt.why_not(layer)
        if reason is None:
            _set_module(net, name, fmt.convert(layer))
        else:
            fallback.append(f"{name} ({fmt_name}: {reason})")
    if fallback:
        warnings.warn(f"dense instead of the saved format for {', '.join(fallback[:3])}"
                      + (f" and {len(fallback) - 3} more" if len(fallback) > 3 else ""), CompactWarning, stacklevel=2)
    return net
