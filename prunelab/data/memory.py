"""In-memory splits and their loader: uint8 tensors on the training device, batches gathered by index.

Why: the MNIST family and CIFAR fit in memory many times over (47 MB and 150 MB as uint8). Holding
them as one tensor on the device and augmenting whole batches there (the airbench design named in
DESIGN.md) makes an epoch of LeNet-300-100 several times faster than a DataLoader that builds every
example through PIL (see ``bench/data_pipeline.py``).

Resumability: the order of epoch ``e`` is a permutation drawn from a generator seeded by
``(seed, e)`` alone, and the augmentation of batch ``b`` from one seeded by ``(seed, e, b)`` alone.
``epoch(e, start_batch=k)`` therefore yields exactly the tail of ``epoch(e)`` without producing the
first ``k`` batches, so a trainer resumes at any step with no replay of the loader (the defect of
OpenLTH's loop that DESIGN.md asks us to avoid).

On a GPU: the order and the augmentation draws of an epoch are drawn on the CPU (so every device sees
the same data) once per epoch, and reach the device in one non-blocking copy from pinned memory each;
no batch waits on the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from prunelab.data.transforms import AUGMENT, ORDER, Normalize, apply_flip_and_shift, draw_flip_and_shift, generator

Batch = tuple[torch.Tensor, torch.Tensor]


def as_device(device: str | torch.device) -> torch.device:
    """``torch.device`` with the index filled in, so "cuda" and "cuda:0" share one cached copy."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def to_device_async(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``t`` on ``device``; from the CPU to a GPU through pinned memory with a non-blocking copy (queued on
    the current stream before the kernels that read it, so the host never waits for it)."""
    if t is None or t.device == device:
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class EpochLoader:
    """What every prunelab loader shares: ``len()``, a seeded order per epoch, resumable epochs.

    Iterating the loader itself (``for x, y in loader``) runs epoch 0, then 1, ... on successive
    loops; ``epoch(e, start_batch)`` names the epoch explicitly and is what a resumable trainer uses.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 shard: tuple[int, int] = (0, 1)):
        rank, world = shard
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise ValueError(f"shard must be (rank, world size) with 0 <= rank < world size, got {shard!r}")
        self.shard = (rank, world)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_examples = int(num_examples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._next_epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Example indices (CPU int64) of ``epoch`` in the order they are served."""
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=generator(ORDER, self.seed, epoch))

    def bounds(self, b: int) -> tuple[int, int]:
        lo = b * self.batch_size
        return lo, min(lo + self.batch_size, self.num_examples)

    def part(self, n: int) -> slice:
        """This shard's contiguous part of a global batch of ``n`` (as ``torch.tensor_split``).

        Distributed training: every rank draws the same global batch order and augmentation seeds and
        keeps its own part, so a step equals single-process training on the global batch.
        """
        rank, world = self.shard
        size, extra = divmod(n, world)
        lo = rank * size + min(rank, extra)
        return slice(lo, lo + size + (rank < extra))

    def shift_draws(self, epoch: int, start_batch: int) -> torch.Tensor:
        """``(3, n)`` int64 rows flip (0/1), dy, dx for every example of the global batches ``start_batch, ...``
        of ``epoch``, in order: batch ``b``'s are drawn from the generator of ``(seed, epoch, b)`` exactly as
        :func:`~prunelab.data.transforms.flip_and_shift` draws them, so they do not depend on where the
        epoch starts, on the device, or on the number of ranks."""
        parts = [torch.zeros(3, 0, dtype=torch.int64)]
        for b in range(start_batch, len(self)):
            lo, hi = self.bounds(b)
            flip, dy, dx = draw_flip_and_shift(hi - lo, generator(AUGMENT, self.seed, epoch, b))
            parts.append(torch.stack([flip.long(), dy, dx]))
        return torch.cat(parts, 1)

    def shard_slices(self, start_batch: int) -> Iterator[tuple[int, slice, slice]]:
        """``(b, this shard's examples in the epoch order, the same counted from batch start_batch)``."""
        base = start_batch * self.batch_size
        for b in range(start_batch, len(self)):
            lo, hi = self.bounds(b)
            part = self.part(hi - lo)
            yield b, slice(lo + part.start, lo + part.stop), slice(lo - base + part.start, lo - base + part.stop)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """Batches ``start_batch, ..., len(self) - 1`` of ``epoch``; arguments are checked at once."""
        for what, v in (("epoch", epoch), ("start_batch", start_batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be a non-negative integer, got {v!r}")
        if start_batch > len(self):
            raise ValueError(f"start_batch={start_batch} is past the end of an epoch of {len(self)} batches")
        return self._batches(epoch, start_batch)

    def _batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        e = self._next_epoch
        self._next_epoch += 1
        return self.epoch(e)


class MemorySplit:
    """One split held in memory: ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``.

    ``on(device)`` moves both to a device once and keeps that copy for every later loader;
    :meth:`with_labels` gives the same images (and their device copies) under other labels.
    """

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        labels = torch.as_tensor(labels).to(torch.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images.contiguous()
        self.labels = labels
        self._images_on: dict[torch.device, torch.Tensor] = {}  # shared with the splits of with_labels
        self._labels_on: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def on(self, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        device = as_device(device)
        if device not in self._images_on:
            self._images_on[device] = self.images.to(device)  # the tensor itself on its own device
        if device not in self._labels_on:
            self._labels_on[device] = self.labels.to(device)
        return self._images_on[device], self._labels_on[device]

    def with_labels(self, labels: torch.Tensor) -> MemorySplit:
        """The same images under ``labels`` (one per image), e.g. random labels; the images and their
        copies on devices are shared, not copied."""
        out = MemorySplit(self.images, labels)
        out._images_on = self._images_on
        return out

    def subset(self, indices: torch.Tensor) -> MemorySplit:
        """The examples at ``indices``, in that order (a copy of their images and labels)."""
        return MemorySplit(self.images[indices], self.labels[indices])

    def fetch(self, indices: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """uint8 images at ``indices``, on ``device``, without augmentation."""
        images, _ = self.on(device)
        return images.index_select(0, indices.to(images.device))


class MemoryLoader(EpochLoader):
    """Batches of a :class:`MemorySplit`: gathered by index, augmented and normalized on the device.

    ``augment`` is ``None`` or ``"shift"`` (random horizontal flip and shift of up to 4 px, see
    :func:`prunelab.data.transforms.flip_and_shift`).
    """

    def __init__(
        self,
        split: MemorySplit,
        batch_size: int,
        normalize: Normalize,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        augment: str | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
    ):
        super().__init__(len(split), batch_size, seed, shuffle, drop_last, shard)
        if augment not in (None, "shift"):
            raise ValueError(f"in-memory datasets support augment None or 'shift', got {augment!r}")
        self.split = split
        self.normalize = normalize
        self.device = as_device(device)
        self.augment = augment

    def _batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        images, labels = self.split.on(self.device)
        first = start_batch * self.batch_size
        order = to_device_async(self.order(epoch)[first:], self.device) if self.shuffle else None
        draws = to_device_async(self.shift_draws(epoch, start_batch), self.device) if self.augment == "shift" else None
        for _, mine, from_start in self.shard_slices(start_batch):
            if order is None:
                x, y = images[mine], labels[mine].clone()
            else:
                idx = order[from_start]
                x, y = images.index_select(0, idx), labels.index_select(0, idx)
            if draws is not None:
                flip, dy, dx = draws[:, from_start]
                x = apply_flip_and_shift(x, flip.bool(), dy, dx)
            yield self.normalize(x), y
