"""Conservation of synaptic saliency (Tanaka et al. 2020 Theorems 1-2) against hand-summed scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab import analysis


def signed_saliency(model, x, y, include_bias=False):
    """``dL/dw * w`` with its sign (synaptic saliency, Tanaka et al. 2020, eq. (1)), float64, by plain autograd."""
    params = dict(model.named_parameters())
    names = [n for n in params if n.endswith("weight") or (include_bias and n.endswith("bias"))]
    names = [n for n in names if params[n].dim() >= 2 or include_bias]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return {n: (g * params[n]).detach() for n, g in zip(names, grads)}


def mlp(bias=False):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8, bias=bias), nn.ReLU(), nn.Linear(8, 7, bias=bias), nn.ReLU(), nn.Linear(7, 3, bias=bias)
    ).double()


def convnet():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 3 * 3, 3, bias=False),
    ).double()


def hand_mlp(scores):
    """Per hidden neuron (incoming row sum, outgoing column sum), layers 0->2 and 2->4."""
    return [
        (scores["0.weight"].sum(1), scores["2.weight"].sum(0)),
        (scores["2.weight"].sum(1), scores["4.weight"].sum(0)),
    ]


def hand_convnet(scores):
    s0, s3, s6 = scores["0.weight"], scores["3.weight"], scores["6.weight"]
    return [
        (s0.sum((1, 2, 3)), s3.sum((0, 2, 3))),
        (s3.sum((1, 2, 3)), s6.sum(0).reshape(5, 9).sum(1)),  # channel-major flatten: 9 columns per channel
    ]


def data(shape, n=16):
    g = torch.Generator().manual_seed(3)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def check_exact(model, scores, hand):
    res = analysis.conservation(model, scores)
    assert res["exact"], res["caveats"]
    assert res["conserved"]
    pairs = hand(scores)
    for (incoming, outgoing), got in zip(pairs, res["neurons"].values()):
        assert torch.allclose(incoming, outgoing, rtol=1e-9, atol=1e-12 * float(incoming.abs().max()))
        assert torch.allclose(got["incoming"], incoming.double()) and torch.allclose(got["outgoing"], outgoing.double())
    totals = list(res["layer_total"].values())
    assert totals == pytest.approx([totals[0]] * len(totals), rel=1e-9)  # Theorem 2: same total per layer
    means = res["layer_mean"]
    for n, s in scores.items():
        assert means[n] == pytest.approx(totals[0] / s.numel(), rel=1e-9)  # Fig. 4: mean ~ 1 / size
    return res


def test_mlp_synflow_conserved():
    model = mlp()
    check_exact(model, prunelab.score(model, "synflow", input_shape=(6,)), hand_mlp)


def test_mlp_signed_snip_conserved():
    model = mlp()
    check_exact(model, signed_saliency(model, *data((6,))), hand_mlp)


def test_convnet_synflow_conserved():
    model = convnet()
    res = check_exact(model, prunelab.score(model, "synflow", input_shape=(2, 6, 6)), hand_convnet)
    assert res["neurons"]["0.weight"]["consumers"] == ["3.weight"]
    assert res["neurons"]["3.weight"]["consumers"] == ["6.weight"]


def test_convnet_signed_snip_conserved():
    model = convnet()
    check_exact(model, signed_saliency(model, *data((2, 6, 6))), hand_convnet)


def test_unscored_biases_make_it_approximate_and_scored_biases_exact():
    model = mlp(bias=True)
    x, y = data((6,))
    res = analysis.conservation(model, signed_saliency(model, x, y))
    assert not res["exact"] and any("bias" in c for c in res["caveats"])
    assert not res["conserved"] and res["max_relative_error"] > 1e-6
    # Theorem 1 counts the bias among the incoming parameters: with it scored, exact again.
    full = analysis.conservation(model, signed_saliency(model, x, y, include_bias=True))
    assert full["exact"] and full["conserved"]


def test_batchnorm_makes_it_approximate():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(3 * 4 * 4, 3, bias=False),
    ).double()
    model.train()
    res = analysis.conservation(model, signed_saliency(model, *data((2, 4, 4))))
    assert not res["exact"] and any("BatchNorm" in c for c in res["caveats"])
    assert not res["conserved"]  # train-mode BatchNorm is scale-invariant: incoming saliency ~ 0


class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 6, bias=False)
        self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.b(torch.relu(self.a(h))) + h))


def test_residual_sums_are_skipped():
    model = ResidualMLP().double()
    res = analysis.conservation(model, prunelab.score(model, "synflow", input_shape=(4,)))
    assert set(res["skipped"]) == {"stem.weight", "b.weight"}
    assert list(res["neurons"]) == ["a.weight"] and res["conserved"]
    assert not res["exact"]  # per-layer totals are not comparable across a skip connection


def test_untraceable_model_needs_pairs():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

        def forward(self, x):
            h = self.a(x)
            if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                h = torch.relu(h)
            return self.b(h)

    model = Branchy().double()
    scores = prunelab.score(model, "synflow", input_shape=(3,))
    with pytest.raises(ValueError, match="pairs="):
        analysis.conservation(model, scores)
    res = analysis.conservation(model, scores, pairs={"a.weight": ["b.weight"]})
    assert res["conserved"]
