import os

import pytest
import torch

from prunelab import data


def make_learnable_images(n: int, classes: int, size: int, seed: int, channels: int = 1):
    """uint8 images whose class is the row band that is bright, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    images = torch.randint(0, 60, (n, channels, size, size), generator=g)
    band = size // classes
    for c in range(classes):
        rows = slice(c * band, (c + 1) * band)
        images[labels == c, :, rows, :] += 150
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture
def tiny_dataset():
    """A 4-class 1x8x8 in-memory dataset: 128 train and 64 test images."""
    return data.from_tensors(make_learnable_images(128, 4, 8, seed=0), make_learnable_images(64, 4, 8, seed=1))


# Bitwise checks compare runs made under the same thread count (CPU float sums depend on it), and
# subprocesses started by tests inherit OMP_NUM_THREADS=1: one thread everywhere in the test suite.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
