"""Family 6 (no training): actual against effective sparsity of layerwise-shuffled masks, Frankle et al. 2021, App. M.

Frankle et al. (2021, App. M) ask whether shuffling a mask within each layer keeps accuracy only because it
reconnects weights the unmodified mask had left disconnected. They compare the effective parameter count
(kept weights that still receive a gradient, App. M's procedure) of the shuffled network with that of the
unmodified one: the ratio is at most 1.0026 at the highest matching sparsity and at most 1.0353 at 98.2%
(ResNet-20, VGG-16, ResNet-18, ResNet-50; their table in App. M). This prunes the papers' networks at
initialization (global scope, the networks, input shapes and Gaussian batches of ``repro/shortcut_pruning.py``)
at their highest matching sparsity and at the highest sparsity of the paper, shuffles each mask layerwise
(seed 0), and records the effective sparsity of both and their ratio of effective parameters. ResNet-50 runs
the data-free criteria only unless ``--methods`` names others (its SNIP and GraSP take about 40 CPU-minutes).

    OMP_NUM_THREADS=1 python repro/effective_sparsity_shuffled.py [--nets resnet20 vgg16 resnet18 resnet50]

Results are cached entry by entry in ``repro/results/effective_sparsity/results.json`` (resumable).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from shortcut_pruning import NETS, fresh, grid, options

import prunelab
from prunelab import ablations, analysis
from prunelab.io import atomic_write_json

# net -> (highest matching sparsity, highest sparsity considered), Frankle et al. 2021, App. M's table
SPARSITIES = {"resnet20": (grid(6), grid(18)), "vgg16": (grid(12), grid(18)), "resnet18": (grid(15), grid(18)),
              "resnet50": (grid(5), grid(13))}
METHODS = ["magnitude", "snip", "grasp", "synflow"]
DATA_FREE = ["magnitude", "synflow"]


def measure(net: str, method: str, sparsity: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
        mask = prunelab.prune(fresh(net), method, sparsity, scope="global", **options(net, method))
    shuffled = ablations.shuffle(mask, seed=0)
    model, shape = fresh(net), NETS[net][0]
    plain, mixed = analysis.effective_sparsity(model, mask, shape), analysis.effective_sparsity(model, shuffled, shape)
    return {"actual": plain["actual"], "effective": plain["effective"], "shuffled_actual": mixed["actual"],
            "shuffled_effective": mixed["effective"], "ratio": mixed["effective_kept"] / plain["effective_kept"]}


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["resnet20", "vgg16", "resnet18"], choices=list(SPARSITIES))
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="default: all four (data-free ones on resnet50)")
    ap.add_argument("--out", default="repro/results/effective_sparsity")
    args = ap.parse_args()
    path = Path(args.out) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for net in args.nets:
        entry = results.setdefault(net, {})
        methods = args.methods or (DATA_FREE if net == "resnet50" else METHODS)
        for sparsity in SPARSITIES[net]:
            for method in methods:
                key = f"{method}/{sparsity:.6f}"
                if key in entry:
                    continue
                t = time.time()
                entry[key] = measure(net, method, sparsity) | {"seconds": round(time.time() - t, 1)}
                print(f"{net} {method} at {sparsity:.1%}: ratio {entry[key]['ratio']:.4f} "
                      f"({entry[key]['seconds']} s)", flush=True)
                atomic_write_json(path, results)
    atomic_write_json(path, results)


if __name__ == "__main__":
    main()
