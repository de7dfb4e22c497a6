"""Per-layer counts of a mask: the table behind the layerwise-proportion plots.

Frankle et al. 2021, App. J, compare criteria by the fraction of each layer they keep;
Tanaka et al. 2020, Fig. 2, plot the same per-layer density against compression.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from prunelab.masks import Mask


def as_mask(mask: Mapping[str, torch.Tensor]) -> Mask:
    """``mask`` itself when it is a :class:`Mask`, else a Mask of its nonzero entries."""
    return mask if isinstance(mask, Mask) else Mask(mask)


def layer_table(mask: Mapping[str, torch.Tensor]) -> list[dict]:
    """One row per masked tensor, in mask order: ``name, shape, total, kept, density, sparsity``.

    ``density`` is the fraction kept and ``sparsity`` the fraction pruned (never mixed). A
    zero-sized tensor has density 1.0 (nothing of it is pruned). The rows are plain dicts so that
    they become a pandas DataFrame, a CSV file or a terminal table without conversion (Frankle et al. 2021, App. J).
    """
    rows = []
    for name, keep in as_mask(mask).items():
        total = keep.numel()
        kept = int(keep.count_nonzero())
        density = kept / total if total else 1.0
        rows.append(
            {
                "name": name,
                "shape": tuple(keep.shape),
                "total": total,
                "kept": kept,
                "density": density,
                "sparsity": 1.0 - density,
            }
        )
    return rows


def layer_labels(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """A readable label per parameter name: its module's path and type, ``"conv1 (Conv2d)"`` for
    ``conv1.weight``, ``"1 (Linear)"`` for the ``1.weight`` of a ``Sequential``; a parameter other than
    ``weight`` keeps its own name (``"layers.0.self_attn.in_proj_weight (MultiheadAttention)"``).
    A name the model does not have keeps the name alone, so a label never hides what the mask holds."""
    modules = dict(model.named_modules())
    labels = {}
    for name in names:
        path, _, param = name.rpartition(".")
        module = modules.get(path)
        if module is None or param not in dict(module.named_parameters(recurse=False)):
            labels[name] = name
            continue
        where = path if param == "weight" and path else name
        labels[name] = f"{where} ({type(module).__name__})"
    return labels
