"""Image-folder splits (Tiny ImageNet, ImageNet): read from disk by a torchvision DataLoader.

These sets do not fit in memory as uint8 on a small machine (ImageNet is ~140 GB decoded), so the
images are decoded and cropped per example by torchvision transforms in ``num_workers`` worker
processes, as usual. What prunelab adds is the same resumable interface as the in-memory loader:

* the order of epoch ``e`` is a permutation seeded by ``(seed, e)``; ``epoch(e, start_batch=k)``
  plans only batches ``k, k+1, ...``, so the first ``k * batch_size`` images are never opened;
* the random crop and flip of each example come from a seed drawn from a generator seeded by
  ``(seed, e, b)``, applied inside the worker, so results do not depend on ``num_workers`` or on
  where an epoch was resumed;
* workers hand back uint8 tensors; the cast and normalization happen batch-wise on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

from prunelab.data.memory import Batch, EpochLoader, as_device, to_device_async
from prunelab.data.transforms import SAMPLE, WORKERS, Normalize, apply_flip_and_shift, derive_seed, generator

#: Random-resized-crop parameters of Frankle et al. (2021), App. A.2, for TinyImageNet and
#: ImageNet: "a random aspect ratio between 0.8 and 1.25 and a random scale between 0.1 and 1".
CROP_SCALE = (0.1, 1.0)
CROP_RATIO = (0.8, 1.25)


def load_image(path: str) -> object:
    """Open one image as RGB (module-level so that tests can count the files opened)."""
    return default_loader(path)


def scan_class_folders(
    folder: Path, class_to_idx: dict[str, int] | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of an ImageFolder tree ``folder/<class>/**/<image>``.

    With ``class_to_idx`` (the training split's), an evaluation tree is labelled with the training
    indices even when it lacks some classes; folders of unknown classes are ignored.
    """
    if class_to_idx is None:
        classes, class_to_idx = find_classes(str(folder))
    else:
        classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        present = {d.name for d in folder.iterdir() if d.is_dir()}
        class_to_idx = {c: i for c, i in class_to_idx.items() if c in present}
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return samples, classes


def scan_tiny_imagenet_val(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """Samples of Tiny ImageNet's official flat validation folder: ``images/*.JPEG`` labelled by
    ``val_annotations.txt`` (tab-separated: file name, class id, box)."""
    samples = []
    for line_no, line in enumerate((folder / "val_annotations.txt").read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in class_to_idx:
            raise ValueError(
                f"{folder / 'val_annotations.txt'} line {line_no}: expected '<file>\\t<class id>...' "
                f"with a class of the training folder, got {line!r}"
            )
        samples.append((str(folder / "images" / parts[0]), class_to_idx[parts[1]]))
    return samples


class FolderSplit:
    """One image-folder split: a list of ``(path, label)`` and the geometry of its transforms.

    ``size`` is the side of the square crop fed to the network; ``resize`` the shorter side an
    evaluation image is resized to before its central ``size`` crop (256 -> 224 for ImageNet, the
    usual protocol; 64 -> 64 for Tiny ImageNet, whose images are already 64 px).
    """

    in_memory = False

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], size: int, resize: int):
        self.samples = list(samples)
        self.classes = list(classes)
        self.size = int(size)
        self.resize = int(resize)
        self.targets = torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def with_labels(self, labels: torch.Tensor) -> FolderSplit:
        """The same images under ``labels`` (one per image), e.g. random labels."""
        if len(labels) != len(self.samples):
            raise ValueError(f"{len(self.samples)} images but {len(labels)} labels")
        samples = [(path, int(label)) for (path, _), label in zip(self.samples, labels.tolist())]
        return FolderSplit(samples, self.classes, self.size, self.resize)

    def subset(self, indices: torch.Tensor) -> FolderSplit:
        """The examples at ``indices``, in that order."""
        return FolderSplit([self.samples[i] for i in indices.tolist()], self.classes, self.size, self.resize)

    def transform(self, crop: bool) -> Callable:
        """PIL -> uint8 tensor ``(3, size, size)``; random resized crop + flip when ``crop``."""
        if crop:
            steps = [
                T.RandomResizedCrop(self.size, scale=CROP_SCALE, ratio=CROP_RATIO),
                T.RandomHorizontalFlip(),
            ]
        else:
            steps = [T.Resize(self.resize), T.CenterCrop(self.size)]
        return T.Compose([*steps, T.PILToTensor()])

    def fetch(self, indices: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """uint8 images at ``indices`` with the evaluation transform, stacked on ``device``."""
        items = _Images(self.samples, self.transform(crop=False))
        return torch.stack([items[(int(i), -1)][0] for i in indices]).to(as_device(device))


class _Images(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> ``(uint8 image, label)``; ``seed >= 0`` seeds the random
    transform for this one example (in a forked RNG, so the process's global RNG is untouched)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.samples[index]
        image = load_image(path)
        if seed < 0:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image), label


class _Plan(Sampler):
    """A batch sampler whose batches are replaced before each epoch (lazily generated)."""

    def __init__(self) -> None:
        self.make: Callable[[], Iterator[list[tuple[int, int]]]] = lambda: iter(())
        self.count = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.make()

    def __len__(self) -> int:
        return self.count


class FolderLoader(EpochLoader):
    """Batches of a :class:`FolderSplit` through a torchvision-style ``DataLoader``.

    ``augment``: ``None`` (resize + center crop), ``"crop"`` (random resized crop, scale (0.1, 1),
    ratio (0.8, 1.25), + horizontal flip: TinyImageNet and ImageNet in Frankle et al. 2021,
    App. A.2) or ``"shift"`` (flip + shift of up to 4 px done batch-wise on the device: their
    "modified TinyImageNet").
    """

    def __init__(
        self,
        split: FolderSplit,
        batch_size: int,
        normalize: Normalize,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shuffle: bool = True,
        augment: str | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        shard: tuple[int, int] = (0, 1),
    ):
        super().__init__(len(split), batch_size, seed, shuffle, drop_last, shard)
        if augment not in (None, "crop", "shift"):
            raise ValueError(
                f"image-folder datasets support augment None, 'crop' or 'shift', got {augment!r}"
            )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        self.split = split
        self.normalize = normalize
        self.device = as_device(device)
        self.augment = augment
        self.num_workers = num_workers
        self._plan = _Plan()
        self._loader = DataLoader(
            _Images(split.samples, split.transform(crop=augment == "crop")),
            batch_sampler=self._plan,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            # DataLoader draws its workers' base seed from this generator; without one it would
            # draw from (and so advance) the global RNG at every epoch.
            generator=torch.Generator().manual_seed(derive_seed(WORKERS, seed)),
        )

    def _keys(self, epoch: int, start_batch: int) -> Iterator[list[tuple[int, int]]]:
        order = self.order(epoch)
        for b in range(start_batch, len(self)):
            lo, hi = self.bounds(b)
            idx = order[lo:hi].tolist()
            if self.augment == "crop":
                seeds = torch.randint(0, 2**62, (len(idx),), generator=generator(SAMPLE, self.seed, epoch, b))
                keys = list(zip(idx, seeds.tolist()))
            else:
                keys = [(i, -1) for i in idx]
            yield keys[self.part(len(keys))]  # only this shard's images are ever opened

    def _batches(self, epoch: int, start_batch: int) -> Iterator[Batch]:
        self._plan.make = lambda: self._keys(epoch, start_batch)
        self._plan.count = len(self) - start_batch
        # the draws of the global batches, so that each rank shifts its images as one process would
        draws = to_device_async(self.shift_draws(epoch, start_batch), self.device) if self.augment == "shift" else None
        for (_, _, from_start), (x, y) in zip(self.shard_slices(start_batch), self._loader):
            x = x.to(self.device, non_blocking=True)  # pinned by the DataLoader on CUDA
            y = y.to(self.device, non_blocking=True)
            if draws is not None:
                flip, dy, dx = draws[:, from_start]
                x = apply_flip_and_shift(x, flip.bool(), dy, dx)
            yield self.normalize(x), y
