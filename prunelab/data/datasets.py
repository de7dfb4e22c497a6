"""The datasets prunelab knows by name, how each is found on disk, and the :class:`Dataset` type.

Where each dataset is looked for, under the data root ``R`` of :func:`prunelab.data.resolve_root`:

==============  =================================================================================
mnist           ``R/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (torchvision's)
fashion_mnist   ``R/FashionMNIST/raw/`` as above, else the Debian package ``dataset-fashion-mnist``
                (``/usr/share/datasets/fashion-mnist/*.gz``): the offline default
cifar10         ``R/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (torchvision's)
cifar100        ``R/cifar-100-python/{train,test,meta}`` (torchvision's)
tiny_imagenet   ``R/tiny-imagenet-200/train/<wnid>/**/*.JPEG`` and ``.../val/``: either class folders
                ``val/<wnid>/*.JPEG`` or the official ``val/images/*.JPEG`` + ``val_annotations.txt``
imagenet        ``R/imagenet/{train,val}/<wnid>/*.JPEG`` (val sorted into class folders)
==============  =================================================================================

``download=True`` lets torchvision fetch the MNIST family and CIFAR into ``R`` (and Tiny ImageNet
from its Stanford address); ImageNet cannot be downloaded automatically (it needs a licence).

Normalization: the in-memory sets use the exact per-channel mean and (population) std of their
training split, computed once at load; for the real data these are the published constants (e.g.
Fashion-MNIST 0.2860 / 0.3530, CIFAR-10 (0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616)).
Image-folder sets cannot be scanned cheaply and use the standard ImageNet constants (Tiny ImageNet
is a 200-class subset of ImageNet).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from prunelab.data import roots
from prunelab.data.folder import FolderLoader, FolderSplit, scan_class_folders, scan_tiny_imagenet_val
from prunelab.data.idx import IDX_FILES, missing_idx, read_idx_split
from prunelab.data.memory import EpochLoader, MemoryLoader, MemorySplit
from prunelab.data.transforms import BALANCED, LABELS, SUBSET, Normalize, channel_stats, generator
from prunelab.registry import Registry
from prunelab.validate import check_label_fraction

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

Split = MemorySplit | FolderSplit


class Dataset:
    """A loaded dataset: two splits, their normalization and the default augmentation.

    ``augment`` is the augmentation training loaders use by default (``None``, ``"shift"`` or
    ``"crop"``); ``default_augment`` the one this dataset's recipe calls for (what ``augment=True``
    selects). ``source`` says where the files were found.
    """

    def __init__(
        self,
        name: str,
        train: Split,
        test: Split,
        num_classes: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: str | None,
        default_augment: str | None,
        classes: list[str],
        source: str,
    ):
        self.name = name
        self.train = train
        self.test = test
        self.num_classes = int(num_classes)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment
        self.default_augment = default_augment
        self.classes = list(classes)
        self.source = source
        self.random_labels = 0  # training labels replaced at random (with_random_labels)
        self.normalize = Normalize(mean, std)
        if isinstance(train, MemorySplit):
            self.input_shape = tuple(int(s) for s in train.images.shape[1:])
        else:
            self.input_shape = (3, train.size, train.size)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, MemorySplit)

    @property
    def augment_modes(self) -> tuple[str, ...]:
        return ("shift",) if self.in_memory else ("crop", "shift")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, augment={self.augment!r})"
        )

    def split(self, split: str) -> Split:
        if split == "train":
            return self.train
        if split == "test":
            return self.test
        raise ValueError(f"unknown split {split!r} (valid: train, test)")

    def resolve_augment(self, augment: bool | str | None, split: str = "train") -> str | None:
        """The augmentation mode a loader uses: ``None`` -> the dataset's for train, none for test;
        ``True`` -> this dataset's recipe; ``False`` -> none; a mode name -> that mode."""
        if augment is None:
            return self.augment if split == "train" else None
        if augment is True:
            return self.default_augment
        if augment is False:
            return None
        if augment not in self.augment_modes:
            raise ValueError(
                f"augment={augment!r} is not available for {self.name} "
                f"(valid: True, False, {', '.join(map(repr, self.augment_modes))})"
            )
        return augment

    def loader(
        self,
        split: str,
        batch_size: int,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shuffle: bool | None = None,
        augment: bool | str | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> EpochLoader:
        """A resumable loader of ``split``: ``len(loader)`` batches, ``loader.epoch(e, start_batch)``.

        ``shuffle`` defaults to True for train and False for test; ``augment`` as in
        :meth:`resolve_augment`. ``num_workers`` only matters for image-folder datasets (in-memory
        batches are gathered on the device, where workers would only add copies). ``shard=(rank, world)``
        serves each distributed rank its contiguous part of every global batch.
        """
        part = self.split(split)
        shuffle = split == "train" if shuffle is None else bool(shuffle)
        mode = self.resolve_augment(augment, split)
        common = dict(seed=seed, device=device, shuffle=shuffle, augment=mode, drop_last=drop_last, shard=shard)
        if isinstance(part, MemorySplit):
            return MemoryLoader(part, batch_size, self.normalize, **common)
        return FolderLoader(part, batch_size, self.normalize, num_workers=num_workers, **common)

    def with_random_labels(self, fraction: float, seed: int = 0) -> Dataset:
        """This dataset with ``round(fraction * N)`` of its N training labels replaced by classes drawn
        uniformly at random; the test split is untouched. ``fraction=0`` returns the dataset itself.

        Zhang et al. 2017, §2 ("Understanding deep learning requires rethinking generalization"): 1 =
        every label random; in between, "partially corrupted labels", where a random label may happen to
        equal the true one (chance 1/C). Which examples and their labels are drawn once, from a generator of
        ``seed`` alone, so every epoch, rerun and worker sees the same labels. The images (and their copies
        on a device) are shared with this dataset, not copied. Draw a scoring batch from this dataset, not the
        returned one: SNIP's connection sensitivity takes the true labels (Lee et al. 2019, §5.6).
        """
        fraction = check_label_fraction(fraction)
        if fraction == 0:
            return self
        targets = self.train.targets
        g = generator(LABELS, seed)
        chosen = torch.randperm(len(targets), generator=g)[: round(fraction * len(targets))]
        labels = targets.clone()
        labels[chosen] = torch.randint(self.num_classes, (len(chosen),), generator=g)
        out = copy.copy(self)
        out.train = self.train.with_labels(labels)
        out.random_labels = len(chosen)
        return out

    def with_train_subset(self, examples: int) -> Dataset:
        """This dataset with only ``examples`` of its training examples, drawn uniformly without replacement
        from a generator of a fixed seed, so every seed, run and rerun trains on the same subset (seeds vary
        the initialization, the order and any random labels, never the data); the test split is untouched.

        A smaller training set is what lets a network memorize random labels in a CPU budget (Zhang et al.
        2017, §2 show the dense network fits them however many there are, only more slowly).
        """
        n = len(self.train)
        if isinstance(examples, bool) or not isinstance(examples, int) or not 1 <= examples <= n:
            raise ValueError(f"train_examples must be a whole number of training examples in [1, {n:,}] "
                             f"({self.name} has {n:,}), got {examples!r}")
        if examples == n:
            return self
        chosen = torch.randperm(n, generator=generator(SUBSET, 0))[:examples].sort().values
        out = copy.copy(self)
        out.train = self.train.subset(chosen)
        return out

    def check_per_class(self, per_class: int, split: str = "train") -> torch.Tensor:
        """The examples per class of ``split``, after checking that every class has ``per_class`` of them
        (a one-line ValueError otherwise), so a protocol can refuse a batch size before any work."""
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class must be a positive integer, got {per_class!r}")
        counts = torch.bincount(self.split(split).targets, minlength=self.num_classes)
        short = [c for c in range(self.num_classes) if counts[c] < per_class]
        if short:
            c = short[0]
            raise ValueError(
                f"{self.name} {split} split has only {int(counts[c])} examples of class {c} "
                f"({self.classes[c] if c < len(self.classes) else c}), fewer than per_class={per_class}"
                + (f" ({len(short)} classes are short)" if len(short) > 1 else "")
            )
        return counts

    def balanced_batch(
        self, per_class: int = 10, seed: int = 0, device: str | torch.device = "cpu", split: str = "train"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exactly ``per_class`` examples of every class, normalized, never augmented.

        SNIP and GraSP score a network on such a batch: "we randomly sample ten examples from each
        class" (Frankle et al. 2021, App. C.2, following Wang et al. 2020). The examples of
        each class are a seeded choice without replacement and the batch order is a seeded shuffle,
        both from a generator of ``seed`` alone.
        """
        counts = self.check_per_class(per_class, split)
        part = self.split(split)
        targets = part.targets
        by_class = torch.argsort(targets, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        g = generator(BALANCED, seed)
        chosen = []
        for c in range(self.num_classes):
            pick = torch.randperm(int(counts[c]), generator=g)[:per_class]
            chosen.append(by_class[starts[c] + pick])
        idx = torch.cat(chosen)
        idx = idx[torch.randperm(len(idx), generator=g)]
        x = self.normalize(part.fetch(idx, device))
        return x, targets[idx].to(x.device)


# ----------------------------------------------------------------------------- finding files


def _in_memory(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    classes: list[str],
    augment: bool | str,
    default_augment: str | None,
    source: str,
) -> Dataset:
    train_split, test_split = MemorySplit(*train), MemorySplit(*test)
    mean, std = channel_stats(train_split.images)
    ds = Dataset(
        name, train_split, test_split, len(classes), mean, std, None, default_augment, classes, source
    )
    ds.augment = ds.resolve_augment(bool(augment) if augment in (None, True, False) else augment)
    return ds


def from_tensors(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    name: str = "custom",
    classes: list[str] | None = None,
    augment: bool | str = False,
) -> Dataset:
    """An in-memory Dataset from your own uint8 images (N, C, H, W) and integer labels.

    It behaves exactly like the built-in small datasets (same loaders, normalization from the training
    pixels, balanced batches), so prunelab's trainer and protocols run on any data a user holds.
    """
    for split, (images, labels) in (("train", train), ("test", test)):
        if images.dtype != torch.uint8 or images.dim() != 4:
            got = f"{images.dtype} {tuple(images.shape)}"
            raise ValueError(f"{split} images must be a uint8 tensor (N, C, H, W), got {got}")
        if labels.dim() != 1 or labels.numel() != images.shape[0]:
            raise ValueError(f"{split} labels must be a 1-d tensor with one label per image")
    if classes is None:
        classes = [str(c) for c in range(int(max(train[1].max(), test[1].max())) + 1)]
    return _in_memory(name, train, test, classes, augment, "shift", source="tensors")


def _fetch_command(name: str, root: Path) -> str:
    """The one command that downloads a dataset into ``root`` (the CLI has no download flag: a download is a
    deliberate step, not a side effect of starting a run)."""
    return f"python -c \"import prunelab.data as d; d.load('{name}', data_root='{root}', download=True)\""


def _idx_family(
    name: str,
    tv_class: type,
    root: Path,
    download: bool,
    augment: bool | str,
    flat_dirs: Callable[[], list[Path]],
    hint: str,
) -> Dataset:
    """MNIST-style data: torchvision's class first, then our IDX reader (gz or not) on its raw folder,
    then flat folders such as the Debian package's, then a download if allowed."""
    classes = list(tv_class.classes)
    raw = root / tv_class.__name__ / "raw"

    def from_torchvision(dl: bool) -> Dataset:
        parts = [tv_class(str(root), train=t, download=dl) for t in (True, False)]
        pairs = [(p.data.unsqueeze(1).to(torch.uint8), p.targets.to(torch.int64)) for p in parts]
        return _in_memory(
            name, pairs[0], pairs[1], classes, augment, None, f"torchvision {tv_class.__name__} in {root}"
        )

    try:
        return from_torchvision(False)
    except RuntimeError:  # torchvision: "Dataset not found" (e.g. only .gz files present)
        pass
    for folder in [raw, *flat_dirs()]:
        if folder.is_dir() and not missing_idx(folder):
            train, test = (read_idx_split(folder, s) for s in IDX_FILES)
            return _in_memory(name, train, test, classes, augment, None, f"IDX files in {folder}")
    if download:
        return from_torchvision(True)
    files = ", ".join(s for pair in IDX_FILES.values() for s in pair)
    raise FileNotFoundError(
        f"{name} not found: put {files} (each may be .gz) in {raw}{hint}, or fetch them when online: "
        f"{_fetch_command(name, root)}"
    )


def _cifar(
    name: str, tv_class: type, files: list[str], root: Path, download: bool, augment: bool | str
) -> Dataset:
    folder = root / tv_class.base_folder
    try:
        parts = [tv_class(str(root), train=t, download=download) for t in (True, False)]
    except RuntimeError as err:
        if all((folder / f).is_file() for f in files):
            raise ValueError(
                f"{name}: the files in {folder} fail torchvision's md5 check (corrupt or an incomplete "
                f"download): delete {folder} and fetch it again: {_fetch_command(name, root)} ({err})"
            ) from None
        raise FileNotFoundError(
            f"{name} not found: put {', '.join(files)} (from {tv_class.filename}) in {folder}, "
            f"or fetch them when online: {_fetch_command(name, root)}"
        ) from None
    pairs = [
        (
            torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(p.targets, dtype=torch.int64),
        )
        for p in parts
    ]
    return _in_memory(
        name,
        pairs[0],
        pairs[1],
        list(parts[0].classes),
        augment,
        "shift",
        f"torchvision {tv_class.__name__} in {root}",
    )


_REGISTRY: Registry[Callable[[Path, bool, bool | str], Dataset]] = Registry("dataset")


@_REGISTRY.register("mnist", num_classes=10, input_shape=(1, 28, 28), in_memory=True,
                    description="handwritten digits, 60k train / 10k test, 28x28 grey",
                    citation="LeCun et al. 1998")
def _mnist(root: Path, download: bool, augment: bool | str) -> Dataset:
    return _idx_family("mnist", torchvision.datasets.MNIST, root, download, augment, list, "")


@_REGISTRY.register("fashion_mnist", num_classes=10, input_shape=(1, 28, 28), in_memory=True,
                    description="Zalando clothing images, 60k train / 10k test, 28x28 grey",
                    citation="Xiao et al. 2017")
def _fashion_mnist(root: Path, download: bool, augment: bool | str) -> Dataset:
    debian = Path(roots.DEBIAN_FASHION_MNIST)  # looked up now, so tests can move it
    hint = f" (or install the Debian package dataset-fashion-mnist, which puts them in {debian})"
    return _idx_family(
        "fashion_mnist", torchvision.datasets.FashionMNIST, root, download, augment, lambda: [debian], hint
    )


@_REGISTRY.register("cifar10", num_classes=10, input_shape=(3, 32, 32), in_memory=True,
                    description="natural images in 10 classes, 50k train / 10k test, 32x32 colour",
                    citation="Krizhevsky 2009")
def _cifar10(root: Path, download: bool, augment: bool | str) -> Dataset:
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    return _cifar("cifar10", torchvision.datasets.CIFAR10, files, root, download, augment)


@_REGISTRY.register("cifar100", num_classes=100, input_shape=(3, 32, 32), in_memory=True,
                    description="natural images in 100 classes, 50k train / 10k test, 32x32 colour",
                    citation="Krizhevsky 2009")
def _cifar100(root: Path, download: bool, augment: bool | str) -> Dataset:
    return _cifar(
        "cifar100", torchvision.datasets.CIFAR100, ["train", "test", "meta"], root, download, augment
    )


def _image_folder(
    name: str, folder: Path, size: int, resize: int, augment: bool | str, tiny: bool, how: str
) -> Dataset:
    train_dir, val_dir = folder / "train", folder / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise FileNotFoundError(f"{name} not found: {how}")
    train_samples, classes = scan_class_folders(train_dir)
    if not train_samples:
        raise FileNotFoundError(f"{name}: no images in {train_dir}; {how}")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    if tiny and (val_dir / "val_annotations.txt").is_file():
        val_samples = scan_tiny_imagenet_val(val_dir, class_to_idx)
    else:
        val_samples, _ = scan_class_folders(val_dir, class_to_idx)
    if not val_samples:
        raise FileNotFoundError(f"{name}: no images in {val_dir}; {how}")
    train = FolderSplit(train_samples, classes, size, resize)
    test = FolderSplit(val_samples, classes, size, resize)
    ds = Dataset(
        name, train, test, len(classes), IMAGENET_MEAN, IMAGENET_STD, None, "crop", classes, str(folder)
    )
    ds.augment = ds.resolve_augment(bool(augment) if augment in (None, True, False) else augment)
    return ds


@_REGISTRY.register("tiny_imagenet", num_classes=200, input_shape=(3, 64, 64), in_memory=False,
                    description="200 ImageNet classes, 100k train / 10k val, 64x64 colour",
                    citation="Le & Yang 2015")
def _tiny_imagenet(root: Path, download: bool, augment: bool | str) -> Dataset:
    folder = root / "tiny-imagenet-200"
    if download and not folder.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, str(root))
    how = (
        f"put the class folders train/<wnid>/**/*.JPEG and val/ (class folders, or the official "
        f"val/images + val_annotations.txt) in {folder}, or fetch tiny-imagenet-200.zip when online: "
        f"{_fetch_command('tiny_imagenet', root)}"
    )
    return _image_folder("tiny_imagenet", folder, 64, 64, augment, True, how)


@_REGISTRY.register("imagenet", num_classes=1000, input_shape=(3, 224, 224), in_memory=False,
                    description="ILSVRC-2012, 1000 classes, 1.28M train / 50k val, resized to 224x224",
                    citation="Russakovsky et al. 2015")
def _imagenet(root: Path, download: bool, augment: bool | str) -> Dataset:
    folder = root / "imagenet"
    how = (
        f"put the ILSVRC-2012 images as class folders train/<wnid>/*.JPEG and val/<wnid>/*.JPEG in "
        f"{folder} (it cannot be downloaded automatically: get it from image-net.org)"
    )
    return _image_folder("imagenet", folder, 224, 256, augment, False, how)


def names() -> list[str]:
    """Names accepted by :func:`load`."""
    return _REGISTRY.names()


def info(name: str) -> dict:
    """Static facts about a dataset without loading it: num_classes, input_shape, in_memory, description,
    citation."""
    return _REGISTRY.meta(name)


def load(
    name: str,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    augment: bool | str = True,
) -> Dataset:
    """Load dataset ``name`` from the data root (see :func:`resolve_root` and this module's table).

    ``augment=True`` gives training loaders the augmentation of the dataset's recipe (Frankle et al.
    2021, App. A.2): flip + 4 px shift for CIFAR, random resized crop + flip for Tiny ImageNet
    and ImageNet, none for the MNIST family (the LeNet recipe uses none). ``augment="shift"`` on
    tiny_imagenet gives their "modified TinyImageNet"; ``False`` turns augmentation off.
    Raises ValueError for an unknown name and FileNotFoundError, in one line saying which files go
    where, when the data is not on disk and ``download`` is False.
    """
    builder = _REGISTRY.get(name)
    return builder(roots.resolve_root(data_root), bool(download), augment)
