"""Layer collapse on VGG-16 at CIFAR shape (Tanaka et al. 2020, §3 and Figure 1; Frankle et al. 2021, App. D).

1. SynFlow with 100 iterations at compression 10^3 (sparsity 0.999): does every layer keep a weight?
   (Issue 3's acceptance check; too slow for the test suite on a shared 2-core CPU.)
2. For one-shot, global SNIP, GraSP and magnitude at initialization (and one-shot SynFlow for
   contrast): the compression ``rho = weights / kept`` at which the first layer loses its last
   weight. With fixed scores this is exact: a layer empties when the pruning order reaches its
   last-ranked weight, so one full ranking gives the first collapse for every compression at once.
   The value is then checked with ``prunelab.remove`` just before and at that count.

SNIP and GraSP see a random batch of CIFAR shape (100 N(0, 1) images, ten per class): the CIFAR-10
files are not available offline here, so the numbers are for that batch, not for real images.

    python bench/layer_collapse.py [--model vgg16] [--skip-synflow]
"""

from __future__ import annotations

import argparse
import time

import torch

import prunelab
from prunelab import models


def first_collapse(scores: dict[str, torch.Tensor], highest: bool) -> tuple[int, str]:
    """(number of pruned weights at which the first tensor becomes empty, that tensor's name)."""
    names = list(scores)
    key = torch.cat([scores[n].detach().reshape(-1).double() for n in names])
    if highest:
        key = -key
    order = torch.sort(key, stable=True).indices  # pruning order: key, then position
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    best, where, start = None, None, 0
    for n in names:
        size = scores[n].numel()
        k = int(rank[start : start + size].max()) + 1  # pruned count when its last weight goes
        start += size
        if best is None or k < best:
            best, where = k, n
    return best, where


def check(scores, k: int, total: int, highest: bool, name: str) -> None:
    at = prunelab.remove(scores, sparsity=k / total, prune_highest=highest)
    before = prunelab.remove(scores, sparsity=(k - 1) / total, prune_highest=highest)
    assert int(at[name].sum()) == 0, "first collapse not reproduced by remove()"
    assert all(int(before[n].sum()) > 0 for n in before), "collapse happens earlier than computed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--skip-synflow", action="store_true")
    args = ap.parse_args()
    shape = (3, 32, 32)
    model = models.create(args.model, num_classes=10, input_shape=shape, seed=0)
    total = sum(p.numel() for p in prunelab.prunable_parameters(model).values())
    layers = len(prunelab.prunable_parameters(model))
    print(f"{args.model}: {total} prunable weights in {layers} tensors; max compression N/L = {total / layers:.3g}")

    if not args.skip_synflow:
        t = time.perf_counter()
        mask = prunelab.prune(model, "synflow", 0.999, input_shape=shape, iterations=100)
        kept = {n: k for n, (k, _) in mask.layer_counts().items()}
        worst = min(kept, key=kept.get)
        print(
            f"synflow, 100 iterations, compression 1e3: kept {mask.num_kept} of {mask.num_total}; fewest kept "
            f"{kept[worst]} in {worst}; every layer non-empty: {all(v > 0 for v in kept.values())} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        print("  per layer kept: " + ", ".join(f"{n}={k}" for n, k in kept.items()), flush=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, *shape, generator=g)
    y = torch.arange(100) % 10
    for method in ("magnitude", "snip", "grasp", "synflow"):
        s = prunelab.score(model, method, batch=(x, y), input_shape=shape)
        highest = prunelab.methods()[method].prune_highest
        k, name = first_collapse(s, highest)
        check(s, k, total, highest, name)
        rho = total / (total - k)
        note = " (one-shot)" if method == "synflow" else ""
        print(
            f"{method:9s}{note:11s} first empties {name} at compression {rho:.4g} (sparsity {k / total:.6f}, "
            f"{total - k} weights kept)",
            flush=True,
        )


if __name__ == "__main__":
    main()
