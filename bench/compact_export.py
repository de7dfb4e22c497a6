"""What a compact export buys at inference: dense network vs ``prunelab.compact`` export, side by side in one process.

    python bench/compact_export.py                 # CPU, 1 thread (the CLI's rule), every case
    python bench/compact_export.py --threads 2 --repeats 100 --only lenet5_l1_channel_50

Each case prunes a network at initialization (the structure, not the accuracy, sets the speed), exports it with
:func:`prunelab.compact.compact` (dead channels out, each linear layer in its fastest format at batch 128), and
times the dense network and the export alternately at batch 1 and 128: median wall time with quartiles, median
CPU time, and the speed-up (dense / export, from the wall medians). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import prunelab  # noqa: E402
from prunelab import models  # noqa: E402
from prunelab.compact import compact, latency  # noqa: E402

CASES = {  # name -> (model, input shape, criterion, sparsity, options)
    "lenet_300_100_magnitude_50": ("lenet_300_100", (1, 28, 28), "magnitude", 0.5, {}),
    "lenet_300_100_magnitude_2:4": ("lenet_300_100", (1, 28, 28), "magnitude", 0.5, {"pattern": "2:4"}),
    "lenet_300_100_magnitude_90": ("lenet_300_100", (1, 28, 28), "magnitude", 0.9, {}),
    "lenet_300_100_magnitude_98": ("lenet_300_100", (1, 28, 28), "magnitude", 0.98, {}),
    "lenet5_l1_channel_50": ("lenet5", (1, 28, 28), "l1_channel", 0.5, {}),
    "resnet20_l1_channel_50": ("resnet20", (3, 32, 32), "l1_channel", 0.5, {}),
    "vit_tiny_magnitude_90": ("vit_tiny", (1, 28, 28), "magnitude", 0.9, {}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--only", nargs="*", default=None, help=f"cases (of: {', '.join(CASES)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or []) - set(CASES))
    if unknown:
        print(f"compact_export: unknown case(s) {unknown}; the cases are: {', '.join(CASES)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"### dense vs compact export, CPU, {args.threads} thread(s), torch {torch.__version__}, "
          f"{args.repeats} alternating calls\n")
    print("| case | params dense -> stored | channels removed | linear formats | batch | dense ms [q1, q3] (CPU) "
          "| export ms [q1, q3] (CPU) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (model_name, shape, method, sparsity, options) in CASES.items():
        if args.only is not None and name not in args.only:
            continue
        model = models.create(model_name, num_classes=10, input_shape=shape, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # criteria's notes (a kept last channel) are not what is measured
            mask = prunelab.prune(model, method, sparsity, **options)
            net, report = compact(model, mask, shape, repeats=args.repeats)
        prunelab.remove_mask(model)
        times = latency({"dense": model.eval(), "export": net}, shape, (1, 128), args.repeats)
        removed = sum(b - a for b, a in report.channels.values())
        formats = ", ".join(f"{f} x{list(report.formats().values()).count(f)}"
                            for f in dict.fromkeys(report.formats().values()))
        for b, t in times.items():
            d, e = t["dense"], t["export"]
            print(f"| {name} | {report.params_before:,} -> {report.params_after:,} | {removed} | {formats} | {b} | "
                  f"{d.median * 1e3:.3f} [{d.q1 * 1e3:.3f}, {d.q3 * 1e3:.3f}] ({d.cpu * 1e3:.3f}) | "
                  f"{e.median * 1e3:.3f} [{e.q1 * 1e3:.3f}, {e.q3 * 1e3:.3f}] ({e.cpu * 1e3:.3f}) | "
                  f"{d.median / e.median:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
