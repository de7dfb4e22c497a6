"""Cost of every registered pruning criterion relative to SNIP, side by side in one process.

Each criterion prunes the same network to the same sparsity as :func:`prunelab.prune` runs it by default (its own
number of iterations: 100 for SynFlow, 60 for FORCE, ...), from a batch of ten examples per class where it needs
data (Frankle et al. 2021, App. B.2). The criteria are read from the registry, so a newly registered one appears
without editing this script. Every repetition times all criteria once, in an order rotated and reversed from one
repetition to the next (``prunelab.timing.paired``), and the ratio to SNIP is taken within each repetition (SNIP
timed in the same round); the table gives the median ratio over the repetitions and its spread (lowest and highest),
for CPU time (``time.process_time``, all threads of this process) and wall time. A criterion that refuses a network
(PHEW on a network with residual branches) says why instead of a number.

    python bench/criteria_cost.py [--models lenet_300_100,lenet5,resnet20] [--reps 3] [--sparsity 0.98]
                                  [--methods force,prospr,...] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

import prunelab
from prunelab import models
from prunelab.timing import device_sync, paired
from prunelab.training.devices import device_arg

SHAPES = {"lenet_300_100": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def pruner(model, method: str, sparsity: float, batch, shape):
    m = prunelab.get_method(method)
    kwargs = {}
    if m.needs_data:
        kwargs["batch"] = batch
    if m.needs_input_shape:
        kwargs["input_shape"] = shape
    return lambda: prunelab.prune(model, method, sparsity, **kwargs)


def bench_model(name: str, methods: list[str], reps: int, sparsity: float, device: torch.device) -> None:
    shape = SHAPES[name]
    model = models.create(name, num_classes=10, input_shape=shape, seed=0).to(device)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(100, *shape, generator=g).to(device), (torch.arange(100) % 10).to(device))
    fns, refused = {}, {}
    for method in methods:
        fn = pruner(model, method, sparsity, batch, shape)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()  # warm-up, and whether it takes this network at all
            fns[method] = fn
        except ValueError as e:
            refused[method] = str(e).split(";")[0][:90]
    order = list(fns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = dict(zip(order, paired(list(fns.values()), reps, warmup=0, sync=device_sync(device))))
    snip = times["snip"]
    print(f"\n{name} (input {shape}), sparsity {sparsity:g}, {reps} repetitions; SNIP: CPU "
          f"{statistics.median(c for c, _ in snip):.3f} s, wall {statistics.median(w for _, w in snip):.3f} s "
          "(medians)")
    print(f"{'criterion':18s} {'its':>4s}  {'CPU / SNIP (min-max)':>24s}  {'wall / SNIP (min-max)':>24s}  "
          f"{'median CPU s':>12s}")
    for method in order:
        cpu = [c / s[0] for (c, _), s in zip(times[method], snip)]
        wall = [w / s[1] for (_, w), s in zip(times[method], snip)]
        its = prunelab.get_method(method).default_iterations
        print(f"{method:18s} {its:4d}  {statistics.median(cpu):8.2f} ({min(cpu):6.2f}-{max(cpu):6.2f})  "
              f"{statistics.median(wall):8.2f} ({min(wall):6.2f}-{max(wall):6.2f})  "
              f"{statistics.median(c for c, _ in times[method]):12.3f}", flush=True)
    for method, why in refused.items():
        print(f"{method:18s}  n/a: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet_300_100,lenet5", help="comma-separated; also resnet20")
    parser.add_argument("--methods", default=None, help="comma-separated criteria (default: every registered one)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.98)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    parser.add_argument("--device", type=device_arg, default=torch.device("cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = list(prunelab.methods()) if args.methods is None else args.methods.split(",")
    if "snip" not in methods:
        methods = ["snip", *methods]
    for name in args.models.split(","):
        bench_model(name, methods, args.reps, args.sparsity, args.device)


if __name__ == "__main__":
    main()
