"""Per-layer counts of a mask: the table behind the layerwise-proportion plots.

Frankle et al. 2021, App. J, compare criteria by the fraction of each layer they keep;
Tanaka et al. 2020, Fig. 2, plot the same per-layer density against compression.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

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
