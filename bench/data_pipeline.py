"""One epoch of LeNet-300-100 on Fashion-MNIST: prunelab's in-memory pipeline vs a torchvision DataLoader.

    python bench/data_pipeline.py [--epochs 1] [--data-root DIR] [--workers 0 2]

Both pipelines train the same network from the same initialization with the LeNet recipe of
Frankle et al. 2021, App. A.3 (batch 128, SGD, lr 0.1), in one process, one after the other
for each epoch. The standard pipeline is ``torchvision.datasets.FashionMNIST`` with
``ToTensor() + Normalize()`` behind a ``torch.utils.data.DataLoader``: every example goes through
PIL and the transforms one at a time, and the default collate stacks them. prunelab keeps the
whole set as one uint8 tensor and builds each batch with one gather and one fused normalization.

The table gives seconds per epoch of training (data + forward + backward + step), seconds per epoch
of producing the batches alone, the test accuracy reached (both pipelines must train equally
well) and the speed-up of the in-memory pipeline. The goal (issue 2, item 8) is at least 5x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
import torchvision.transforms as T

import prunelab.data

BATCH = 128
LR = 0.1


def lenet_300_100(seed: int) -> nn.Module:
    try:
        from prunelab import models

        return models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=seed)
    except (ImportError, AttributeError, TypeError, ValueError):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
        )


def write_torchvision_copy(ds: prunelab.data.Dataset, root: Path) -> None:
    """torchvision's FashionMNIST layout (un-gzipped IDX files in root/FashionMNIST/raw) from the
    loaded tensors, so the standard pipeline reads exactly the same data whatever its source."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split in (("train", ds.train), ("t10k", ds.test)):
        images = split.images[:, 0].numpy()
        labels = split.labels.to(torch.uint8).numpy()
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + array.tobytes())


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches) -> float:
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def data_only(batches) -> float:
    start = time.perf_counter()
    for _x, _y in batches:
        pass
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(model: nn.Module, ds: prunelab.data.Dataset) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in ds.loader("test", 1000).epoch(0))
    return correct / len(ds.test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers to try"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ds = prunelab.data.load("fashion_mnist", data_root=args.data_root, augment=False)
    print(
        f"Fashion-MNIST from {ds.source}: {len(ds.train)} train / {len(ds.test)} test; "
        f"LeNet-300-100, batch {BATCH}, SGD lr {LR}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    tmp = tempfile.TemporaryDirectory()
    write_torchvision_copy(ds, Path(tmp.name))
    standard = torchvision.datasets.FashionMNIST(
        tmp.name, train=True, transform=T.Compose([T.ToTensor(), T.Normalize(ds.mean, ds.std)])
    )

    memory = ds.loader("train", BATCH, seed=args.seed)

    def torchvision_batches(workers: int, epoch: int):
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(
            standard, batch_size=BATCH, shuffle=True, num_workers=workers, generator=g
        )

    pipelines = {"prunelab in-memory": lambda e: memory.epoch(e)}
    for w in args.workers:
        pipelines[f"torchvision DataLoader, num_workers={w}"] = lambda e, w=w: torchvision_batches(w, e)

    models = {name: lenet_300_100(args.seed) for name in pipelines}
    opts = {name: torch.optim.SGD(m.parameters(), lr=LR) for name, m in models.items()}
    # warm-up: a few steps of each so that first-call costs (allocations, lazy init) are not timed
    for batches in pipelines.values():
        warm = lenet_300_100(args.seed)
        train_epoch(
            warm, torch.optim.SGD(warm.parameters(), lr=LR), (b for _, b in zip(range(5), batches(99)))
        )

    train_s = {name: [] for name in pipelines}
    data_s = {name: [] for name in pipelines}
    for e in range(args.epochs):  # interleaved, so background load hits every pipeline alike
        for name, batches in pipelines.items():
            data_s[name].append(data_only(batches(e)))
            train_s[name].append(train_epoch(models[name], opts[name], batches(e)))
    tmp.cleanup()

    base = statistics.median(train_s["prunelab in-memory"])
    rows = []
    for name in pipelines:
        t, d = statistics.median(train_s[name]), statistics.median(data_s[name])
        rows.append((name, f"{t:.3f}", f"{d:.3f}", f"{accuracy(models[name], ds):.4f}", f"{t / base:.1f}x"))
    header = ("pipeline", "train s/epoch", "data-only s/epoch", "test acc", "in-memory speed-up")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nmedian over {args.epochs} epoch(s):")
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    worst = min(statistics.median(train_s[n]) for n in pipelines if n != "prunelab in-memory") / base
    print(f"\nin-memory pipeline is {worst:.1f}x faster than the fastest DataLoader setting (goal: >= 5x)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
