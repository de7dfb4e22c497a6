"""Family 5 (no training): layer collapse and conservation of synaptic saliency, Tanaka et al. 2020, Figs. 1-4.

For each network at its CIFAR input shape and each criterion at initialization: the critical
compression (largest compression before a layer is emptied) against the max compression N/L, the
per-layer density at several compressions, and for SynFlow the neuron-wise and layer-wise
conservation. Also:

- ``layer_scores/<criterion>``: each layer's size and total score at initialization, for the
  inverse relation between layer size and average score (Tanaka et al. 2020, Thm. 2, Fig. 4);
- ``critical/<variant>`` for the variants of ``VARIANTS`` on ``--variant-nets``: one-shot SynFlow
  against its 100 iterations (iteration is what avoids layer collapse, Tanaka et al. 2020, §5-6) and
  SNIP one-shot against iterative SNIP over 100 iterations (Tanaka et al. 2020, Fig. 7), both SNIP
  variants on a smaller batch of 10 Gaussian inputs (one per class) so that the 100 iterations stay
  within CPU minutes.

Results are cached entry by entry in ``results.json`` (resumable), figures are PNGs.

    python repro/layer_collapse.py [--nets vgg16 vgg19 resnet20] [--variant-nets vgg16 resnet20]
        [--out repro/results/layer_collapse]

SNIP and GraSP need a batch; no CIFAR-10 is available offline here, so they score a class-balanced
batch of 100 Gaussian inputs (10 per class) — stated with the results.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

import prunelab
from prunelab import analysis, models
from prunelab.io import atomic_write_json
from prunelab.training.devices import device_arg

METHODS = ["random", "magnitude", "snip", "grasp", "synflow"]
COMPRESSIONS = [10.0, 100.0, 1000.0]
SHAPE = (3, 32, 32)
DEVICE = torch.device("cpu")  # --device: where the networks are built and scored
# Criteria whose per-layer total score is recorded (Tanaka et al. 2020, Fig. 4: synaptic saliency scores).
SCORED = ["snip", "grasp", "synflow"]
# name -> (criterion, iterations, batch size): the iteration ablations of Tanaka et al. 2020, §5-6 and Fig. 7.
VARIANTS = {
    "synflow_1it": ("synflow", 1, 100),
    "snip_b10": ("snip", 1, 10),
    "iterative_snip_b10": ("iterative_snip", 100, 10),
}


def batch(seed: int = 0, size: int = 100):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, *SHAPE, generator=g).to(DEVICE), (torch.arange(size) % 10).to(DEVICE)


def fresh(net: str):
    return models.create(net, num_classes=10, input_shape=SHAPE, seed=0).to(DEVICE)


def options(method: str, size: int = 100) -> dict:
    meta = prunelab.get_method(method)
    out = {}
    if meta.needs_data:
        out["batch"] = batch(size=size)
    if meta.needs_input_shape:
        out["input_shape"] = SHAPE
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["vgg16", "vgg19", "resnet20"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--variant-nets", nargs="+", default=["vgg16", "resnet20"],
                    help="networks on which the iteration variants (VARIANTS) run")
    ap.add_argument("--out", default="repro/results/layer_collapse")
    ap.add_argument("--device", type=device_arg, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu, where the stored results were computed)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}

    def save():
        atomic_write_json(path, results)

    for net in args.nets:
        entry = results.setdefault(net, {})
        entry["max_compression"] = analysis.max_compression(prunelab.Mask.ones(fresh(net)))
        for method in args.methods:
            key = f"critical/{method}"
            if key not in entry:
                t = time.time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
                    entry[key] = analysis.critical_compression(fresh(net), method, tol=0.05, **options(method))
                print(f"{net} {method}: critical compression {entry[key]:.4g} ({time.time() - t:.0f} s)", flush=True)
                save()
            for c in COMPRESSIONS:
                key = f"layers/{method}/{c:g}"
                if key not in entry:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
                        mask = prunelab.prune(fresh(net), method, 1 - 1 / c, **options(method))
                    entry[key] = mask.layer_density()
                    save()
        for method in SCORED:
            key = f"layer_scores/{method}"
            if key not in entry:
                scores = prunelab.score(fresh(net), method, **options(method))
                entry[key] = {n: [t.numel(), float(t.double().sum()), float(t.double().abs().sum())]
                              for n, t in scores.items()}
                save()
        for name, (method, iterations, size) in VARIANTS.items():
            key = f"critical/{name}"
            if net in args.variant_nets and key not in entry:
                t = time.time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", prunelab.LayerCollapseWarning)
                    entry[key] = analysis.critical_compression(fresh(net), method, tol=0.05, iterations=iterations,
                                                               **options(method, size))
                print(f"{net} {name}: critical compression {entry[key]:.4g} ({time.time() - t:.0f} s)", flush=True)
                save()
        if "conservation" not in entry:
            model = fresh(net)
            scores = prunelab.score(model, "synflow", input_shape=SHAPE)
            cons = analysis.conservation(model, scores)
            entry["conservation"] = {
                "exact": cons["exact"], "caveats": cons.get("caveats"),
                "max_relative_error": cons["max_relative_error"],
                "neurons": {p: [v["incoming"].tolist(), v["outgoing"].tolist()] for p, v in cons["neurons"].items()},
                "layers": {n: [int(cons["layer_size"][n]), float(cons["layer_total"][n])] for n in cons["layer_total"]},
            }
            save()
    figures(results, out)


def figures(results: dict, out: Path) -> None:
    from prunelab.reports import plots

    for net, entry in results.items():
        panels = {}
        for key, per in entry.items():
            if key.startswith("layers/"):
                _, method, c = key.split("/")
                panels.setdefault(method, []).append((float(c), per))
        if panels:
            plots.save(plots.layer_density_vs_compression(panels, title=f"{net}: per-layer density"),
                       out / f"{net}_layer_density.png")
        cons = entry.get("conservation")
        if cons:
            kind = "exact" if cons["exact"] else "approximate"
            fig = plots.conservation({k: tuple(v) for k, v in cons["neurons"].items()},
                                     {k: tuple(v) for k, v in cons["layers"].items()},
                                     title=f"{net}: SynFlow conservation ({kind})")
            plots.save(fig, out / f"{net}_conservation.png")


if __name__ == "__main__":
    main()
