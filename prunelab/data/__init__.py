"""Datasets by name, held in memory where they fit, with resumable seeded loaders.

>>> ds = prunelab.data.load("fashion_mnist")            # doctest: +SKIP
>>> loader = ds.loader("train", 128, seed=0)
>>> for x, y in loader.epoch(3, start_batch=100): ...   # same bits as batches 100.. of epoch 3
>>> x, y = ds.balanced_batch(per_class=10)              # for SNIP / GraSP

See :mod:`prunelab.data.datasets` for where each dataset is looked for on disk.
"""

from prunelab.data.datasets import IMAGENET_MEAN, IMAGENET_STD, Dataset, from_tensors, info, load, names
from prunelab.data.folder import FolderLoader, FolderSplit
from prunelab.data.idx import read_idx
from prunelab.data.memory import EpochLoader, MemoryLoader, MemorySplit
from prunelab.data.roots import DEBIAN_FASHION_MNIST, ENV_VAR, resolve_root
from prunelab.data.transforms import Normalize, channel_stats, flip_and_shift

__all__ = [
    "DEBIAN_FASHION_MNIST",
    "ENV_VAR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Dataset",
    "EpochLoader",
    "FolderLoader",
    "FolderSplit",
    "MemoryLoader",
    "MemorySplit",
    "Normalize",
    "channel_stats",
    "flip_and_shift",
    "from_tensors",
    "info",
    "load",
    "names",
    "read_idx",
    "resolve_root",
]
