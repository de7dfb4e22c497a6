"""Masks: parameter name -> bool tensor (True = kept).

Masks are keyed by ``model.named_parameters()`` names, so a mask found on one copy of a network
applies to another copy, to a checkpoint, or to a torchvision model without custom layer classes
(the design of ``torch.nn.utils.prune``, minus its per-forward recomputation of ``weight``).
Which parameters a mask covers is decided in :mod:`prunelab.coverage`; how an applied mask keeps
pruned weights at exactly 0.0 through training, copies, saves and loads, in
:mod:`prunelab.mask_binding`. Wrapper prefixes (``_orig_mod.`` of ``torch.compile``, ``module.`` of DDP
and DataParallel) are not part of a name (:mod:`prunelab.wrappers`): a mask found on a model applies to
it wrapped or unwrapped, and a mask keyed by a wrapped model's names applies to the plain model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prunelab import mask_binding
from prunelab.coverage import prunable_parameters
from prunelab.io import atomic_torch_save
from prunelab.wrappers import resolve_names, unwrap

__all__ = ["Mask", "prunable_parameters", "remove_mask"]

_FORMAT = "prunelab.mask"
_VERSION = 2  # 2: bits packed 8 to a byte (1: one bool per byte, still readable)

remove_mask = mask_binding.remove_mask


class Mask(Mapping[str, torch.Tensor]):
    """An immutable-by-convention mapping from parameter names to boolean keep-masks."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise ValueError("a Mask needs at least one tensor (the model has no prunable parameters?)")
        self._t: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            t = torch.as_tensor(t)
            if t.dtype != torch.bool:
                t = t != 0
            self._t[name] = t.detach()

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def ones(cls, model: nn.Module, **prunable_options) -> Mask:
        """The dense mask over ``prunable_parameters(model, **prunable_options)``."""
        params = prunable_parameters(model, **prunable_options)
        if not params:
            what = (
                f"parameters matching {dict(prunable_options)}"
                if prunable_options
                else "weights of convolution, linear, attention or recurrent layers"
            )
            raise ValueError(f"{type(model).__name__} has no prunable parameters ({what}); nothing to prune")
        return cls({n: torch.ones_like(p, dtype=torch.bool, device="cpu") for n, p in params.items()})

    @classmethod
    def from_weights(cls, model: nn.Module, names: Iterable[str] | None = None) -> Mask:
        """The mask of nonzero entries of the model's (prunable, or named) parameters."""
        model = unwrap(model)
        params = dict(model.named_parameters())
        names = list(names) if names is not None else list(prunable_parameters(model))
        resolved = resolve_names(names, params)
        return cls({n: (params[resolved.get(n, n)].detach() != 0).cpu() for n in names})

    # ---- mapping protocol -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def __len__(self) -> int:
        return len(self._t)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.keys() == other.keys() and all(
            self._t[n].shape == other[n].shape and torch.equal(self._t[n].cpu(), other[n].cpu()) for n in self
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, {self.num_total} weights, sparsity={self.sparsity:.4f})"

    # ---- counts ---------------------------------------------------------------------------------
    @property
    def num_total(self) -> int:
        return sum(t.numel() for t in self._t.values())

    @property
    def num_kept(self) -> int:
        return int(sum(int(t.sum()) for t in self._t.values()))

    @property
    def density(self) -> float:
        """Fraction of covered weights kept."""
        return self.num_kept / self.num_total

    @property
    def sparsity(self) -> float:
        """Fraction of covered weights pruned (1 - density)."""
        return 1.0 - self.density

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """{name: (kept, total)} per masked tensor."""
        return {n: (int(t.sum()), t.numel()) for n, t in self._t.items()}

    def layer_density(self) -> dict[str, float]:
        return {n: kept / total for n, (kept, total) in self.layer_counts().items()}

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - d for n, d in self.layer_density().items()}

    # ---- algebra --------------------------------------------------------------------------------
    def _combine(self, other: Mask, op) -> Mask:
        if self.keys() != other.keys():
            raise ValueError("masks cover different parameters; cannot combine them")
        return Mask({n: op(self._t[n], other[n].to(self._t[n].device)) for n in self})

    def __and__(self, other: Mask) -> Mask:
        return self._combine(other, torch.logical_and)

    def __or__(self, other: Mask) -> Mask:
        return self._combine(other, torch.logical_or)

    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: t.to(device) for n, t in self._t.items()})

    def clone(self) -> Mask:
        return Mask({n: t.clone() for n, t in self._t.items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.cpu() for n, t in self._t.items()}

    # ---- model interaction ----------------------------------------------------------------------
    def check_compatible(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """``{mask name: the model's parameter}`` for every tensor of the mask; ValueError naming the first
        mismatch otherwise. Wrapper prefixes are no part of a name, on either side."""
        return {n: p for n, (_, p) in self._locate(model).items()}

    def _locate(self, model: nn.Module) -> dict[str, tuple[str, nn.Parameter]]:
        """``{mask name: (its name in the unwrapped model, the parameter)}``, names and shapes checked."""
        params = dict(unwrap(model).named_parameters(remove_duplicate=False))  # a tied tensor under any name
        resolved = resolve_names(self._t, params)
        missing = [n for n in self._t if n not in resolved]
        if missing:
            raise ValueError(
                f"mask does not fit {type(model).__name__}: it names {len(missing)} parameter(s) the model "
                f"lacks, e.g. {missing[0]!r}"
            )
        for n, t in self._t.items():
            p = params[resolved[n]]
            if tuple(p.shape) != tuple(t.shape):
                raise ValueError(
                    f"mask does not fit {type(model).__name__}: {n!r} has shape {tuple(t.shape)} in the mask "
                    f"but {tuple(p.shape)} in the model"
                )
        return {n: (resolved[n], params[resolved[n]]) for n in self._t}

    @torch.no_grad()
    def zero_pruned(self, model: nn.Module) -> None:
        """Set pruned weights to exactly 0.0 (no hooks); a NaN or inf pruned weight becomes 0.0 too
        (a fill, not a multiply: ``nan * 0`` is NaN)."""
        for n, p in self.check_compatible(model).items():
            p.masked_fill_(~self._t[n].to(p.device), 0.0)

    def apply(self, model: nn.Module) -> Mask:
        """Zero the pruned weights and keep them at exactly 0.0 until :func:`prunelab.remove_mask`.

        The mask then belongs to ``model``: it survives ``copy.deepcopy``, whole-module save and load,
        ``load_state_dict`` (pruned entries are zeroed again at once) and device or dtype moves, and
        replaces any mask applied to ``model`` before (see :mod:`prunelab.mask_binding`). Parameters
        that do not require gradients (frozen) are zeroed but not hooked.
        """
        located = self._locate(model)
        mask_binding.bind(unwrap(model), {located[n][0]: t for n, t in self._t.items()})
        return self

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask crash-safely (temporary file, fsync, rename), 8 weights to a byte."""
        packed = {n: (list(t.shape), torch.from_numpy(np.packbits(t.cpu().numpy().reshape(-1))))
                  for n, t in self._t.items()}
        return atomic_torch_save(path, {"format": _FORMAT, "version": _VERSION, "packed": packed})

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mask file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated or not a torch file
            raise ValueError(f"mask file {path} is corrupted or not a prunelab mask ({type(e).__name__})") from e
        if not (isinstance(obj, dict) and obj.get("format") == _FORMAT):
            raise ValueError(f"{path} is not a prunelab mask file")
        if obj.get("version") == 1 and isinstance(obj.get("masks"), dict):
            return cls(obj["masks"])
        try:
            return cls({n: _unpack(shape, bits) for n, (shape, bits) in obj["packed"].items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"mask file {path} is corrupted or not a prunelab mask ({type(e).__name__})") from e


def _unpack(shape: list[int], bits: torch.Tensor) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    flat = np.unpackbits(bits.numpy(), count=count)
    if flat.size != count:
        raise ValueError("packed mask is shorter than its shape")
    return torch.from_numpy(flat.astype(bool)).reshape(shape)  # reshape, not view(*shape): shape [] is 0-d
