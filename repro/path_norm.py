"""Family 5 (no training): SynFlow scores as shares of the path norm, and conservation across the cuts of a ResNet.

Frankle et al. 2021, App. D.5: on the all-ones input, with every weight made positive, the (l1,1) path norm mu of a
layered ReLU network is the sum over any one layer of |w_e| * sum_o df_o/dw_e, i.e. of that layer's SynFlow
scores; and a weight's SynFlow score is what removing it takes off the path norm (to first order; exactly, since mu
is linear in each |w_e|). So each layer's scores divided by R = 1^T f_|theta|(1) (SynFlow's objective, the path
norm when the network has no max-pooling) are shares that sum to 1 (Euler's theorem: R is homogeneous of degree 1
in each layer's weights).

Tanaka et al. 2020, Thm. 2: the synaptic saliency summed over any set of parameters that exactly separates input
from output equals <dR/dy, y> = R. On ResNet-20 a conv layer inside a block with an identity shortcut is no such
set (the skip path carries flow past it without parameters); the stem, the classifier, and a downsampling block's
conv1 (or conv2) together with its 1x1 shortcut convolution are.

Per network (seeds 0, 1, 2 of ``prunelab.models.create``, CIFAR shape for VGG-16 and ResNet-20, 28x28 for the
LeNets): R computed independently of prunelab's SynFlow scorer (LeNet-300-100: the matrix product
1^T |W3| |W2| |W1| 1, the path sum itself; the others: a forward pass of an absolute-valued float64 copy in eval
mode on an all-ones input), each layer's total SynFlow score (``prunelab.score(..., "synflow")``) divided by R,
and on the networks without max-pooling (LeNet-300-100, ResNet-20) R minus R with one weight removed, against that
weight's score, for 5 weights per layer drawn with a fixed generator. Biases are zero and BatchNorm at its initial
statistics (a positive per-channel scale in eval mode), so the weights carry all the saliency.

    OMP_NUM_THREADS=1 python repro/path_norm.py      # seconds on a CPU

Writes ``repro/results/path_norm/results.json``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

import prunelab
from prunelab import models
from prunelab.io import atomic_write_json

NETS = {"lenet_300_100": (1, 28, 28), "lenet5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet20": (3, 32, 32)}
SEEDS = [0, 1, 2]
REMOVED_PER_LAYER = 5
NO_MAXPOOL = {"lenet_300_100", "resnet20"}  # where R is a sum over paths, linear in each weight
OUT = Path("repro/results/path_norm/results.json")


def absolute_copy(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with every parameter and floating buffer replaced by its absolute value."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in net.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.abs_()
    return net


def objective(net: nn.Module, shape: tuple[int, ...]) -> float:
    """R = 1^T f(1): the sum of the outputs on an all-ones input (of an absolute-valued copy)."""
    with torch.no_grad():
        return float(net(torch.ones((1, *shape), dtype=torch.float64)).sum())


def mlp_path_norm(weights: list[torch.Tensor]) -> float:
    """sum over input-output paths of prod |w|: 1^T |W_L| ... |W_1| 1 for weights W_l of shape (out, in)."""
    v = torch.ones(weights[0].shape[1], dtype=torch.float64)
    for w in weights:
        v = w.detach().double().abs() @ v
    return float(v.sum())


def separating_sets(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """Sets of prunable weights of a CIFAR ResNet that cut every input-output path: the stem, the classifier, and in
    each block with a convolution on its shortcut, conv1 + shortcut and conv2 + shortcut."""
    sets = {names[0]: [names[0]], names[-1]: [names[-1]]}
    for prefix, block in model.named_modules():
        shortcut = getattr(block, "shortcut", None)
        if shortcut is not None and any(isinstance(m, nn.Conv2d) for m in shortcut.modules()):
            sc = [n for n in names if n.startswith(f"{prefix}.shortcut.")]
            for conv in ("conv1", "conv2"):
                sets[f"{prefix}.{conv} + shortcut"] = [f"{prefix}.{conv}.weight", *sc]
    return sets


def identity_skip_layers(model: nn.Module, names: list[str]) -> list[str]:
    """Prunable weights inside blocks whose shortcut has no parameters (the identity)."""
    out = []
    for prefix, block in model.named_modules():
        shortcut = getattr(block, "shortcut", None)
        if shortcut is not None and not any(True for _ in shortcut.parameters()):
            out += [n for n in names if n.startswith(f"{prefix}.") and ".shortcut." not in n]
    return out


def removal_errors(model: nn.Module, scores: dict, shape, seed: int) -> float:
    """Largest |(R - R without w) - score(w)| / score(w) over sampled weights (exact: R is linear in each |w|)."""
    net = absolute_copy(model)
    params = dict(net.named_parameters())
    r = objective(net, shape)
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for name, s in scores.items():
        flat = params[name].data.view(-1)
        for i in torch.randint(flat.numel(), (REMOVED_PER_LAYER,), generator=g).tolist():
            kept = flat[i].item()
            flat[i] = 0.0
            drop = r - objective(net, shape)
            flat[i] = kept
            score = float(s.view(-1)[i])
            worst = max(worst, abs(drop - score) / score)
    return worst


def measure(net_name: str, shape, seed: int) -> dict:
    model = models.create(net_name, num_classes=10, input_shape=shape, seed=seed)
    names = list(prunelab.prunable_parameters(model))
    scores = prunelab.score(model, "synflow", input_shape=shape)
    if net_name == "lenet_300_100":
        r = mlp_path_norm([dict(model.named_parameters())[n] for n in names])
    else:
        r = objective(absolute_copy(model), shape)
    totals = {n: float(scores[n].double().sum()) for n in names}
    out = {"R": r, "layers": {n: [scores[n].numel(), totals[n], totals[n] / r] for n in names}}
    if net_name == "resnet20":
        cuts = {k: sum(totals[n] for n in v) / r for k, v in separating_sets(model, names).items()}
        inner = identity_skip_layers(model, names)
        out["cuts"] = cuts
        out["max_cut_error"] = max(abs(s - 1) for s in cuts.values())
        out["identity_skip_shares"] = [min(totals[n] / r for n in inner), max(totals[n] / r for n in inner)]
    else:  # a chain: every layer separates input from output
        out["max_share_error"] = max(abs(t / r - 1) for t in totals.values())
    if net_name in NO_MAXPOOL:
        out["max_removal_error"] = removal_errors(model, scores, shape, seed)
    return out


def main() -> None:
    torch.set_num_threads(1)
    results: dict = {"seeds": SEEDS, "removed_per_layer": REMOVED_PER_LAYER}
    for net_name, shape in NETS.items():
        per_seed = {str(s): measure(net_name, shape, s) for s in SEEDS}
        summary = {"per_seed": per_seed}
        for key in ("max_share_error", "max_cut_error", "max_removal_error"):
            if key in per_seed["0"]:
                summary[key] = max(v[key] for v in per_seed.values())
        if net_name == "resnet20":
            summary["identity_skip_shares"] = [min(v["identity_skip_shares"][0] for v in per_seed.values()),
                                               max(v["identity_skip_shares"][1] for v in per_seed.values())]
        results[net_name] = summary
        print(net_name, {k: v for k, v in summary.items() if k != "per_seed"}, flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT, results)


if __name__ == "__main__":
    main()
