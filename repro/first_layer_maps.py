"""How many first-layer connections of LeNet-300-100 a mask keeps per input pixel, and how that map follows the
mean training image (Lee et al. 2019, §5.5, Fig. 3: "survived parameters get close to the average of all
examples"). One place for the family-1 table of repro/summarize.py and for the claims of repro/claims.py."""

from __future__ import annotations

from functools import cache
from pathlib import Path

FIRST_LAYER = "1.weight"  # LeNet-300-100's first linear layer (after the flatten)


def kept_per_pixel(root: str | Path, run_id: str):
    """Kept connections of the first layer per input pixel (a flat tensor of 784) of a finished run's mask."""
    from prunelab import Mask
    from prunelab.experiments import runfiles

    return Mask.load(Path(root) / run_id / runfiles.MASK)[FIRST_LAYER].float().sum(0)


@cache
def mean_training_image(dataset: str = "fashion_mnist"):
    from prunelab import data

    return data.load(dataset).train.images.float().mean(0).flatten()


def correlation(a, b) -> float:
    """Pearson correlation of two flat tensors."""
    import torch

    return torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def mean_image_correlation(root: str | Path, run_id: str, dataset: str = "fashion_mnist") -> float:
    return correlation(kept_per_pixel(root, run_id), mean_training_image(dataset))
