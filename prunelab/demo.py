"""``prunelab demo``: the main job of ``make demo`` on the offline default data (Debian's Fashion-MNIST).

LeNet-300-100 trained dense and under a random mask of ``--sparsity`` for ``--epochs`` epochs, side by side:
the shortest path from a fresh clone to a pruned network that trains.
"""

from __future__ import annotations

import sys

from prunelab.listing import print_table

__all__ = ["cmd_demo"]


def cmd_demo(args) -> int:
    """Train LeNet-300-100 dense and under a random mask for a few epochs and print both (``make demo``)."""
    import prunelab
    from prunelab import data, models
    from prunelab.experiments.hparams import dataclass_from_flags
    from prunelab.training import TrainSettings, train
    from prunelab.training.devices import check_device
    from prunelab.training.runtime import RuntimeOptions
    from prunelab.validate import check_fraction, check_int

    check_fraction(args.sparsity, "--sparsity", "[0, 1)", "the fraction of the covered weights pruned")
    check_int(args.epochs, "--epochs", 1, "training epochs of each network")
    check_device(args.device)
    runtime = dataclass_from_flags(RuntimeOptions, args)
    TrainSettings(amp=args.amp)  # a bad mode fails here, before the data is read
    ds = data.load("fashion_mnist", data_root=args.data_root)
    settings = TrainSettings(train=f"{args.epochs}ep")
    rows = [["network", "mask", "weights kept", "sparsity", "test accuracy", "time (s)"]]
    for label, sparsity in (("dense", 0.0), (f"random {args.sparsity:.0%}", args.sparsity)):
        model = models.create("lenet_300_100", num_classes=ds.num_classes, input_shape=ds.input_shape, seed=0)
        mask = prunelab.Mask.ones(model) if sparsity == 0 else prunelab.prune(model, "random", sparsity, seed=0)
        print(f"training LeNet-300-100 on Fashion-MNIST, {label}, {args.epochs} epochs", file=sys.stderr)
        res = train(model, ds, settings, seed=0, mask=mask, device=args.device, amp=args.amp, runtime=runtime,
                    progress=args.progress)
        rows.append(["lenet_300_100", label, f"{mask.num_kept:,} / {mask.num_total:,}", f"{mask.sparsity:.4f}",
                     f"{res.test_accuracy:.4f}", f"{res.wall_time:.1f}"])
    print_table(rows)
    return 0
