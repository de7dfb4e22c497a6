"""Family 1 (no training): first-layer masks on inverted images and with the gradient alone, Lee et al. 2019, App. A.

Lee et al. (2019, App. A, Fig. 5) prune LeNet-300-100 with SNIP on batches of one class of inverted
(Fashion-)MNIST ("dark and bright regions are swapped") and find the first-layer masks "the same as the ones on
the original" (Fig. 2); with the gradient dL/dw alone as the score (Fig. 6) the masks differ from SNIP's on the
original images, are "inconsistent with different sparsity levels", and differ between original and inverted
images "in some cases".

Here, as in ``repro/snip_class_masks.py`` (whose per-pixel map and correlations this reuses): LeNet-300-100 at
initialization (seed 0), for each class of Fashion-MNIST 100 training images of that class, original or inverted
(255 - x, then the same normalization as the original images, "inverted"; or standardized by the inverted
training set's own mean and standard deviation, "inverted_restandardized", which is exactly the negated input of
the original: the paper does not say which); scores SNIP |dL/dw * w| and gradient-only
|dL/dw| on that batch; a global mask at each sparsity; the first layer's kept connections per input pixel (28x28).
Per sparsity and class it records the Pearson correlation of the maps

- original against inverted, for each score (Fig. 5: near 1 for SNIP; Fig. 6: lower for the gradient);
- SNIP against gradient on the original images (Fig. 6: they differ);
- at 50% against at 90% sparsity, for each score (Fig. 6: the gradient's patterns change with sparsity);

and, as ``snip_class_masks.py`` does, each map's correlation with the class mean images of the test set
(own class against the others), and the first layer's density. Means over the 10 classes; a correlation with a
constant map (every connection of the first layer kept) is undefined and written as null.

    OMP_NUM_THREADS=1 python repro/snip_inverted.py [--device cpu]

Writes ``repro/results/snip_inverted/results.json`` (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from snip_class_masks import PER_CLASS, class_means, correlations, pixel_map, summary  # repro/snip_class_masks.py

import prunelab
from prunelab import models
from prunelab.io import atomic_write_json
from prunelab.scores.gradient import loss_gradients
from prunelab.training.devices import device_arg

SPARSITIES = [0.1, 0.5, 0.9, 0.95]  # Lee et al. 2019, Figs. 2, 5, 6: 10% to 90%
ACROSS = ("0.5", "0.9")  # sparsities whose maps are compared for consistency (Fig. 6)
IMAGES = ["original", "inverted", "inverted_restandardized"]
OUT = Path("repro/results/snip_inverted/results.json")


def invert(images: torch.Tensor) -> torch.Tensor:
    """Dark and bright swapped: 255 - x on uint8 images."""
    return 255 - images


def inputs(ds, raw: torch.Tensor, images: str) -> torch.Tensor:
    """The network's input for uint8 images ``raw``: original, inverted, or inverted and restandardized."""
    if images == "original":
        return ds.normalize(raw)
    if images == "inverted":
        return ds.normalize(invert(raw))
    # (255 - x)/255 standardized by its own mean 1 - m and the same std s: -((x/255 - m) / s)
    return -ds.normalize(raw)


def gradient_scores(net, batch) -> dict[str, torch.Tensor]:
    """|dL/dw|, the gradient-only score of Lee et al. 2019, App. A, Fig. 6."""
    return {n: g.abs() for n, g in loss_gradients(net, prunelab.Mask.ones(net), batch).items()}


def pairwise(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Pearson correlation of row i of ``a`` with row i of ``b``."""
    return correlations(a, b).diagonal().mean().item()


def finite(node):
    """The results with nan (a constant map: no correlation defined) written as null."""
    if isinstance(node, dict):
        return {k: finite(v) for k, v in node.items()}
    return None if isinstance(node, float) and math.isnan(node) else node


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", type=device_arg, default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    args = ap.parse_args()
    ds, train_x, train_y, means = class_means()
    classes = range(ds.num_classes)
    # maps[(score, images)][sparsity]: 10 x 784, one row per class
    maps: dict = {}
    for c in classes:
        raw = train_x[train_y == c][:PER_CLASS]
        for images in IMAGES:
            batch = (inputs(ds, raw.to(args.device), images), torch.full((len(raw),), c, device=args.device))
            net = models.create("lenet_300_100", num_classes=10, input_shape=ds.input_shape, seed=0).to(args.device)
            first = next(iter(prunelab.prunable_parameters(net)))
            for score, scores in (("snip", prunelab.score(net, "snip", batch=batch)),
                                  ("gradient", gradient_scores(net, batch))):
                for s in SPARSITIES:
                    mask = prunelab.remove(scores, prunelab.Mask.ones(net), sparsity=s)
                    maps.setdefault((score, images), {}).setdefault(f"{s:g}", []).append(pixel_map(mask, first).cpu())
    maps = {k: {s: torch.stack(v) for s, v in per.items()} for k, per in maps.items()}
    results: dict = {}
    for s in (f"{s:g}" for s in SPARSITIES):
        results[s] = {
            "first_layer_density": {f"{score}/{images}": per[s].mean().item() / 300
                                    for (score, images), per in maps.items()},
            "class_match": {f"{score}/{images}": summary(correlations(per[s], means))
                            for (score, images), per in maps.items()},
            "original_vs": {images: {score: pairwise(maps[(score, "original")][s], maps[(score, images)][s])
                                     for score in ("snip", "gradient")} for images in IMAGES[1:]},
            "snip_vs_gradient": {images: pairwise(maps[("snip", images)][s], maps[("gradient", images)][s])
                                 for images in IMAGES},
        }
        print(s, results[s], flush=True)
    across = {images: {score: pairwise(maps[(score, images)][ACROSS[0]], maps[(score, images)][ACROSS[1]])
                       for score in ("snip", "gradient")} for images in IMAGES}
    print("across sparsities", across)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, finite({"per_class": PER_CLASS, "seed": 0, "results": results,
                            "across_sparsities": {"between": list(ACROSS), **across}}))


if __name__ == "__main__":
    main()
