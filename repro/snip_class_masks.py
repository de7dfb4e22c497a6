"""Family 1 (no training): SNIP's first-layer masks scored on one class, Lee et al. 2019, §5.4, Fig. 2.

Lee et al. (2019, Fig. 2) score LeNet-300-100 at initialization with a batch of a single class and show that
the first layer's kept connections "reconstruct either the complete image (MNIST) or silhouettes (Fashion-
MNIST) of input class" as sparsity grows from 10% to 90%. As a number: for each class c of Fashion-MNIST, SNIP
scores the network (seed 0, as ``prunelab.models.create`` initializes it) on 100 training images of class c
and prunes it to each sparsity; the map of kept first-layer connections per input pixel (28x28) is correlated
(Pearson) with the mean image of every class, computed from the test set (other images than the scoring
batch). A map that draws its own class correlates most with that class's mean image; the table records, per
sparsity, the mean correlation with the own class, the mean with the other classes, and for how many of the 10
classes the own class is the best match; a random mask at the same sparsity is the control (correlation about
0).

    OMP_NUM_THREADS=1 python repro/snip_class_masks.py [--device cpu]

Writes ``repro/results/snip_class_masks/results.json`` (a few seconds on a CPU).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import prunelab
from prunelab import data, models
from prunelab.io import atomic_write_json
from prunelab.training.devices import device_arg

SPARSITIES = [0.1, 0.5, 0.9, 0.95, 0.98]  # Lee et al. 2019, Fig. 2: 10% to 90%; and beyond
PER_CLASS = 100
OUT = Path("repro/results/snip_class_masks/results.json")


def pixel_map(mask: prunelab.Mask, name: str) -> torch.Tensor:
    """Kept first-layer connections per input pixel, flattened (784)."""
    return mask[name].float().sum(0)


def correlations(maps: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of every map (rows) with every class mean image (rows): classes x classes."""
    a = maps - maps.mean(1, keepdim=True)
    b = means - means.mean(1, keepdim=True)
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


def summary(corr: torch.Tensor) -> dict:
    own = corr.diagonal()
    others = corr[~torch.eye(len(corr), dtype=torch.bool)]
    return {"own": own.mean().item(), "others": others.mean().item(),
            "own_best": int((corr.argmax(1) == torch.arange(len(corr))).sum())}


def class_means():
    """Fashion-MNIST, its training images and labels, and each class's mean test image (classes x 784)."""
    ds = data.load("fashion_mnist")
    test_x, test_y = ds.test.images.float(), ds.test.targets
    means = torch.stack([test_x[test_y == c].reshape(-1, 784).mean(0) for c in range(ds.num_classes)])
    return ds, ds.train.images, ds.train.targets, means


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    args = ap.parse_args()
    ds, train_x, train_y, means = class_means()
    classes = range(ds.num_classes)
    results = {}
    for sparsity in SPARSITIES:
        snip_maps, random_maps = [], []
        for c in classes:
            x = ds.normalize(train_x[train_y == c][:PER_CLASS].to(args.device))
            y = torch.full((len(x),), c, device=args.device)
            net = models.create("lenet_300_100", num_classes=10, input_shape=ds.input_shape, seed=0).to(args.device)
            first = next(iter(prunelab.prunable_parameters(net)))
            snip_maps.append(pixel_map(prunelab.prune(net, "snip", sparsity, batch=(x, y)), first).cpu())
            random_maps.append(pixel_map(prunelab.prune(net, "random", sparsity, seed=c), first).cpu())
        results[f"{sparsity:g}"] = {"snip": summary(correlations(torch.stack(snip_maps), means)),
                                    "random": summary(correlations(torch.stack(random_maps), means))}
        print(sparsity, results[f"{sparsity:g}"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, {"per_class": PER_CLASS, "results": results})


if __name__ == "__main__":
    main()
