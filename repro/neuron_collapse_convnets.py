"""Family 6 (no training): neuron collapse of the papers' convnets at their highest matching sparsity,
Frankle et al. 2021, §5 ("SynFlow", Fig. 5).

Frankle et al. (2021, §5) count the neurons (convolutional channels) whose incoming weights are all
pruned: at the highest matching sparsities (footnote 2: 73.8% ResNet-20, 93.1% VGG-16, 96.5% ResNet-18,
67.2% ResNet-50) SynFlow prunes 31%, 52%, 69% and 29% of them, SNIP 5%, 11%, 32% and 7%, GraSP 1%, 6%,
14% and 1%, magnitude 0%, 0%, <1% and 0%; shuffling SynFlow's mask layerwise brings it down to 1%, 0%,
3.5% and 13%. This prunes each network at initialization (global scope, the networks and input shapes
of ``repro/shortcut_pruning.py``, whose Gaussian batches stand in for the unavailable data) and records
the fraction of neurons with incoming sparsity >= s for s in 0, 0.05, ..., 1, also for SynFlow's mask
shuffled within each layer. ResNet-50 is done for the data-free criteria only by default: its SNIP and
GraSP on 1000 Gaussian inputs take about 40 minutes of one CPU thread (``--methods`` adds them).

    OMP_NUM_THREADS=1 python repro/neuron_collapse_convnets.py [--nets resnet20 vgg16 resnet18 resnet50]

Results are cached entry by entry in ``repro/results/neuron_collapse/results.json``; the figure
``<net>_neuron_collapse.png`` follows Frankle et al. 2021, Fig. 5.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import shortcut_pruning
import torch
from shortcut_pruning import METHODS, fresh, grid, options

import prunelab
from prunelab import ablations, analysis
from prunelab.io import atomic_write_json
from prunelab.reports import plots
from prunelab.training.devices import device_arg

MATCHING = {"resnet20": grid(6), "vgg16": grid(12), "resnet18": grid(15), "resnet50": grid(5)}
DATA_FREE = ["random", "magnitude", "synflow"]
THRESHOLDS = [i / 20 for i in range(21)]


def methods_for(net: str, chosen: list[str] | None) -> list[str]:
    if chosen:
        return chosen
    return DATA_FREE if net == "resnet50" else METHODS


def collapse(mask: prunelab.Mask) -> dict:
    res = analysis.neuron_collapse(mask, thresholds=THRESHOLDS)
    return {"fraction": res["fraction"], "dead": res["fraction"][-1], "neurons": res["neurons"],
            "sparsity": mask.sparsity}


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(MATCHING), choices=list(MATCHING))
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="default: all five (data-free ones on resnet50)")
    ap.add_argument("--out", default="repro/results/neuron_collapse")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu, where the stored results were computed)")
    args = ap.parse_args()
    shortcut_pruning.DEVICE = args.device  # fresh() and options() build the networks and batches there
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for net in args.nets:
        entry = results.setdefault(net, {"sparsity_target": MATCHING[net]})
        for method in methods_for(net, args.methods):
            if method in entry:
                continue
            t = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
                mask = prunelab.prune(fresh(net), method, MATCHING[net], scope="global", **options(net, method))
            entry[method] = collapse(mask) | {"seconds": round(time.time() - t, 1)}
            if method == "synflow":
                entry["synflow shuffled"] = collapse(ablations.shuffle(mask, seed=0))
            print(f"{net} {method}: {entry[method]['dead']:.1%} of {entry[method]['neurons']} neurons dead "
                  f"({entry[method]['seconds']} s)", flush=True)
            atomic_write_json(path, results)
        curves = {m: plots.Curve(THRESHOLDS, e["fraction"]) for m, e in entry.items() if isinstance(e, dict)}
        plots.save(plots.neuron_collapse(curves, title=f"{net} at {MATCHING[net]:.1%} sparsity, at initialization"),
                   out / f"{net}_neuron_collapse.png")
    atomic_write_json(path, results)


if __name__ == "__main__":
    main()
