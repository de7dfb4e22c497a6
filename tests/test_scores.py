"""Criteria checked against independent computations (explicit gates, explicit Hessians, path sums)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.scores import Scores


def mlp(bias=True, dims=(4, 5, 3), act=nn.ReLU, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers).to(dtype)


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def data(n=12, shape=(4,), classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def weights(model):
    return [m.weight for m in model if isinstance(m, nn.Linear)]


def biases(model):
    return [m.bias for m in model if isinstance(m, nn.Linear)]


def functional_mlp(ws, bs, x, act=F.relu):
    h = x
    for i, w in enumerate(ws):
        h = F.linear(h, w, bs[i] if bs else None)
        if i < len(ws) - 1:
            h = act(h)
    return h


def random_mask(model, density=0.6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return prunelab.Mask(
        {n: torch.rand(p.shape, generator=g) < density for n, p in prunelab.prunable_parameters(model).items()}
    )


# ------------------------------------------------------------------------------------------------
# SNIP
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
def test_snip_equals_gradient_wrt_multiplicative_gates(masked):
    model = mlp()
    x, y = data()
    mask = random_mask(model) if masked else None
    got = prunelab.score(model, "snip", batch=(x, y), mask=mask)

    # Lee et al. 2019: gates c = 1 multiply each weight; the score is |dL/dc|.
    ws = [w.detach() for w in weights(model)]
    ms = [mask[f"{i}.weight"].float() for i in (0, 2)] if masked else [torch.ones_like(w) for w in ws]
    cs = [torch.ones_like(w, requires_grad=True) for w in ws]
    out = functional_mlp([w * m * c for w, m, c in zip(ws, ms, cs)], [b.detach() for b in biases(model)], x)
    grads = torch.autograd.grad(F.cross_entropy(out, y), cs)
    assert set(got) == {"0.weight", "2.weight"}
    for name, g in zip(["0.weight", "2.weight"], grads):
        torch.testing.assert_close(got[name], g.abs(), rtol=1e-5, atol=1e-7)


def test_snip_batch_list_is_the_union():
    model = mlp()
    x, y = data(n=10)
    whole = prunelab.score(model, "snip", batch=(x, y))
    parts = prunelab.score(model, "snip", batch=[(x[:4], y[:4]), (x[4:], y[4:])])
    for n in whole:
        torch.testing.assert_close(whole[n], parts[n])


# ------------------------------------------------------------------------------------------------
# GraSP
# ------------------------------------------------------------------------------------------------
def grasp_reference(model, x, y, temperature):
    """-w * (H g) with H the full Hessian of the loss over the flattened weights."""
    ws = [w.detach() for w in weights(model)]
    bs = [b.detach() for b in biases(model)]
    shapes = [w.shape for w in ws]
    sizes = [w.numel() for w in ws]
    flat = torch.cat([w.reshape(-1) for w in ws]).double()

    def loss(v):
        parts = [p.reshape(s) for p, s in zip(v.split(sizes), shapes)]
        out = functional_mlp(parts, [b.double() for b in bs], x.double(), act=torch.tanh)
        return F.cross_entropy(out / temperature, y)

    h = torch.autograd.functional.hessian(loss, flat)
    v = flat.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(v), v)
    score = -flat * (h @ g)
    return dict(zip(["0.weight", "2.weight"], (p.reshape(s) for p, s in zip(score.split(sizes), shapes))))


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_equals_minus_w_hessian_gradient(temperature):
    model = mlp(act=nn.Tanh, dtype=torch.float64)
    x, y = data()
    got = prunelab.score(model, "grasp", batch=(x.double(), y), temperature=temperature)
    want = grasp_reference(model, x, y, temperature)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-12)
    got_abs = prunelab.score(model, "grasp_abs", batch=(x.double(), y), temperature=temperature)
    for n in want:
        torch.testing.assert_close(got_abs[n], want[n].abs(), rtol=1e-6, atol=1e-12)


def test_grasp_default_temperature_is_200_and_batches_combine():
    model = mlp(act=nn.Tanh, dtype=torch.float64)
    x, y = data(n=10)
    x = x.double()
    default = prunelab.score(model, "grasp", batch=(x, y))
    want = grasp_reference(model, x, y, 200.0)
    for n in want:
        torch.testing.assert_close(default[n], want[n], rtol=1e-6, atol=1e-12)
    parts = prunelab.score(model, "grasp", batch=[(x[:3], y[:3]), (x[3:], y[3:])])
    for n in want:
        torch.testing.assert_close(parts[n], want[n], rtol=1e-6, atol=1e-12)


def test_grasp_metadata_prunes_highest_and_abs_lowest():
    info = prunelab.methods()
    assert info["grasp"].prune_highest and not info["grasp_abs"].prune_highest
    assert info["grasp"].needs_data and info["snip"].needs_data and not info["synflow"].needs_data


# ------------------------------------------------------------------------------------------------
# SynFlow
# ------------------------------------------------------------------------------------------------
def synflow_eq3(ws):
    """Tanaka et al. 2020, eq. (3): S(w_ij^l) = [1^T prod_{k>l} |W^k|]_i |w_ij^l| [prod_{k<l} |W^k| 1]_j."""
    a = [w.detach().double().abs() for w in ws]
    out = []
    for l, w in enumerate(a):
        left = torch.ones(a[-1].shape[0], dtype=torch.float64)
        for k in reversed(range(l + 1, len(a))):
            left = left @ a[k]
        right = torch.ones(a[0].shape[1], dtype=torch.float64)
        for k in range(l):
            right = a[k] @ right
        out.append(left[:, None] * w * right[None, :])
    return out


def test_synflow_equals_path_product_formula():
    model = mlp(bias=False, dims=(5, 7, 6, 3))
    got = prunelab.score(model, "synflow", input_shape=(5,))
    want = synflow_eq3(weights(model))
    for n, w in zip(["0.weight", "2.weight", "4.weight"], want):
        assert got[n].dtype == torch.float64
        torch.testing.assert_close(got[n], w, rtol=1e-10, atol=0)


def test_synflow_equals_brute_force_path_sum_with_mask():
    model = mlp(bias=False, dims=(3, 3, 2))
    mask = random_mask(model, density=0.7, seed=5)
    got = prunelab.score(model, "synflow", input_shape=(3,), mask=mask)
    w1 = (weights(model)[0].detach() * mask["0.weight"]).double().abs()
    w2 = (weights(model)[1].detach() * mask["2.weight"]).double().abs()
    s1 = torch.zeros_like(w1)
    s2 = torch.zeros_like(w2)
    # every path input i -> hidden j -> output o contributes its product to both of its weights
    for i, j, o in itertools.product(range(3), range(3), range(2)):
        p = w1[j, i] * w2[o, j]
        s1[j, i] += p
        s2[o, j] += p
    torch.testing.assert_close(got["0.weight"], s1, rtol=1e-12, atol=0)
    torch.testing.assert_close(got["2.weight"], s2, rtol=1e-12, atol=0)


def test_synflow_conservation_per_neuron_and_layer():
    """Tanaka et al. 2020, Theorems 1-2 on a bias-free ReLU MLP: per hidden neuron, incoming = outgoing score; all
    layers have the same total (R)."""
    model = mlp(bias=False, dims=(6, 8, 7, 4))
    s = prunelab.score(model, "synflow", input_shape=(6,))
    a, b, c = s["0.weight"], s["2.weight"], s["4.weight"]
    torch.testing.assert_close(a.sum(1), b.sum(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(b.sum(1), c.sum(0), rtol=1e-10, atol=0)
    torch.testing.assert_close(a.sum(), c.sum(), rtol=1e-10, atol=0)


def test_synflow_runs_in_float64_where_float32_overflows():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8, bias=False) for _ in range(30)])
    with torch.no_grad():
        for m in model:
            m.weight.fill_(30.0)  # R ~ 8 * (8*30)^30 ~ 1e72: inf in float32
    s = prunelab.score(model, "synflow", input_shape=(8,))
    assert all(v.dtype == torch.float64 and torch.isfinite(v).all() and (v > 0).all() for v in s.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.isinf(model(torch.ones(1, 8)).sum())  # float32 would indeed have overflowed


def test_synflow_uses_eval_mode_and_absolute_batchnorm():
    model = convnet()
    with torch.no_grad():  # give BN non-trivial, partly negative parameters and statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    model.train()
    got = prunelab.score(model, "synflow", input_shape=(3, 6, 6))
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in ref.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.abs_()
    ws = [p for n, p in ref.named_parameters() if n in got]
    r = ref(torch.ones(1, 3, 6, 6, dtype=torch.float64)).sum()
    for (n, w), g in zip([(n, p) for n, p in ref.named_parameters() if n in got], torch.autograd.grad(r, ws)):
        torch.testing.assert_close(got[n], (g * w).abs().detach(), rtol=1e-10, atol=0)


def test_synflow_needs_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        prunelab.score(mlp(), "synflow")
    with pytest.raises(ValueError, match="input_shape"):
        prunelab.score(mlp(), "synflow", input_shape=(0, 3))


# ------------------------------------------------------------------------------------------------
# the caller's model is left alone
# ------------------------------------------------------------------------------------------------
def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [p.dtype for p in model.parameters()],
    )


@pytest.mark.parametrize("method", ["snip", "iterative_snip", "grasp", "grasp_abs", "synflow", "magnitude"])
@pytest.mark.parametrize("train", [True, False])
def test_scoring_leaves_model_untouched(method, train):
    model = convnet()
    model.train(train)
    model[4].eval()  # a mixed-mode model: every flag must come back as it was
    model[0].weight.requires_grad_(False)
    x, y = data(n=8, shape=(3, 6, 6), classes=5)
    before = snapshot(model)
    prunelab.score(model, method, batch=(x, y), input_shape=(3, 6, 6))
    prunelab.prune(model, method, 0.5, batch=(x, y), input_shape=(3, 6, 6), iterations=2)
    after = snapshot(model)
    assert before[1:] == after[1:]
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k  # weights and BN running stats, batches tracked
    assert all(p.grad is None for p in model.parameters())


def _reference_scores(model, x, y, method, train):
    ref = copy.deepcopy(model).train(train)
    named = [(n, p) for n, p in ref.named_parameters() if n in prunelab.prunable_parameters(model)]
    ws = [p for _, p in named]
    if method == "snip":
        grads = torch.autograd.grad(F.cross_entropy(ref(x), y), ws)
        return {n: (g * w).abs().detach() for (n, w), g in zip(named, grads)}
    grads = torch.autograd.grad(F.cross_entropy(ref(x) / 200.0, y), ws, create_graph=True)
    hg = torch.autograd.grad(sum((g.detach() * g).sum() for g in grads), ws)
    return {n: (-w * h).detach() for (n, w), h in zip(named, hg)}


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_snip_and_grasp_use_batchnorm_in_train_mode(method):
    model = convnet()
    model.eval()  # the caller's mode must not decide how BN normalizes during scoring
    x, y = data(n=8, shape=(3, 6, 6), classes=5)
    got = prunelab.score(model, method, batch=(x, y))
    want = _reference_scores(model, x, y, method, train=True)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-8)
    got_eval = prunelab.score(model, method, batch=(x, y), batchnorm_train=False)
    want_eval = _reference_scores(model, x, y, method, train=False)
    for n in want:
        torch.testing.assert_close(got_eval[n], want_eval[n], rtol=1e-4, atol=1e-8)
        assert not torch.allclose(got[n], got_eval[n])


# ------------------------------------------------------------------------------------------------
# masked scoring, random, magnitude
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude"])
def test_scores_are_those_of_the_masked_network(method):
    model = convnet()
    x, y = data(n=8, shape=(3, 6, 6), classes=5)
    mask = random_mask(model, density=0.5)
    got = prunelab.score(model, method, batch=(x, y), mask=mask, input_shape=(3, 6, 6))
    zeroed = copy.deepcopy(model)
    mask.zero_pruned(zeroed)
    want = prunelab.score(zeroed, method, batch=(x, y), input_shape=(3, 6, 6))
    for n in want:
        torch.testing.assert_close(got[n], want[n])


def test_random_is_seeded_and_prunes_an_exact_count():
    model = convnet()
    a = prunelab.prune(model, "random", 0.37, seed=1)
    b = prunelab.prune(model, "random", 0.37, seed=1)
    c = prunelab.prune(model, "random", 0.37, seed=2)
    assert a == b and a != c
    n = a.num_total
    for seed in range(5):
        m = prunelab.prune(model, "random", 0.37, seed=seed)
        assert n - m.num_kept == round(0.37 * n)
    s1 = prunelab.score(model, "random", seed=4)
    s2 = prunelab.score(model, "random", seed=4)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_magnitude_is_abs_weight():
    model = convnet()
    s = prunelab.score(model, "magnitude")
    params = dict(model.named_parameters())
    assert set(s) == {"0.weight", "3.weight", "8.weight"}
    for n in s:
        assert torch.equal(s[n], params[n].detach().abs())


def test_prunable_parameter_options_select_scored_tensors():
    model = convnet()
    assert set(prunelab.score(model, "magnitude", include_bias=True)) == {
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "8.weight",
        "8.bias",
    }
    assert set(prunelab.score(model, "magnitude", include_norm=True)) >= {"1.weight", "1.bias", "4.weight"}
    assert set(prunelab.score(model, "magnitude", exclude=["8.weight"])) == {"0.weight", "3.weight"}
    only_convs = prunelab.score(model, "magnitude", filter=lambda n, p: p.dim() == 4)
    assert set(only_convs) == {"0.weight", "3.weight"}


# ------------------------------------------------------------------------------------------------
# structured
# ------------------------------------------------------------------------------------------------
def test_channel_norms_match_independent_norms():
    model = convnet()
    w = model[3].weight.detach()
    for method, fn in [
        ("l1_channel", lambda c: c.abs().sum()),
        ("l2_channel", lambda c: c.pow(2).sum().sqrt()),
        ("linf_channel", lambda c: c.abs().max()),
        ("lneginf_channel", lambda c: c.abs().min()),
    ]:
        s = prunelab.score(model, method)
        assert s.groups["3.weight"] == 1 and s["3.weight"].shape == w.shape
        for c in range(w.shape[1]):
            torch.testing.assert_close(s["3.weight"][:, c], fn(w[:, c]).expand(w.shape[0], 3, 3))
        s_out = prunelab.score(model, method, axis="output")
        assert s_out.groups["3.weight"] == 0
        for c in range(w.shape[0]):
            torch.testing.assert_close(s_out["3.weight"][c], fn(w[c]).expand(w.shape[1], 3, 3))


def test_hybrid_scores_convs_by_channel_and_linear_by_weight():
    model = convnet()
    s = prunelab.score(model, "hybrid")
    assert set(s.groups) == {"0.weight", "3.weight"}
    assert torch.equal(s["8.weight"], model[8].weight.detach().abs())


def test_register_a_criterion_with_one_decorated_function():
    name = "test_scores_negative_magnitude"

    @prunelab.register_method(name, needs_data=False, description="-|w|, a toy")
    def negative_magnitude(model, mask, batch=None, *, scale: float = 1.0):
        return {n: -scale * p.detach().abs() for n, p in mask.check_compatible(model).items()}

    assert name in prunelab.methods() and prunelab.methods()[name].options == ("scale",)
    model = convnet()
    s = prunelab.score(model, name, scale=2.0)
    assert isinstance(s, Scores)
    mask = prunelab.prune(model, name, 0.5)
    # lowest -|w| pruned = the largest weights go
    params = dict(model.named_parameters())
    everything = torch.cat([params[n].detach().abs().reshape(-1) for n in mask])
    kept = torch.cat([params[n].detach().abs()[mask[n]] for n in mask])
    assert kept.max() <= everything.median() + 1e-6
    with pytest.raises(ValueError, match="already registered"):
        prunelab.register_method(name, needs_data=False)(negative_magnitude)


def test_every_criterion_of_the_papers_is_registered_with_metadata():
    info = prunelab.methods()
    required = {
        "random",
        "magnitude",
        "snip",
        "iterative_snip",
        "grasp",
        "grasp_abs",
        "synflow",
        "l1_channel",
        "l2_channel",
        "linf_channel",
        "random_channel",
        "hybrid",
    }
    assert required <= set(info)
    assert info["synflow"].needs_input_shape and not info["synflow"].needs_data
    assert all(info[n].structured and info[n].default_scope == "layer" for n in required if "channel" in n)
    assert info["hybrid"].structured and info["magnitude"].default_scope == "global"


def test_grouped_convolutions_refuse_the_input_axis():
    """A grouped conv's dim 1 is in/groups: its slices are per-group channels, not input channels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 6, 1, groups=2))
    for method in ("l1_channel", "random_channel", "hybrid"):
        with pytest.raises(ValueError, match=r"'1\.weight'.*groups=8.*axis='output'.*exclude=\['1\.weight'\]"):
            prunelab.score(model, method)
    s = prunelab.score(model, "l1_channel", axis="output")  # dim 0 holds every output channel
    for name in ("1.weight", "2.weight"):
        w = dict(model.named_parameters())[name].detach()
        assert s.groups[name] == 0
        for c in range(w.shape[0]):
            torch.testing.assert_close(s[name][c], w[c].abs().sum().expand(w.shape[1:]))
    ok = prunelab.prune(model, "l1_channel", 0.5, exclude=["1.weight", "2.weight"])
    assert set(ok) == {"0.weight"}
    # transposed: (in, out/groups, ...), so the output axis is the per-group one
    up = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2))
    with pytest.raises(ValueError, match=r"'0\.weight'.*groups=2.*axis='input'"):
        prunelab.score(up, "l1_channel", axis="output")
    assert prunelab.score(up, "l1_channel").groups["0.weight"] == 0
