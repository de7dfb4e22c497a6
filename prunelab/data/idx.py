"""A small reader for the IDX format of (Fashion-)MNIST, gzipped or not.

torchvision's MNIST classes only read un-gzipped files from ``<root>/<Class>/raw``; the Debian
package ``dataset-fashion-mnist`` ships gzipped files in a flat folder, and a hand-made download may
leave either. One reader for both keeps the offline default working without unpacking anything.

Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number of dimensions
``d``; then ``d`` big-endian uint32 sizes; then the data, big-endian, C order.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: The four files of a (Fashion-)MNIST copy, without the optional ``.gz``.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` decompressed on the fly) into a native-byte-order array.

    Raises ValueError naming the file when the magic number, the type code or the size of the
    payload does not match the header, so a truncated download is caught here and not later as a
    strange reshape error.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: cannot read it as an IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header cut short ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_TYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX header promises shape {dims} ({count * dtype.itemsize} bytes of data) "
            f"but the file holds {len(raw) - header} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def find_idx(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (the plain file first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def missing_idx(folder: Path) -> list[str]:
    """Names of the four IDX files not found (plain or gzipped) in ``folder``."""
    stems = [s for pair in IDX_FILES.values() for s in pair]
    return [s for s in stems if find_idx(folder, s) is None]


def read_idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64 of one split found in ``folder``."""
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = find_idx(folder, image_stem), find_idx(folder, label_stem)
    if image_path is None or label_path is None:
        raise FileNotFoundError(f"{folder}: no {image_stem}[.gz] and {label_stem}[.gz]")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{image_path}: expected uint8 images of 3 dimensions, got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{label_path}: expected uint8 labels of 1 dimension, got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(f"{folder}: {len(images)} images in {image_path.name} but {len(labels)} labels")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()
