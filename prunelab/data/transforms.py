"""Batch-wise image operations on the training device: seeds, normalization, flip + shift.

They work on whole uint8 batches ``(B, C, H, W)`` with tensor ops, so a small model's training step
is bound by the model and not by a per-sample PIL pipeline (the design of airbench, see DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Stream tags keep the random streams of different purposes apart even when their other parts
# coincide (seed 0, epoch 0, batch 0 must not give the order and the augmentation the same bits).
ORDER, AUGMENT, SAMPLE, BALANCED, WORKERS, LABELS, SUBSET = range(7)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (non-negative ints), stable across runs.

    numpy's SeedSequence hashes the tuple, so nearby tuples such as (seed, e) and (seed, e + 1) give
    unrelated streams, unlike ``seed + e``.
    """
    for p in parts:
        if int(p) < 0:
            raise ValueError(f"seeds, epochs and batch indices must be >= 0, got {p}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts``; never the global RNG.

    Draws are made on the CPU and moved to the device (the loaders: once per epoch, without blocking),
    so the same seed gives the same batches on every device.
    """
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


class Normalize:
    """``(x / 255 - mean) / std`` per channel, from uint8 to float32 on the batch's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"need one positive std per mean, got mean={mean} std={std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != len(self.mean):
            raise ValueError(f"expected a batch (B, {len(self.mean)}, H, W), got {tuple(x.shape)}")
        if x.device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
            self._cache[x.device] = ((255.0 * std).to(x.device), (mean / std).to(x.device))
        std255, shift = self._cache[x.device]
        # Two in-place passes after the cast: x / (255 std) - mean / std.
        return x.to(torch.float32).div_(std255).sub_(shift)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and (population) std of uint8 images ``(N, C, H, W)``, in [0, 1] units.

    Computed from a 256-bin histogram per channel, so it is exact and needs no float copy of the
    data set (60,000 MNIST images would take 376 MB in float64).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255.0)
        stds.append(float(var.sqrt()) / 255.0)
    return tuple(means), tuple(stds)


def draw_flip_and_shift(
    batch: int, gen: torch.Generator, max_shift: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The draws of :func:`flip_and_shift`: ``flip`` (bool), ``dy``, ``dx`` in [-max_shift, max_shift]."""
    flip = torch.randint(0, 2, (batch,), generator=gen).bool()
    dy = torch.randint(-max_shift, max_shift + 1, (batch,), generator=gen)
    dx = torch.randint(-max_shift, max_shift + 1, (batch,), generator=gen)
    return flip, dy, dx


def apply_flip_and_shift(
    images: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, max_shift: int = 4
) -> torch.Tensor:
    """Mirror image ``i`` left-right if ``flip[i]``, then move its content by ``dy[i]`` rows down and
    ``dx[i]`` columns right, filling the uncovered border with zeros.

    A shift of up to ``m`` pixels with zero fill is the same as the usual "pad by m, take a random
    crop of the original size" (torchvision ``RandomCrop(32, padding=4)``): the zeros are black
    pixels, added before normalization as in that pipeline. Vectorized: the batch is padded once and
    every output pixel is gathered from a computed source index, with no loop over images.
    """
    b, c, h, w = images.shape
    m = int(max_shift)
    if m == 0:
        return torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(3), images)
    device = images.device
    flip, dy, dx = flip.to(device), dy.to(device), dx.to(device)
    padded = F.pad(images, (m, m, m, m))  # zeros
    hp, wp = h + 2 * m, w + 2 * m
    rows = (m - dy).view(b, 1) + torch.arange(h, device=device).view(1, h)  # source row in padded
    cols_plain = (m - dx).view(b, 1) + torch.arange(w, device=device).view(1, w)
    cols_flip = (m + dx + w - 1).view(b, 1) - torch.arange(w, device=device).view(1, w)
    cols = torch.where(flip.view(b, 1), cols_flip, cols_plain)
    index = (rows.view(b, h, 1) * wp + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
    out = torch.gather(padded.reshape(b, c, hp * wp), 2, index)
    return out.view(b, c, h, w)


def flip_and_shift(images: torch.Tensor, gen: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    """Random horizontal flip and random shift of up to ``max_shift`` px, independently per image.

    The CIFAR-10 and modified TinyImageNet augmentation of Frankle et al. (2021), App. A.2:
    "randomly flipping horizontally, and randomly shifting by up to four pixels in any direction".
    """
    flip, dy, dx = draw_flip_and_shift(images.shape[0], gen, max_shift)
    return apply_flip_and_shift(images, flip, dy, dx, max_shift)
