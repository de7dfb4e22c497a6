"""Family 6 (no training): how the criteria prune the 1x1 shortcut convolutions,
Frankle et al. 2021, App. J and Fig. 15.

Frankle et al. (2021, App. J, "Skip connections"; also §5 and its footnote 6) report that SynFlow prunes
the 1x1 convolutions on the downsampling skip connections (``shortcut`` on ResNet-20, ``downsample``
on ResNet-18/50) much more heavily than the rest of the network, that the other criteria prune them to
similar or lower sparsities than adjacent layers, and that on ResNet-50 SynFlow empties three of the
four downsample layers. This prunes each network at initialization (global scope, no training) with
random, magnitude, SNIP, GraSP and SynFlow, and records:

- the density of every prunable layer, in the model's parameter order (as Fig. 15 orders them: each
  shortcut after the block it belongs to);
- for each shortcut layer: its density, the densities of its *adjacent layers* and their unweighted
  mean, and whether it is fully pruned. The adjacent layers of a shortcut are defined here as the
  convolutions of the main branch of the same residual block (conv1, conv2 of a basic block; conv1..3
  of a bottleneck): the layers the shortcut runs parallel to, from the block's input to its output.

Networks and sparsities follow Frankle et al. 2021: ResNet-20 on CIFAR-10 (3x32x32, 10 classes), torchvision's
ResNet-18 on TinyImageNet (3x64x64, 200 classes), ResNet-50 on ImageNet (3x224x224, 1000 classes),
at the grid sparsities 1 - 0.8^k closest to Frankle et al. 2021's highest matching sparsity (footnote 2: 73.8%, 96.5%
and 67.2%; for ResNet-18 also 79.0%, where SynFlow still reaches full accuracy, §4), plus 93.1%
(k = 12) on every network as a heavier point. ``--sparsities NET:S,S`` replaces a network's list.

SNIP and GraSP need a batch; no CIFAR-10, TinyImageNet or ImageNet is available offline here, so they
score class-balanced Gaussian inputs instead: ceil(100 / classes) per class (100 inputs on ResNet-20,
one per class on ResNet-18 and ResNet-50, i.e. 200 and 1000 inputs, as Wang et al. 2020's ImageNet
configuration; Frankle et al. 2021, App. B.2 and C.2 use ten real examples per class),
fed in chunks (train-mode BatchNorm
normalizes each chunk with its own statistics). One-shot criteria are scored once per network and
thresholded at each sparsity (``prunelab.remove``, what ``prunelab.prune`` does in its single
iteration); SynFlow runs ``prunelab.prune`` with its 100 iterations. Results are cached entry by
entry in ``results.json`` (resumable); the figure ``<net>_shortcuts.png`` shows the per-layer density,
one line per criterion, with the shortcut layers shaded.

    OMP_NUM_THREADS=1 python repro/shortcut_pruning.py [--nets resnet20 resnet18 resnet50] \
        [--sparsities resnet50:0.672,0.931] [--out repro/results/shortcuts]

The whole run takes about 50 minutes on one CPU thread, mostly ResNet-50's GraSP (~35 min) and SNIP
(~8 min) on 1000 inputs and SynFlow (~3 min per sparsity); a rerun skips the cached entries.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch

import prunelab
from prunelab import models
from prunelab.io import atomic_write_json
from prunelab.training.devices import device_arg

METHODS = ["random", "magnitude", "snip", "grasp", "synflow"]
SHORTCUT_WORDS = ("shortcut", "downsample")
MIN_BATCH = 100


def grid(k: int) -> float:
    """The sparsity 1 - 0.8^k of the papers' grid."""
    return 1 - 0.8**k


# net -> input shape, classes, default sparsities, chunk size of the Gaussian batch (memory bound)
NETS = {
    "resnet20": ((3, 32, 32), 10, [grid(6), grid(12)], 100),
    "resnet18": ((3, 64, 64), 200, [grid(7), grid(12), grid(15)], 50),
    "resnet50": ((3, 224, 224), 1000, [grid(5), grid(12)], 10),
    "vgg16": ((3, 32, 32), 10, [], 100),  # no shortcuts: for repro/neuron_collapse_convnets.py
}
WITH_SHORTCUTS = ["resnet20", "resnet18", "resnet50"]


DEVICE = torch.device("cpu")  # --device: where the networks are built and scored


def fresh(net: str):
    shape, classes, _, _ = NETS[net]
    return models.create(net, num_classes=classes, input_shape=shape, seed=0).to(DEVICE)


def batch(net: str, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Class-balanced Gaussian inputs, ceil(MIN_BATCH / classes) per class, as a list of chunks."""
    shape, classes, _, chunk = NETS[net]
    n = classes * math.ceil(MIN_BATCH / classes)
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(n) % classes
    return [(torch.randn(len(y), *shape, generator=g).to(DEVICE), y.to(DEVICE)) for y in targets.split(chunk)]


def options(net: str, method: str) -> dict:
    meta = prunelab.get_method(method)
    out = {}
    if meta.needs_data:
        out["batch"] = batch(net)
    if meta.needs_input_shape:
        out["input_shape"] = NETS[net][0]
    return out


def rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def is_shortcut(name: str) -> bool:
    return any(word in name.split(".") for word in SHORTCUT_WORDS)


def block_of(name: str) -> str:
    """``layer2.0`` for ``layer2.0.downsample.0.weight``: the module path before the shortcut word."""
    parts = name.split(".")
    i = next(i for i, p in enumerate(parts) if p in SHORTCUT_WORDS)
    return ".".join(parts[:i])


def shortcut_stats(counts: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """For each shortcut layer (from ``{layer: (kept, total)}``): its density and kept count, the
    densities of its block's main-branch convolutions and their unweighted mean."""
    layers = {n: kept / total for n, (kept, total) in counts.items()}
    out = {}
    for name, density in layers.items():
        if not is_shortcut(name):
            continue
        block = block_of(name)
        adjacent = {n: d for n, d in layers.items() if n.startswith(block + ".") and not is_shortcut(n)}
        mean = sum(adjacent.values()) / len(adjacent)
        out[name] = {
            "density": density, "kept": counts[name][0], "total": counts[name][1], "block": block,
            "adjacent": adjacent, "adjacent_mean": mean, "ratio": density / mean if mean > 0 else None,
            "fully_pruned": counts[name][0] == 0,
        }
    return out


def entry_for(mask: prunelab.Mask, seconds: float) -> dict:
    layers = mask.layer_density()
    shortcuts = shortcut_stats(mask.layer_counts())
    return {
        "sparsity": mask.sparsity, "seconds": round(seconds, 1), "layers": layers, "shortcuts": shortcuts,
        "num_fully_pruned": sum(s["fully_pruned"] for s in shortcuts.values()),
        "num_shortcuts": len(shortcuts),
    }


def parse_sparsities(items: list[str]) -> dict[str, list[float]]:
    out = {}
    for item in items:
        net, _, values = item.partition(":")
        if net not in NETS or not values:
            raise SystemExit(f"--sparsities wants NET:S[,S...] with NET in {sorted(NETS)}, got {item!r}")
        out[net] = [float(v) for v in values.split(",")]
    return out


def fmt(density: float) -> str:
    """Three decimals; a nearly empty layer is not rounded to 0.000, which is kept for fully pruned ones."""
    return f"{density:.3f}" if density == 0 or density >= 0.001 else f"{density:.0e}"


def summary(net: str, key: str, e: dict) -> str:
    per = " ".join(
        f"{s['block']}:{fmt(s['density'])}/{s['adjacent_mean']:.3f}" for s in e["shortcuts"].values()
    )
    return (f"{net} {key}: shortcut/adjacent density {per}; fully pruned {e['num_fully_pruned']}/"
            f"{e['num_shortcuts']} ({e['seconds']:.0f} s)")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=WITH_SHORTCUTS, choices=WITH_SHORTCUTS)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--sparsities", nargs="+", default=[], metavar="NET:S,S",
                    help="replace a network's sparsities, e.g. resnet50:0.672,0.931")
    ap.add_argument("--out", default="repro/results/shortcuts")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu, where the stored results were computed)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    chosen = {net: NETS[net][2] for net in NETS} | parse_sparsities(args.sparsities)
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}

    def save():
        atomic_write_json(path, results)

    for net in args.nets:
        shape, classes, _, chunk = NETS[net]
        entry = results.setdefault(net, {})
        entry["setup"] = {
            "input_shape": list(shape), "num_classes": classes, "seed": 0, "scope": "global",
            "data": f"Gaussian, {math.ceil(MIN_BATCH / classes)} per class, chunks of {chunk}",
            # the JSON file sorts its keys: this keeps the prunable layers' order in the model
            "layer_order": list(prunelab.Mask.ones(fresh(net))),
        }
        for method in args.methods:
            meta = prunelab.get_method(method)
            todo = [s for s in chosen[net] if f"{method}/{s:.4f}" not in entry]
            scores, score_time = None, 0.0
            for s in todo:
                key = f"{method}/{s:.4f}"
                t = time.time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
                    if meta.default_iterations == 1:
                        if scores is None:  # one-shot: the scores do not depend on the sparsity
                            scores = prunelab.score(fresh(net), method, **options(net, method))
                            score_time = time.time() - t
                            t = time.time()
                        mask = prunelab.remove(scores, sparsity=s, prune_highest=meta.prune_highest)
                        seconds = time.time() - t + score_time  # the shared scoring counted in each
                    else:
                        mask = prunelab.prune(fresh(net), method, s, scope="global", **options(net, method))
                        seconds = time.time() - t
                entry[key] = entry_for(mask, seconds)
                print(summary(net, key, entry[key]), flush=True)
                save()
        save()
    table(results)
    figures(results, out)


def in_order(results: dict) -> list[str]:
    return sorted(results, key=lambda net: list(NETS).index(net) if net in NETS else len(NETS))


def table(results: dict) -> None:
    print(f"\n{'net':9} {'sparsity':>8} {'method':9} {'shortcut density (adjacent mean)':60} {'empty':>5}")
    for net in in_order(results):
        entry = results[net]
        order = entry["setup"]["layer_order"]
        keys = sorted((k for k in entry if "/" in k), key=lambda k: (k.split("/")[1], rank(k.split("/")[0])))
        for key in keys:
            method, s = key.split("/")
            e = entry[key]
            shortcuts = sorted(e["shortcuts"].items(), key=lambda item: order.index(item[0]))
            per = " ".join(f"{fmt(v['density'])}({v['adjacent_mean']:.3f})" for _, v in shortcuts)
            print(f"{net:9} {float(s):8.1%} {method:9} {per:60} {e['num_fully_pruned']}/{e['num_shortcuts']}")


def figures(results: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    from prunelab.reports import plots

    for net in in_order(results):
        entry = results[net]
        by_sparsity: dict[str, dict[str, dict]] = {}
        for key, e in entry.items():
            if "/" in key:
                method, s = key.split("/")
                by_sparsity.setdefault(s, {})[method] = e
        if not by_sparsity:
            continue
        names = entry["setup"]["layer_order"]
        marks = [i for i, n in enumerate(names) if is_shortcut(n)]
        fig = Figure(figsize=(max(6.0, 0.17 * len(names) + 2), 2.8 * len(by_sparsity) + 1.0), layout="constrained")
        axes = fig.subplots(len(by_sparsity), 1, squeeze=False)[:, 0]
        for ax, s in zip(axes, sorted(by_sparsity)):
            per_method = by_sparsity[s]
            palette = plots.colors(list(per_method))
            for i in marks:
                ax.axvspan(i - 0.5, i + 0.5, color="#ffe08a", zorder=0)
            for method in sorted(per_method, key=rank):
                dens = [per_method[method]["layers"].get(n, float("nan")) for n in names]
                ax.plot(range(len(names)), dens, marker=".", markersize=4, linewidth=1.2, color=palette[method],
                        label=method)
                ax.plot(marks, [dens[i] for i in marks], "o", markersize=6, color=palette[method])
            ax.set_title(f"sparsity {float(s):.1%}", fontsize=9)
            ax.set_ylabel("layer density", fontsize=8)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(-0.5, len(names) - 0.5)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=90, fontsize=6)
            for i in marks:
                ax.get_xticklabels()[i].set_color("#b03000")
            ax.grid(True, axis="y", color="#dddddd", linewidth=0.6)
        handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8,
                   frameon=False)
        fig.suptitle(f"{net}: per-layer density at initialization (shaded: 1x1 shortcut convolutions)", fontsize=10)
        plots.save(fig, out / f"{net}_shortcuts.png")


if __name__ == "__main__":
    main()
