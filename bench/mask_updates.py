"""Cost of a mask update during training (RigL, SET), relative to one training step.

Evci et al. 2020 (§3) count a RigL update as cheap: it needs the dense gradient, which the training step
computes anyway, and a top-k per layer. This bench times, side by side in one process, one training step
(forward, backward, SGD with momentum) and one drop-and-grow mask update of :class:`prunelab.MaskUpdates`:

    masked step        a training step under a 90% ERK mask (the unit)
    rigl after_step    RigL(grow_gradient="after_step") update: an extra forward and backward pass at the
                       updated weights, then drop and grow (the default, bitwise what earlier runs did)
    rigl step          RigL(grow_gradient="step") update: the step's own dense gradient, captured before
                       the mask zeroes it, then drop and grow (Evci et al.'s Algorithm 1; JaxPruner)
    set                SET update: random regrowth (Mocanu et al. 2018), the drop-and-grow ranking alone

Each round times the contenders in an order that alternates from round to round, with the process's
CPU time; the update's cost is the time of a step followed by an update minus that of a masked step
in the same round, divided by it; the table prints its median over rounds and the interquartile range.

    python bench/mask_updates.py [--model lenet_300_100] [--rounds 200] [--threads 1] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
import torch.nn.functional as F

import prunelab
from prunelab import models
from prunelab.timing import paired, quartiles

SHAPES = {"lenet_300_100": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


def _contender(model_name: str, schedule, batch, seed: int = 0):
    torch.manual_seed(seed)
    model = models.create(model_name, num_classes=10, input_shape=SHAPES[model_name], seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    updates = prunelab.MaskUpdates(model, schedule, opt) if schedule is not None else None
    x, y = batch
    state = {"step": 0}

    def run(update: bool) -> None:
        step = state["step"] + 1
        if updates is not None and update:
            updates.before_backward(step)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        state["step"] = step
        if updates is not None and update:
            updates.after_step(step, batch=batch)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet_300_100", choices=sorted(SHAPES))
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *SHAPES[args.model], generator=g)
    batch = (x, torch.randint(0, 10, (args.batch,), generator=g))
    end = 10 ** 9  # every step is an update step, at a constant drop fraction near alpha
    schedules = {
        "masked step": prunelab.RigL(sparsity=0.9, every=1, end=end),  # run without its updates: the unit
        "rigl after_step": prunelab.RigL(sparsity=0.9, every=1, end=end, grow_gradient="after_step"),
        "rigl step": prunelab.RigL(sparsity=0.9, every=1, end=end, grow_gradient="step"),
        "set": prunelab.SET(sparsity=0.9, every=1),
    }
    runs = {name: _contender(args.model, s, batch) for name, s in schedules.items()}
    names = list(runs)
    timings = paired([partial(runs[n], update=n != "masked step") for n in names], args.rounds, warmup=5)
    times = {n: [t.cpu for t in ts] for n, ts in zip(names, timings)}
    base = times["masked step"]
    step = statistics.median(base)
    print(f"{args.model}, batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds; "
          f"masked training step {step * 1e3:.2f} ms CPU (median)")
    print(f"{'contender':<18}{'update cost / step':>20}{'IQR':>18}")
    for name in names[1:]:
        extra = [(t - b) / b for t, b in zip(times[name], base)]
        lo, med, hi = quartiles(extra)
        print(f"{name:<18}{med:>20.3f}{f'{lo:.3f} - {hi:.3f}':>18}")


if __name__ == "__main__":
    main()
