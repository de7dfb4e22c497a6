"""Layerwise density distributions (prunelab.densities) against closed forms worked out by hand and a
brute-force bisection for the ERK scale."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunelab import Mask
from prunelab.densities import DISTRIBUTIONS, layer_densities


def mlp():
    return nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 30), nn.ReLU(), nn.Linear(30, 4))


def convnet():
    # conv1 3->8 3x3 (216 weights), conv2 8->64 3x3 (4608), fc 64->10 (640)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 64, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)
    )


CONV_NAMES = ["0.weight", "2.weight", "5.weight"]
CONV_SIZES = {"0.weight": 8 * 3 * 3 * 3, "2.weight": 64 * 8 * 3 * 3, "5.weight": 10 * 64}
CONV_ERK = {"0.weight": (8 + 3 + 3 + 3) / 216, "2.weight": (64 + 8 + 3 + 3) / 4608, "5.weight": (10 + 64) / 640}
CONV_ER = {"0.weight": (8 + 3) / 24, "2.weight": (64 + 8) / 512, "5.weight": (10 + 64) / 640}


def kept(densities, sizes):
    return sum(densities[n] * sizes[n] for n in sizes)


def bisect_eps(factors, sizes, target):
    """The scale eps with sum(min(1, eps * f_l) * n_l) = target, found by bisection (no dense-set logic)."""
    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        if sum(min(1.0, mid * factors[n]) * sizes[n] for n in sizes) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_uniform_every_layer_at_one_minus_sparsity():
    d = layer_densities(convnet(), 0.8)
    assert list(d) == CONV_NAMES
    assert d == pytest.approx({n: 0.2 for n in CONV_NAMES})
    assert layer_densities(mlp(), 0.0, "uniform") == {n: 1.0 for n in ("0.weight", "2.weight", "4.weight")}


@pytest.mark.parametrize("name", ["er", "erk"])
def test_mlp_er_and_erk_closed_form(name):
    # 2-D weights: ER = ERK; no layer reaches density 1 at 90% sparsity, so d_l = eps * f_l with
    # eps = (1 - s) N / sum f_l n_l.
    sizes = {"0.weight": 50 * 20, "2.weight": 30 * 50, "4.weight": 4 * 30}
    factors = {"0.weight": 70 / 1000, "2.weight": 80 / 1500, "4.weight": 34 / 120}
    eps = 0.1 * 2620 / (70 + 80 + 34)
    d = layer_densities(mlp(), 0.9, name)
    assert d == pytest.approx({n: eps * f for n, f in factors.items()}, rel=1e-12)
    assert kept(d, sizes) == pytest.approx(262.0, abs=1e-9)


def test_convnet_erk_and_er_no_dense_layer():
    d = layer_densities(convnet(), 0.9, "erk")
    eps = 0.1 * 5464 / (17 + 78 + 74)
    assert d == pytest.approx({n: eps * f for n, f in CONV_ERK.items()}, rel=1e-12)
    d_er = layer_densities(convnet(), 0.9, "er")
    eps_er = 0.1 * 5464 / sum(CONV_ER[n] * CONV_SIZES[n] for n in CONV_NAMES)
    assert d_er == pytest.approx({n: eps_er * f for n, f in CONV_ER.items()}, rel=1e-12)
    assert d_er["0.weight"] != pytest.approx(d["0.weight"])  # the kernel term matters


def test_erk_output_layer_forced_dense_then_eps_recomputed():
    # At 70% sparsity the first eps = 1639.2 / 169 gives fc 1.12 > 1: fc is kept dense and
    # eps = (1639.2 - 640) / (17 + 78) for the two convolutions.
    d = layer_densities(convnet(), 0.7, "erk")
    eps = (0.3 * 5464 - 640) / (17 + 78)
    assert d["5.weight"] == 1.0
    assert d["0.weight"] == pytest.approx(eps * CONV_ERK["0.weight"], rel=1e-12) and d["0.weight"] < 1
    assert d["2.weight"] == pytest.approx(eps * CONV_ERK["2.weight"], rel=1e-12)
    brute = bisect_eps(CONV_ERK, CONV_SIZES, 0.3 * 5464)
    assert d == pytest.approx({n: min(1.0, brute * f) for n, f in CONV_ERK.items()}, rel=1e-9)
    assert kept(d, CONV_SIZES) == pytest.approx(0.3 * 5464, abs=1e-6)


def test_erk_two_rounds_first_conv_and_output_dense():
    # At 50%: fc dense in round one, then eps = 2092 / 95 makes conv1 1.73 > 1: dense too; conv2 takes
    # the rest.
    d = layer_densities(convnet(), 0.5, "erk")
    assert d["0.weight"] == 1.0 and d["5.weight"] == 1.0
    assert d["2.weight"] == pytest.approx((2732 - 216 - 640) / 4608, rel=1e-12)
    brute = bisect_eps(CONV_ERK, CONV_SIZES, 2732)
    assert d == pytest.approx({n: min(1.0, brute * f) for n, f in CONV_ERK.items()}, rel=1e-9)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.95, 0.999])
@pytest.mark.parametrize("name", ["uniform", "er", "erk"])
def test_total_kept_and_bounds(name, sparsity):
    d = layer_densities(convnet(), sparsity, name)
    assert all(0.0 <= v <= 1.0 for v in d.values())
    assert kept(d, CONV_SIZES) == pytest.approx((1 - sparsity) * 5464, abs=1e-6)


def test_bias_covered_is_dense_and_total_still_exact():
    model = convnet()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    d = layer_densities(model, 0.9, "erk", include_bias=True)
    assert set(d) == set(sizes)
    assert all(d[n] == 1.0 for n in ("0.bias", "2.bias", "5.bias"))  # factor n/n = 1, the largest
    assert kept(d, sizes) == pytest.approx(0.1 * sum(sizes.values()), abs=1e-6)


def test_bilinear_er_uses_first_two_dims_erk_all():
    model = nn.Sequential(nn.Bilinear(6, 5, 40), nn.Linear(40, 300))
    sizes = {"0.weight": 40 * 6 * 5, "1.weight": 300 * 40}
    for name, f0 in (("erk", (40 + 6 + 5) / 1200), ("er", (40 + 6) / 240)):
        f = {"0.weight": f0, "1.weight": 340 / 12000}
        eps = 0.05 * 13200 / sum(f[n] * sizes[n] for n in sizes)
        assert layer_densities(model, 0.95, name) == pytest.approx({n: eps * f[n] for n in f}, rel=1e-12)


def test_power_scale():
    assert layer_densities(convnet(), 0.9, "erk", power_scale=0.0) == pytest.approx({n: 0.1 for n in CONV_NAMES})
    f = {n: v**0.5 for n, v in CONV_ERK.items()}
    eps = 0.1 * 5464 / sum(f[n] * CONV_SIZES[n] for n in CONV_NAMES)
    d = layer_densities(convnet(), 0.9, "erk", power_scale=0.5)
    assert d == pytest.approx({n: eps * f[n] for n in CONV_NAMES}, rel=1e-12)


def test_mapping_returns_the_given_densities():
    model = convnet()
    gen = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=gen) < 0.3 for n, p in model.named_parameters() if n in CONV_SIZES})
    from_mask = layer_densities(model, None, mask)
    hand = {n: int(mask[n].sum()) / CONV_SIZES[n] for n in CONV_NAMES}
    assert from_mask == hand and list(from_mask) == CONV_NAMES
    assert layer_densities(model, None, mask.layer_density()) == hand
    implied = 1 - sum(int(mask[n].sum()) for n in CONV_NAMES) / 5464
    assert layer_densities(model, implied, hand) == hand
    with pytest.raises(ValueError, match="disagrees"):
        layer_densities(model, implied + 0.01, hand)


def test_mapping_errors():
    model = convnet()
    good = {n: 0.5 for n in CONV_NAMES}
    with pytest.raises(ValueError, match="lacks the covered tensor '5.weight'"):
        layer_densities(model, None, {n: 0.5 for n in CONV_NAMES[:2]})
    with pytest.raises(ValueError, match="not covered"):
        layer_densities(model, None, {**good, "0.bias": 0.5})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        layer_densities(model, None, {**good, "0.weight": 1.5})


@pytest.mark.parametrize("sparsity", [1.0, -0.1, "0.5", None, True, float("nan")])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        layer_densities(convnet(), sparsity, "erk")


def test_unknown_name_and_bad_power_scale():
    assert set(DISTRIBUTIONS) == {"uniform", "er", "erk"}
    with pytest.raises(ValueError, match=r"'erkk'.*did you mean 'erk'.*er, erk, uniform"):
        layer_densities(convnet(), 0.9, "erkk")
    with pytest.raises(ValueError, match="power_scale"):
        layer_densities(convnet(), 0.9, "erk", power_scale=-1.0)
    assert not math.isnan(layer_densities(convnet(), 0.9, "er", power_scale=2.0)["0.weight"])


def test_a_masks_own_densities_are_accepted_at_its_target_sparsity():
    """A mask holds round(s * N) weights, so its overall sparsity differs from s by up to 1/N; taking its
    layer densities at the same target must not be refused (random at SynFlow's densities, Frankle et al.
    2021, §5)."""
    import prunelab
    from prunelab import models

    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)
    target = 0.981985201
    mask = prunelab.prune(model, "synflow", target, input_shape=(1, 28, 28), iterations=2)
    assert mask.sparsity != target  # a whole number of weights
    densities = prunelab.layer_densities(model, target, mask.layer_density())
    assert densities == mask.layer_density()
