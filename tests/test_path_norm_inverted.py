"""repro/path_norm.py and repro/snip_inverted.py: their core formulas against independent computations (explicit
path enumeration, hand-written gradients and normalization), on tiny networks."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPRO = Path(__file__).resolve().parent.parent / "repro"
sys.path.insert(0, str(REPRO))

import path_norm  # noqa: E402
import snip_inverted  # noqa: E402

import prunelab  # noqa: E402
from prunelab import models  # noqa: E402


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False), nn.ReLU(),
                         nn.Linear(3, 2, bias=False))


def _paths(ws: list[torch.Tensor]):
    """Every input-output path (one unit index per layer boundary) with the product of its |weights|."""
    sizes = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    for units in itertools.product(*(range(s) for s in sizes)):
        yield units, float(torch.prod(torch.stack([ws[l][units[l + 1], units[l]].abs().double()
                                                   for l in range(len(ws))])))


def test_path_norm_by_enumerating_paths():
    net = _mlp()
    ws = [m.weight.detach() for m in net if isinstance(m, nn.Linear)]
    brute = sum(p for _, p in _paths(ws))
    assert path_norm.mlp_path_norm(ws) == pytest.approx(brute, rel=1e-12)
    assert path_norm.objective(path_norm.absolute_copy(net), (3,)) == pytest.approx(brute, rel=1e-12)


def test_synflow_score_is_the_path_norm_through_each_weight_and_layers_sum_to_it():
    """Frankle et al. 2021, App. D.5: a weight's SynFlow score is the sum of the path products through it, so each
    layer's scores sum to the path norm."""
    net = _mlp(1)
    ws = [m.weight.detach() for m in net if isinstance(m, nn.Linear)]
    names = list(prunelab.prunable_parameters(net))
    scores = prunelab.score(net, "synflow", input_shape=(3,))
    through = [torch.zeros_like(w, dtype=torch.float64) for w in ws]
    total = 0.0
    for units, p in _paths(ws):
        total += p
        for l in range(len(ws)):
            through[l][units[l + 1], units[l]] += p
    for l, name in enumerate(names):
        assert torch.allclose(scores[name].double(), through[l], rtol=1e-10, atol=0)
        assert float(scores[name].double().sum()) == pytest.approx(total, rel=1e-12)


def test_removal_matches_the_score_by_hand():
    net = _mlp(2)
    scores = prunelab.score(net, "synflow", input_shape=(3,))
    assert path_norm.removal_errors(net, scores, (3,), seed=0) < 1e-10


def test_resnet20_separating_sets():
    model = models.create("resnet20", num_classes=10, input_shape=(3, 32, 32), seed=0)
    names = list(prunelab.prunable_parameters(model))
    sets = path_norm.separating_sets(model, names)
    assert sets == {
        "conv1.weight": ["conv1.weight"], "fc.weight": ["fc.weight"],
        "layer2.0.conv1 + shortcut": ["layer2.0.conv1.weight", "layer2.0.shortcut.0.weight"],
        "layer2.0.conv2 + shortcut": ["layer2.0.conv2.weight", "layer2.0.shortcut.0.weight"],
        "layer3.0.conv1 + shortcut": ["layer3.0.conv1.weight", "layer3.0.shortcut.0.weight"],
        "layer3.0.conv2 + shortcut": ["layer3.0.conv2.weight", "layer3.0.shortcut.0.weight"],
    }
    inner = path_norm.identity_skip_layers(model, names)
    assert len(inner) == 14 and "layer1.0.conv1.weight" in inner and "layer2.1.conv2.weight" in inner
    assert not any("shortcut" in n or n.startswith(("layer2.0.", "layer3.0.")) for n in inner)


class _Norm:
    """(x / 255 - mean) / std, written out."""

    def __init__(self, mean: float, std: float):
        self.mean, self.std = mean, std

    def __call__(self, x):
        return (x.double() / 255 - self.mean) / self.std


def test_inverted_inputs():
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    ds = type("DS", (), {"normalize": _Norm(0.3, 0.35)})()
    assert torch.allclose(snip_inverted.inputs(ds, x, "original"), (x.double() / 255 - 0.3) / 0.35)
    assert torch.allclose(snip_inverted.inputs(ds, x, "inverted"), ((255 - x.double()) / 255 - 0.3) / 0.35)
    # restandardized: the inverted images by their own mean (1 - 0.3) and the same std
    assert torch.allclose(snip_inverted.inputs(ds, x, "inverted_restandardized"),
                          ((255 - x.double()) / 255 - 0.7) / 0.35)


def test_gradient_scores_by_hand():
    """|dL/dW| of a one-layer linear classifier: (softmax(Wx) - onehot(y)) x^T averaged over the batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3, bias=False))
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    p = torch.softmax(x @ net[0].weight.detach().T, 1)
    by_hand = ((p - nn.functional.one_hot(y, 3).float()).T @ x / len(x)).abs()
    got = snip_inverted.gradient_scores(net, (x, y))
    assert torch.allclose(got["0.weight"], by_hand, atol=1e-6)
