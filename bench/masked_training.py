"""Cost of training under a mask: ResNet-20, batch 128, CIFAR-shaped input, on this machine's CPU.

Dense and masked steps are timed in alternating blocks in one process (so both see the same machine
state) and the ratio of the median step times is printed. Goal (issue 2): at most 1.03.

    python bench/masked_training.py [--steps 20] [--blocks 6] [--sparsity 0.9] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import prunelab
from prunelab import models


def timed_steps(model, optimizer, x, y, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    device = torch.device(args.device)
    dense = models.create(args.model, num_classes=10, input_shape=(3, 32, 32), seed=0).to(device)
    masked = models.create(args.model, num_classes=10, input_shape=(3, 32, 32), seed=0).to(device)
    mask = prunelab.prune(masked, "random", args.sparsity, seed=0)
    mask.apply(masked)
    opts = {
        name: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for name, m in (("dense", dense), ("masked", masked))
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    timed_steps(dense, opts["dense"], x, y, 3)  # warm-up
    timed_steps(masked, opts["masked"], x, y, 3)
    times = {"dense": [], "masked": []}
    for block in range(args.blocks):
        order = ("dense", "masked") if block % 2 == 0 else ("masked", "dense")
        for name in order:
            model = dense if name == "dense" else masked
            times[name] += timed_steps(model, opts[name], x, y, args.steps)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["masked"] / med["dense"]
    print(f"{args.model}, batch {args.batch}, {device}, torch threads {torch.get_num_threads()}, "
          f"mask sparsity {mask.sparsity:.3f}")
    print(f"{'':8} {'median step (ms)':>18} {'steps':>6}")
    for k in ("dense", "masked"):
        print(f"{k:8} {1000 * med[k]:18.1f} {len(times[k]):6d}")
    print(f"ratio masked/dense: {ratio:.3f}  (goal <= 1.03: {'met' if ratio <= 1.03 else 'NOT met'})")
    params = dict(masked.named_parameters())
    assert all(bool((params[n][~k] == 0).all()) for n, k in mask.items()), "pruned weights moved"


if __name__ == "__main__":
    main()
