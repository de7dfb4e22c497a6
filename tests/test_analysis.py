"""Layerwise counts, collapse, compression, similarity, ensembles and emergent structure, each
against hand arithmetic, plain Python sets, numpy, or a Monte-Carlo estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import prunelab
from prunelab import analysis
from prunelab.masks import Mask


def hand_mask():
    """Three tensors: a 4x3 linear with two dead rows, a 2x2x2x2 conv fully pruned, a 3-vector."""
    lin = torch.tensor([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    conv = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    bias = torch.tensor([1, 0, 1], dtype=torch.bool)
    return Mask({"fc.weight": lin, "conv.weight": conv, "fc.bias": bias})


# ---- layer table, collapse, compression ----------------------------------------------------------
def test_layer_table_by_hand():
    rows = analysis.layer_table(hand_mask())
    assert [r["name"] for r in rows] == ["fc.weight", "conv.weight", "fc.bias"]
    assert rows[0] == {"name": "fc.weight", "shape": (4, 3), "total": 12, "kept": 4,
                       "density": 4 / 12, "sparsity": pytest.approx(8 / 12)}
    assert (rows[1]["total"], rows[1]["kept"], rows[1]["density"], rows[1]["sparsity"]) == (16, 0, 0.0, 1.0)
    assert (rows[2]["kept"], rows[2]["shape"]) == (2, (3,))


def test_layer_labels_name_each_parameter_by_its_module_and_type():
    from collections import OrderedDict

    net = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 2, 3), attn=nn.MultiheadAttention(4, 2), fc=nn.Linear(4, 2)))
    net.add_module("1", nn.Linear(2, 2))
    names = ["conv1.weight", "fc.bias", "attn.in_proj_weight", "attn.out_proj.weight", "1.weight", "missing.weight"]
    assert analysis.layer_labels(net, names) == {
        "conv1.weight": "conv1 (Conv2d)", "fc.bias": "fc.bias (Linear)",
        "attn.in_proj_weight": "attn.in_proj_weight (MultiheadAttention)",
        "attn.out_proj.weight": "attn.out_proj (NonDynamicallyQuantizableLinear)", "1.weight": "1 (Linear)",
        "missing.weight": "missing.weight"}


def test_layer_collapse_and_max_compression_by_hand():
    mask = hand_mask()
    assert analysis.layer_collapse(mask) == ["conv.weight"]
    assert analysis.layer_collapse(Mask({n: torch.ones_like(t) for n, t in mask.items()})) == []
    assert analysis.layer_collapse(Mask({n: torch.zeros_like(t) for n, t in mask.items()})) == []
    assert analysis.max_compression(mask) == pytest.approx((12 + 16 + 3) / 3)


def test_protocols_use_the_analysis_function(monkeypatch):
    """A run's recorded layer collapse is the analysis' own function, not a copy of it."""
    from types import SimpleNamespace

    from prunelab.experiments.protocols import base

    model = nn.Sequential(nn.Linear(3, 2))
    mask = prunelab.Mask.ones(model)
    monkeypatch.setattr(analysis, "layer_collapse", lambda m: ["the analysis' answer"])
    res = SimpleNamespace(test_accuracy=0.5, test_loss=1.0, wall_time=0.0, step=1)
    assert base.sparse_result(res, mask, model, {})["layer_collapse"] == ["the analysis' answer"]


def staircase_mlp():
    """fc1 80 and fc3 32 weights of magnitude >= 0.5; fc2's 64 weights below 1e-3."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8, bias=False), nn.ReLU(), nn.Linear(8, 8, bias=False), nn.ReLU(),
                          nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        for i in (0, 4):
            w = model[i].weight
            w.copy_((0.5 + 0.5 * torch.rand(w.shape, generator=g)) * torch.sign(torch.randn(w.shape, generator=g)))
        model[2].weight.copy_(1e-3 * torch.rand(model[2].weight.shape, generator=g))
    return model


def test_critical_compression_magnitude_by_hand():
    # Global magnitude prunes fc2's 64 weights first; prune removes round(s * 176) weights (halves up),
    # so fc2 empties once s * 176 >= 63.5, i.e. at compression 1 / (1 - s) >= 176 / 112.5.
    model = staircase_mlp()
    critical = 176 / 112.5
    tol = 0.02
    got = analysis.critical_compression(model, "magnitude", tol=tol)
    assert got < critical
    assert math.log10(critical) - math.log10(got) <= tol
    assert analysis.max_compression(Mask.ones(model)) == pytest.approx(176 / 3)
    # above the critical compression the layer is gone; below, it is not
    with pytest.warns(prunelab.LayerCollapseWarning):
        above = prunelab.prune(model, "magnitude", sparsity=1 - 1 / (critical * 1.01))
    assert analysis.layer_collapse(above) == ["2.weight"]
    assert analysis.layer_collapse(prunelab.prune(model, "magnitude", sparsity=1 - 1 / got)) == []


def test_critical_compression_returns_high_when_nothing_collapses():
    model = staircase_mlp()
    assert analysis.critical_compression(model, "magnitude", high=1.2) == 1.2
    with pytest.raises(ValueError, match="above low"):
        analysis.critical_compression(model, "magnitude", low=2.0, high=1.5)


# ---- neuron collapse -----------------------------------------------------------------------------
def test_neuron_collapse_by_hand():
    # fc: row sparsities 0, 1, 2/3, 1; conv: 2 channels, sparsities 1 and 1; the 1-D bias is skipped.
    res = analysis.neuron_collapse(hand_mask(), thresholds=[0.0, 0.5, 2 / 3, 0.9, 1.0])
    assert res["per_layer"]["fc.weight"] == [1.0, 0.75, 0.75, 0.5, 0.5]
    assert res["per_layer"]["conv.weight"] == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert "fc.bias" not in res["per_layer"]
    assert res["neurons"] == 6
    assert res["fraction"] == pytest.approx([6 / 6, 5 / 6, 5 / 6, 4 / 6, 4 / 6])
    default = analysis.neuron_collapse(hand_mask())
    assert default["thresholds"][0] == 0.0 and default["thresholds"][-1] == 1.0
    with pytest.raises(ValueError, match="thresholds"):
        analysis.neuron_collapse(hand_mask(), thresholds=[1.5])


def test_neuron_collapse_half_threshold_counts_exactly_half():
    mask = Mask({"w": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)})
    assert analysis.neuron_collapse(mask, thresholds=[0.5])["fraction"] == [0.5]


# ---- similarity ----------------------------------------------------------------------------------
def kept_set(mask):
    return {(n, i) for n, t in mask.items() for i in t.flatten().nonzero().flatten().tolist()}


def test_jaccard_against_sets():
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (5, 4), "b": (3, 2, 3, 3), "c": (7,)}
    m1 = Mask({n: torch.rand(s, generator=g) < 0.5 for n, s in shapes.items()})
    m2 = Mask({n: torch.rand(s, generator=g) < 0.3 for n, s in shapes.items()})
    s1, s2 = kept_set(m1), kept_set(m2)
    assert analysis.jaccard(m1, m2) == pytest.approx(len(s1 & s2) / len(s1 | s2))
    assert analysis.jaccard_distance(m1, m2) == pytest.approx(1 - len(s1 & s2) / len(s1 | s2))
    per = analysis.jaccard_per_layer(m1, m2)
    for n in shapes:
        a, b = {x for x in s1 if x[0] == n}, {x for x in s2 if x[0] == n}
        assert per[n] == pytest.approx(len(a & b) / len(a | b))
    assert analysis.jaccard(m1, m1) == 1.0
    empty = Mask({n: torch.zeros(s, dtype=torch.bool) for n, s in shapes.items()})
    assert analysis.jaccard(empty, empty) == 1.0 and analysis.jaccard(m1, empty) == 0.0
    with pytest.raises(ValueError, match="different parameters"):
        analysis.jaccard(m1, Mask({"a": m1["a"]}))
    # an fc-only mask (Paganini & Forde 2020) against a whole-network one: compared on the tensors both cover
    partial = Mask({"a": m2["a"]})
    assert analysis.jaccard_per_layer(m1, partial, shared_only=True) == {"a": per["a"]}
    with pytest.raises(ValueError, match="no tensor in common"):
        analysis.jaccard_per_layer(Mask({"b": m1["b"]}), partial, shared_only=True)


def test_weight_stability_against_manual_mean():
    g = torch.Generator().manual_seed(1)
    prev = {"w": torch.randn(4, 5, generator=g), "v": torch.randn(3, generator=g)}
    nxt = {"w": torch.randn(4, 5, generator=g), "v": torch.randn(3, generator=g)}
    pm = Mask({"w": torch.rand(4, 5, generator=g) < 0.7, "v": torch.tensor([True, False, False])})
    nm = Mask({"w": torch.rand(4, 5, generator=g) < 0.7, "v": torch.tensor([False, True, False])})
    got = analysis.weight_stability(prev, nxt, pm, nm)
    total, count = 0.0, 0
    for i in range(4):
        for j in range(5):
            if pm["w"][i, j] and nm["w"][i, j]:
                total += abs(float(nxt["w"][i, j]) - float(prev["w"][i, j]))
                count += 1
    assert got["w"] == pytest.approx(total / count)
    assert math.isnan(got["v"])  # no weight kept in both


# ---- predictions, agreement, ensembles -----------------------------------------------------------
def test_predictions_concatenate_and_restore_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    xs = [torch.randn(5, 3), torch.randn(2, 3)]
    batches = [(x, torch.zeros(len(x), dtype=torch.long)) for x in xs]
    logits, labels = analysis.predictions(model, batches, return_labels=True)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x) for x in xs])
    model.train()
    assert torch.allclose(logits, expected) and labels.shape == (7,)
    assert model.training and model[1].training
    assert torch.equal(analysis.predictions(model, xs), logits)


def test_agreement_and_ensemble_against_numpy():
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(50, 4)) for _ in range(3)]
    labels = rng.integers(0, 4, size=50)
    preds = [lg.argmax(1) for lg in logits]
    t = [torch.tensor(lg) for lg in logits]
    assert analysis.agreement(t[0], t[1]) == pytest.approx(float(np.mean(preds[0] == preds[1])))
    matrix = analysis.agreement_matrix(t)
    for i in range(3):
        for j in range(3):
            assert float(matrix[i, j]) == pytest.approx(float(np.mean(preds[i] == preds[j])))

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    mean_prob = sum(softmax(lg) for lg in logits) / 3
    expected = float(np.mean(mean_prob.argmax(1) == labels))
    assert analysis.ensemble_accuracy(t, torch.tensor(labels)) == pytest.approx(expected)
    assert analysis.accuracy(t[0], torch.tensor(labels)) == pytest.approx(float(np.mean(preds[0] == labels)))


# ---- emergent structure --------------------------------------------------------------------------
def test_emergent_structure_by_hand():
    conv = torch.ones(4, 3, 2, 2, dtype=torch.bool)
    conv[:, 1] = False  # input channel 1 removed whole
    conv[0, 2, 0, 0] = False  # channel 2 only partly
    fc1 = torch.ones(5, 6, dtype=torch.bool)
    fc1[:, [0, 4]] = False  # input features 0 and 4 removed whole
    fc2 = torch.zeros(2, 5, dtype=torch.bool)  # not the first linear layer: not reported
    res = analysis.emergent_structure(Mask({"conv.weight": conv, "fc1.weight": fc1, "fc2.weight": fc2}))
    assert set(res) == {"conv.weight", "fc1.weight"}
    c = res["conv.weight"]
    assert (c["kind"], c["slices"], c["slice_size"], c["total"], c["kept"]) == ("conv", 3, 16, 48, 31)
    assert c["removed"] == pytest.approx(1 / 3) and c["output_removed"] == 0.0
    assert c["expected_random"] == pytest.approx(math.comb(48 - 16, 31) / math.comb(48, 31))
    f = res["fc1.weight"]
    assert (f["kind"], f["removed"], f["slice_size"]) == ("linear", pytest.approx(2 / 6), 5)


def test_hypergeometric_expectation_matches_monte_carlo():
    total, kept, size = 48, 10, 8  # a (2, 6, 2, 2) convolution keeping 10 weights: slices of 8
    exact = analysis.prob_slice_removed(total, kept, size)
    assert exact == pytest.approx(math.comb(total - size, kept) / math.comb(total, kept), rel=1e-9)
    g = torch.Generator().manual_seed(0)
    draws = 4000
    keep = torch.zeros(draws, total, dtype=torch.bool)
    keep.scatter_(1, torch.rand(draws, total, generator=g).argsort(dim=1)[:, :kept], True)
    slices = keep.reshape(draws, 2, 6, 2, 2).transpose(1, 2).reshape(draws, 6, -1)
    monte_carlo = float((~slices.any(dim=2)).to(torch.float64).mean())
    assert monte_carlo == pytest.approx(exact, abs=0.02)
    mask = Mask({"conv.weight": keep[0].reshape(2, 6, 2, 2)})
    res = analysis.emergent_structure(mask, seed=3)["conv.weight"]
    assert res["expected_random"] == pytest.approx(exact)
    assert 0.0 <= res["random_sample"] <= 1.0
    # huge layers: no overflow, and the limit (1 - K/N)^k for k << N
    big = analysis.prob_slice_removed(10**7, 10**5, 100)
    assert big == pytest.approx((1 - 1e-2) ** 100, rel=1e-3)


def test_dispersion_by_hand_and_against_random_masks():
    # 4 input channels of 6 weights (out 3, 2x1 kernels); kept counts per input channel 6, 6, 0, 0
    conv = torch.zeros(3, 4, 2, 1, dtype=torch.bool)
    conv[:, :2] = True
    res = analysis.emergent_structure(Mask({"conv.weight": conv}))["conv.weight"]
    n, K, k = 24, 12, 6
    hyper = k * (K / n) * (1 - K / n) * (n - k) / (n - 1)
    assert analysis.slice_count_variance(n, K, k) == pytest.approx(hyper)
    assert res["dispersion"] == pytest.approx(np.var([6, 6, 0, 0]) / hyper)
    # output side: 3 slices of 8, each keeps 4 -> no spread at all
    assert res["output_dispersion"] == 0.0
    # random masks: the variance of the slice counts is the hypergeometric one (Monte Carlo), so the
    # dispersion averages to about 1
    g = torch.Generator().manual_seed(1)
    values = []
    for _ in range(400):
        keep = torch.zeros(240, dtype=torch.bool)
        keep[torch.randperm(240, generator=g)[:60]] = True
        res = analysis.emergent_structure(Mask({"c.weight": keep.reshape(6, 10, 2, 2)}))
        values.append(res["c.weight"]["dispersion"])
    # the counts sum to K, so their mean is exactly K / s and E[population variance] = the hypergeometric one
    assert np.mean(values) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(ValueError, match="kept <= total"):
        analysis.slice_count_variance(10, 11, 2)
