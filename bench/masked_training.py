"""Cost of training under a mask: prunelab against torch.nn.utils.prune and a forward mask-multiply.

Four copies of one network train side by side in one process on the same batch (batch 128, SGD
with momentum 0.9 and weight decay 1e-4, a random 90% mask):

    dense          no mask
    prunelab       Mask.apply: pruned weights zeroed once, gradients multiplied by the mask in place
    torch_prune    torch.nn.utils.prune.custom_from_mask: weight = weight_orig * mask before every forward
    forward_mul    OpenLTH's way: every weight multiplied in place by its mask before every forward

One round times one training step of each contender, in an order that alternates from round to
round, with the process's CPU time (``time.process_time``). The ratio of each contender to dense is
taken round by round (the two steps ran moments apart, so machine noise mostly cancels); the table
prints its median and interquartile range. Goals (issue "any model, masks that hold"): prunelab at
most 1.03x dense on LeNet-300-100 and 1.01x on ResNet-20, and below torch.nn.utils.prune on both.

    python bench/masked_training.py [--models lenet_300_100 resnet20] [--rounds 300 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn

import prunelab
from prunelab import models
from prunelab.timing import device_sync, paired, quartiles

GOALS = {"lenet_300_100": 1.03, "resnet20": 1.01}
SHAPES = {"lenet_300_100": (1, 28, 28)}


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module, _, local = name.rpartition(".")
    return model.get_submodule(module), local


def with_prunelab(model: nn.Module, mask: prunelab.Mask) -> None:
    mask.apply(model)


def with_torch_prune(model: nn.Module, mask: prunelab.Mask) -> None:
    for name, keep in mask.items():
        torch_prune.custom_from_mask(*_owner(model, name), keep)


class _MultiplyBeforeForward:
    def __init__(self, params: list[tuple[torch.Tensor, torch.Tensor]]):
        self.params = params

    @torch.no_grad()
    def __call__(self, module, args) -> None:
        for p, keep in self.params:
            p.mul_(keep)


def with_forward_multiply(model: nn.Module, mask: prunelab.Mask) -> None:
    params = dict(model.named_parameters())
    model.register_forward_pre_hook(
        _MultiplyBeforeForward([(params[n], keep.to(params[n].dtype)) for n, keep in mask.items()])
    )


CONTENDERS: dict[str, Callable[[nn.Module, prunelab.Mask], None] | None] = {
    "dense": None,
    "prunelab": with_prunelab,
    "torch_prune": with_torch_prune,
    "forward_mul": with_forward_multiply,
}


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def bench(model_name: str, rounds: int, batch: int, sparsity: float, device: torch.device) -> dict[str, float]:
    shape = SHAPES.get(model_name, (3, 32, 32))
    base = models.create(model_name, num_classes=10, input_shape=shape, seed=0)
    mask = prunelab.prune(base, "random", sparsity, seed=0)
    nets, opts = {}, {}
    for name, attach in CONTENDERS.items():
        net = copy.deepcopy(base).to(device)
        if attach is not None:
            attach(net, mask)
        nets[name] = net
        opts[name] = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    names = list(CONTENDERS)
    timings = paired([partial(step, nets[n], opts[n], x, y) for n in names], rounds, sync=device_sync(device))
    times = {n: [t.cpu for t in ts] for n, ts in zip(names, timings)}

    print(f"\n{model_name}, batch {batch}, {device}, torch threads {torch.get_num_threads()}, "
          f"mask sparsity {mask.sparsity:.3f}, {rounds} rounds (CPU time per step)")
    print(f"{'':12} {'median ms':>10} {'ratio to dense':>15} {'IQR of ratio':>16}")
    ratios = {}
    for name in names:
        per_round = [t / d for t, d in zip(times[name], times["dense"])]
        lo, med, hi = quartiles(per_round)
        ratios[name] = med
        print(f"{name:12} {1000 * statistics.median(times[name]):10.3f} {med:15.3f} {lo:8.3f}-{hi:.3f}")
    goal = GOALS.get(model_name)
    if goal is not None:
        ok = ratios["prunelab"] <= goal
        print(f"prunelab/dense {ratios['prunelab']:.3f} (goal <= {goal}: {'met' if ok else 'NOT met'}); "
              f"prunelab/torch_prune {ratios['prunelab'] / ratios['torch_prune']:.3f} "
              f"(goal < 1: {'met' if ratios['prunelab'] < ratios['torch_prune'] else 'NOT met'})")
    params = dict(nets["prunelab"].named_parameters())
    assert all(bool((params[n][~k.to(device)] == 0).all()) for n, k in mask.items()), "pruned weights moved"
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lenet_300_100", "resnet20"])
    ap.add_argument("--rounds", nargs="+", type=int, default=[300, 30], help="rounds per model (last one repeats)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for i, name in enumerate(args.models):
        rounds = args.rounds[min(i, len(args.rounds) - 1)]
        bench(name, rounds, args.batch, args.sparsity, torch.device(args.device))


if __name__ == "__main__":
    main()
