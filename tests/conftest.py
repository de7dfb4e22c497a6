import os
from types import SimpleNamespace

import pytest
import torch

import prunelab
import prunelab.experiments.runner as runner_module
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


@pytest.fixture
def run_spy(monkeypatch):
    """Watches what a Runner's protocols pass on while the real functions still run: ``trained_on`` gets the
    dataset of each ``train`` call and ``scored`` the ``batch`` of each ``prunelab.prune`` call."""
    spy = SimpleNamespace(trained_on=[], scored=[])
    real_train, real_prune = runner_module.train, prunelab.prune

    def train(model, dataset, *args, **kwargs):
        spy.trained_on.append(dataset)
        return real_train(model, dataset, *args, **kwargs)

    def prune(*args, **kwargs):
        spy.scored.append(kwargs["batch"])
        return real_prune(*args, **kwargs)

    monkeypatch.setattr(runner_module, "train", train)
    monkeypatch.setattr(prunelab, "prune", prune)
    return spy


# Bitwise checks compare runs made under the same thread count (CPU float sums depend on it), and
# subprocesses started by tests inherit OMP_NUM_THREADS=1: one thread everywhere in the test suite.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
