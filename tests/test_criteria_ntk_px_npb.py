"""NTK-SAP, PX and NPB, each against an independent computation of its defining formula on a tiny network.

NTK-SAP (Wang et al. 2023, §4): plain autograd through a hand-written MLP with the documented random draws.
PX (Iurada et al. 2024, §3): an explicit enumeration of every input-to-output path of a ReLU MLP.
NPB (Pham et al. 2023, §4): brute force over every mask of a layer with the layer's budget.
"""

from __future__ import annotations

import copy
import itertools
import math
import re

import pytest
import torch
from torch import nn

import prunelab
from prunelab.masks import Mask


def mlp(dims=(6, 5, 3), bias=True, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def some_pruned(model, seed=3, keep=0.7):
    """A mask with about 30% of each weight matrix pruned at random."""
    g = torch.Generator().manual_seed(seed)
    mask = Mask.ones(model)
    return Mask({n: torch.rand(k.shape, generator=g) < keep for n, k in mask.items()})


# ---- NTK-SAP ------------------------------------------------------------------------------------------------


def ntk_sap_by_hand(model, mask, epsilon, samples, batch, seed, generator=None):
    """Σ_r Σ_x ‖f(x; θ₀ ⊙ m) − f(x; (θ₀ + Δθ) ⊙ m)‖², differentiated by autograd w.r.t. the gates m of a
    hand-written 2-layer ReLU MLP; θ₀ Kaiming normal (fan-in), Δθ = ε·N(0, 1), x ~ N(0, I), drawn in the order
    the criterion documents, from ``generator`` (where it left off) or a new one seeded with ``seed``."""
    lin1, lin2 = model[0], model[2]
    m1 = mask["0.weight"].double().requires_grad_(True)
    m2 = mask["2.weight"].double().requires_grad_(True)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        w1 = torch.empty(lin1.weight.shape).normal_(0.0, math.sqrt(2.0 / lin1.in_features), generator=g)
        w2 = torch.empty(lin2.weight.shape).normal_(0.0, math.sqrt(2.0 / lin2.in_features), generator=g)
        d1 = torch.randn(w1.shape, generator=g) * epsilon
        d2 = torch.randn(w2.shape, generator=g) * epsilon
        x = torch.randn((batch, lin1.in_features), generator=g).double()
        b1, b2 = lin1.bias.detach().double(), lin2.bias.detach().double()

        def f(a, b, x=x, b1=b1, b2=b2):
            return torch.relu(x @ (a.double() * m1).T + b1) @ (b.double() * m2).T + b2

        total = total + ((f(w1, w2) - f(w1 + d1, w2 + d2)) ** 2).sum()
    g1, g2 = torch.autograd.grad(total, [m1, m2])
    return {"0.weight": g1.abs() * m1.detach(), "2.weight": g2.abs() * m2.detach()}


@pytest.mark.parametrize("samples", [1, 3])
def test_ntk_sap_equals_autograd_of_the_finite_difference(samples):
    model = mlp()
    mask = some_pruned(model)
    got = prunelab.score(model, "ntk_sap", mask=mask, input_shape=(6,), epsilon=0.05, weight_samples=samples,
                         noise_batch_size=7, seed=11)
    want = ntk_sap_by_hand(model, mask, 0.05, samples, 7, 11)
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=2e-4, atol=1e-7)
        assert bool((got[n][~mask[n]] == 0).all())


def test_ntk_sap_is_weight_agnostic_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    model.train()
    before = copy.deepcopy(model.state_dict())
    a = prunelab.score(model, "ntk_sap", input_shape=(6,), seed=2)
    with torch.no_grad():
        model[0].weight.mul_(7.0)  # other weights, same initializer draw: the same scores
    b = prunelab.score(model, "ntk_sap", input_shape=(6,), seed=2)
    with torch.no_grad():
        model[0].weight.div_(7.0)
    for n in a:
        torch.testing.assert_close(a[n], b[n])
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_ntk_sap_prunes_iteratively_with_fresh_draws():
    model = mlp(dims=(10, 8, 4))
    mask = prunelab.prune(model, "ntk_sap", sparsity=0.6, input_shape=(10,))
    assert mask.num_kept == round(0.4 * mask.num_total)
    other = prunelab.prune(model, "ntk_sap", sparsity=0.6, input_shape=(10,), seed=1)
    assert any(bool((mask[n] != other[n]).any()) for n in mask)  # the seed changes the draws


def test_ntk_sap_draws_advance_between_pruning_rounds():
    """Two rounds of prune(): the second scores with the draws that follow the first's in one generator (new
    θ₀, Δθ and noise), as a hand loop with one generator does; restarting the generator gives another mask."""
    model = mlp()
    options = dict(epsilon=0.05, weight_samples=2, noise_batch_size=5)
    got = prunelab.prune(model, "ntk_sap", sparsity=0.64, input_shape=(6,), iterations=2, seed=3, **options)
    names = ["0.weight", "2.weight"]

    def keep_top(scores, kept):
        flat = torch.cat([scores[n].reshape(-1) for n in names])
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.argsort(flat, descending=True)[:kept]] = True
        sizes = [scores[n].numel() for n in names]
        return {n: k.view(scores[n].shape) for n, k in zip(names, keep.split(sizes))}

    def hand_loop(restart):
        g = torch.Generator().manual_seed(3)
        dense = {n: torch.ones_like(dict(model.named_parameters())[n], dtype=torch.bool) for n in names}
        first = keep_top(ntk_sap_by_hand(model, dense, 0.05, 2, 5, 3, generator=g), 27)  # density 0.6 of 45
        g = torch.Generator().manual_seed(3) if restart else g
        return keep_top(ntk_sap_by_hand(model, first, 0.05, 2, 5, 3, generator=g), 16)  # 45 - round(0.64 * 45)

    want, restarted = hand_loop(False), hand_loop(True)
    assert got.num_kept == 16
    for n in names:
        assert torch.equal(got[n].cpu(), want[n])
    assert any(not torch.equal(want[n], restarted[n]) for n in names)  # the test tells the two apart


@pytest.mark.parametrize("option, value, words", [
    ("epsilon", 0.0, "epsilon must be a positive number"),
    ("weight_samples", 0, "weight_samples must be an integer >= 1"),
    ("noise_batch_size", 1.5, "noise_batch_size must be an integer >= 1"),
    ("init", "kaiming_nromal", "did you mean 'kaiming_normal'"),
    ("seed", True, "seed must be an integer, got True"),
])
def test_ntk_sap_refuses_bad_options(option, value, words):
    with pytest.raises(ValueError, match=words):
        prunelab.score(mlp(), "ntk_sap", input_shape=(6,), **{option: value})


# ---- PX -----------------------------------------------------------------------------------------------------


def px_by_paths(model, mask, x):
    """PX's saliency by enumerating every path of a ReLU MLP (biases as paths from a constant input 1):
    S(w) = Σ_x Σ_k z1_k(x) · Σ_{p ∋ w, p → k} Π_{θ ∈ p} θ², z1_k(x) = Σ_{p → k} a_p(x) x_{i(p)}² (pruned weights 0)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().double() * mask[n].double() for m, n in zip(linears, names)]
    ones = [mask[n].double() for n in names]
    has_bias = linears[0].bias is not None
    bs = [m.bias.detach().double() if has_bias else torch.zeros(m.out_features, dtype=torch.float64) for m in linears]
    depth = len(ws)
    # activation patterns of the real masked network, per example and hidden layer
    gates, h = [], x.double()
    for i in range(depth - 1):
        h = h @ ws[i].T + bs[i]
        gates.append((h > 0).double())
        h = torch.relu(h)
    widths = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    # a path: (first layer l, its source s, then one node per layer l..depth-1); l = 0 starts at input s,
    # l > 0 starts at the bias of unit s of layer l - 1 ... written as a node at layer l
    paths = []
    for i in range(widths[0]):
        for rest in itertools.product(*[range(widths[j + 1]) for j in range(depth)]):
            paths.append((0, i, rest))
    for l in range(depth if has_bias else 0):
        for rest in itertools.product(*[range(widths[j + 1]) for j in range(l, depth)]):
            paths.append((l + 1, None, rest))  # bias of layer l at unit rest[0]
    scores = [torch.zeros_like(w) for w in ws]
    n_out = widths[-1]
    z1 = torch.zeros(len(x), n_out, dtype=torch.float64)
    for first, src, rest in paths:
        nodes = list(rest)
        start = first - 1 if first > 0 else 0  # the layer of nodes[0]
        # structure (ones) and value (squares) along the path; edges are layers start+1 .. depth-1 (+ input edge)
        if first == 0:
            struct = ones[0][nodes[0], src]
            value = ws[0][nodes[0], src] ** 2
            edges = [(0, nodes[0], src)]
            source = x[:, src].double() ** 2
        else:
            struct = torch.tensor(1.0, dtype=torch.float64)
            value = bs[start][nodes[0]] ** 2
            edges = []
            source = torch.ones(len(x), dtype=torch.float64)
        for j in range(1, len(nodes)):
            layer = start + j
            struct = struct * ones[layer][nodes[j], nodes[j - 1]]
            value = value * ws[layer][nodes[j], nodes[j - 1]] ** 2
            edges.append((layer, nodes[j], nodes[j - 1]))
        active = torch.ones(len(x), dtype=torch.float64)
        for j, node in enumerate(nodes[:-1]):
            active = active * gates[start + j][:, node]
        z1[:, nodes[-1]] += struct * active * source
    for first, src, rest in paths:  # second sweep: each weight's share of z2, weighted by z1
        nodes = list(rest)
        start = first - 1 if first > 0 else 0
        if first == 0:
            value, edges = ws[0][nodes[0], src] ** 2, [(0, nodes[0], src)]
        else:
            value, edges = bs[start][nodes[0]] ** 2, []
        for j in range(1, len(nodes)):
            value = value * ws[start + j][nodes[j], nodes[j - 1]] ** 2
            edges.append((start + j, nodes[j], nodes[j - 1]))
        for layer, a, b in edges:
            scores[layer][a, b] += z1[:, nodes[-1]].sum() * value
    return dict(zip(names, scores))


@pytest.mark.parametrize("bias", [False, True])
def test_px_equals_the_path_enumeration(bias):
    model = mlp(dims=(4, 3, 3, 2), bias=bias, seed=5)
    if bias:
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    m.bias.uniform_(-0.5, 0.5)
    mask = some_pruned(model, seed=4, keep=0.8)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(9))
    y = torch.zeros(5, dtype=torch.long)
    got = prunelab.score(model, "px", batch=(x, y), mask=mask)
    want = px_by_paths(model, mask, x)
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=1e-5, atol=1e-9)
    assert all(bool((got[n] >= 0).all()) for n in got)
    assert any(bool((got[n] > 0).any()) for n in got)


def test_px_counts_paths_without_batchnorm_and_squares_its_scale_in_the_kernel():
    """BatchNorm in PX as prunelab treats it, its own choice following the path decomposition (not the authors'
    code, which runs its copies in train mode and leaves ``bn``/``fc`` tensors as they are): the identity in
    ``z1`` (a norm layer is no connection) and squared with every other tensor in ``z2``, every module in eval
    mode, where an eval-mode BatchNorm of scale γ, no shift and running variance σ² multiplies its channel by
    γ² / √(σ⁴ + ε). The path enumeration of the same network without the BatchNorm, its per-channel factor
    folded into the rows of the layer before (w·γ / (σ⁴ + ε)^(1/4)), gives the same saliencies (θ² · ∂R/∂θ² does
    not change when a row is rescaled), and the same ReLU gates (γ > 0)."""
    g = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    bn = model[1]
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(5, 4, generator=g))
        model[3].weight.copy_(torch.randn(3, 5, generator=g))
        bn.weight.copy_(torch.rand(5, generator=g) * 2 + 0.2)
        bn.running_var.copy_(torch.rand(5, generator=g) * 3 + 0.2)
    model.eval()
    mask = some_pruned(model, seed=4, keep=0.8)
    x = torch.randn(6, 4, generator=g)
    got = prunelab.score(model, "px", batch=(x, torch.zeros(6, dtype=torch.long)), mask=mask)
    folded = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Identity(), nn.ReLU(), nn.Linear(5, 3, bias=False))
    factor = bn.weight.detach().double() / (bn.running_var.detach().double() ** 2 + bn.eps) ** 0.25
    with torch.no_grad():
        folded.double()
        folded[0].weight.copy_(model[0].weight.double() * factor[:, None])
        folded[3].weight.copy_(model[3].weight.double())
    want = px_by_paths(folded, mask, x.double())
    for n in want:
        torch.testing.assert_close(got[n].double(), want[n], rtol=1e-5, atol=1e-9)
    assert any(bool((want[n] > 0).any()) for n in want)


def test_px_sums_over_a_list_of_batches_and_leaves_the_model_alone():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    model.train()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    whole = prunelab.score(model, "px", batch=(x, y))
    parts = prunelab.score(model, "px", batch=[(x[:3], y[:3]), (x[3:], y[3:])])
    micro = prunelab.score(model, "px", batch=(x, y), score_batch_size=3)
    for n in whole:
        torch.testing.assert_close(whole[n], parts[n])
        torch.testing.assert_close(whole[n], micro[n])
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    mask = prunelab.prune(model, "px", sparsity=0.5, batch=(x, y), iterations=5)
    assert mask.num_kept == round(0.5 * mask.num_total)


def test_px_refuses_a_network_without_paths():
    model = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="GELU, which has no path decomposition"):
        prunelab.score(model, "px", batch=(torch.randn(3, 4), torch.zeros(3, dtype=torch.long)))


# ---- NPB ----------------------------------------------------------------------------------------------------


def npb_objective(keep, paths, alpha, best_paths, beta=0.0):
    """Pham et al. 2023, §4: α·(effective inputs + effective outputs)/(in + out) + (1 − α)·Σ_kept P_i / best,
    plus the authors' code's β·(non-empty kernels)/(kept weights). ``keep``: a 0/1 array (out, in, kernel); a node
    is effective when it has a kept weight."""
    n_out, n_in = keep.shape[:2]
    per_pair = keep.reshape(n_out, n_in, -1).sum(-1)
    nodes = int((per_pair.sum(0) > 0).sum() + (per_pair.sum(1) > 0).sum())
    path_term = float((per_pair * paths[None, :]).sum())
    kernels = int((per_pair > 0).sum()) / int(keep.sum())
    return (alpha * nodes / (n_in + n_out) + (1 - alpha) * (path_term / best_paths if best_paths else 0.0)
            + beta * kernels)


def brute_force(shape, allowed, budget, paths, alpha, beta=0.0, cap=None):
    """(best objective, best path term) over all masks of ``budget`` weights among ``allowed`` entries with at
    most ``cap`` per kernel, the cap raised to the smallest for which such a mask exists (the authors' rule);
    :func:`npb_objective` for every mask at once."""
    import numpy as np

    cells = [c for c in itertools.product(*[range(s) for s in shape]) if allowed[c]]
    chosen = np.array(list(itertools.combinations(range(len(cells)), budget)))
    keep = np.zeros((len(chosen), len(cells)), dtype=np.int64)
    np.put_along_axis(keep, chosen, 1, axis=1)
    per_pair = np.zeros((len(chosen), shape[0], shape[1]), dtype=np.int64)  # kept entries of each kernel
    for k, (j, i, _) in enumerate(cells):
        per_pair[:, j, i] += keep[:, k]
    if cap is not None:
        largest = per_pair.max(axis=(1, 2))
        cap = min(c for c in range(cap, shape[2] + 1) if (largest <= c).any())
        per_pair = per_pair[largest <= cap]
    path_term = (per_pair * paths[None, None, :]).sum(axis=(1, 2))
    best_paths = float(path_term.max())
    nodes = (per_pair.sum(axis=1) > 0).sum(axis=1) + (per_pair.sum(axis=2) > 0).sum(axis=1)
    kernels = (per_pair > 0).sum(axis=(1, 2)) / budget
    values = (alpha * nodes / (shape[0] + shape[1]) + (1 - alpha) * (path_term / best_paths if best_paths else 0.0)
              + beta * kernels)
    return float(values.max()), best_paths


def place(counts, allowed):
    """Any placement of the counts within the kernels (the objective does not depend on it)."""
    import numpy as np

    keep = np.zeros(allowed.shape, dtype=np.int64)
    for j, i in itertools.product(range(allowed.shape[0]), range(allowed.shape[1])):
        slots = [k for k in range(allowed.shape[2]) if allowed[j, i, k]][: counts[j, i]]
        keep[j, i, slots] = 1
    return keep


@pytest.mark.parametrize("alpha", [0.01, 0.5, 0.9])
@pytest.mark.parametrize("kernel", [1, 2])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "some-pruned"])
@pytest.mark.parametrize("budget", [2, 5])
def test_npb_layer_solution_is_the_brute_force_optimum(alpha, kernel, dense, budget):
    """Dense layers take the closed form, layers with pruned entries the flow LP: both must reach the optimum."""
    import numpy as np

    from prunelab.scores.node_path_balance import solve_layer

    shape = (3, 4, kernel)
    g = torch.Generator().manual_seed(kernel)
    allowed = (torch.rand(shape, generator=g) < 0.8).numpy() | dense
    paths = np.array([5.0, 1.0, 0.0, 2.5])
    best, best_paths = brute_force(shape, allowed, budget, paths, alpha)
    caps = allowed.sum(-1)
    counts = solve_layer(paths, caps, budget, alpha, torch.Generator().manual_seed(budget))
    assert counts.sum() == budget and (counts <= caps).all() and (counts >= 0).all()
    assert npb_objective(place(counts, allowed), paths, alpha, best_paths) == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.01, 0.5])
@pytest.mark.parametrize("beta", [0.0, 1.0, 10.0])
@pytest.mark.parametrize("cap", [None, 1, 2])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "some-pruned"])
@pytest.mark.parametrize("budget", [3, 7, 10])
def test_npb_layer_solution_with_the_kernel_term_and_cap_is_the_brute_force_optimum(alpha, beta, cap, dense,
                                                                                     budget):
    """The authors' code's β·(non-empty kernels)/n_l and ``max_per_kernel`` on a 2 × 3 layer of 3-entry kernels:
    the closed form (dense, any cap) and the flow LP (some entries pruned) reach the best of every mask of the
    budget; budget 10 with cap 1 needs the cap raised (6 kernels hold at most 6)."""
    import numpy as np

    from prunelab.scores.node_path_balance import solve_layer

    shape = (2, 3, 3)
    g = torch.Generator().manual_seed(budget)
    allowed = (torch.rand(shape, generator=g) < 0.75).numpy() | dense
    paths = np.array([4.0, 0.0, 1.5])
    best, best_paths = brute_force(shape, allowed, budget, paths, alpha, beta, cap)
    caps = allowed.sum(-1)
    counts = solve_layer(paths, caps, budget, alpha, torch.Generator().manual_seed(1), beta=beta,
                         max_per_kernel=cap)
    assert counts.sum() == budget and (counts <= caps).all() and (counts >= 0).all()
    if cap is not None and budget <= np.minimum(caps, cap).sum():
        assert (counts <= cap).all()
    got = npb_objective(place(counts, allowed), paths, alpha, best_paths, beta)
    assert got == pytest.approx(best, abs=1e-12)


@pytest.mark.filterwarnings("ignore::prunelab.scores.node_path_balance.NPBCapWarning")
def test_npb_spreads_a_conv_layer_over_its_kernels_and_caps_them():
    """prune() with beta and max_per_kernel: the first convolution's mask is the brute-force optimum of its
    layer objective (all-ones input: every input channel has the same number of paths), and the default beta=1
    puts one weight in every kernel before a second in any, where beta=0 may not."""
    import numpy as np

    model = nn.Sequential(nn.Conv2d(2, 2, (1, 3)), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 1 * 2, 3))
    for beta, cap in [(1.0, None), (1.0, 2), (4.0, 1)]:
        mask = prunelab.prune(model, "npb", sparsity=0.5, input_shape=(2, 1, 4), budgets="uniform", alpha=0.3,
                              beta=beta, max_per_kernel=cap or 0, seed=2)
        keep = mask["0.weight"].numpy().astype(np.int64).reshape(2, 2, 3)
        assert keep.sum() == 6
        best, best_paths = brute_force((2, 2, 3), np.ones((2, 2, 3), bool), 6, np.full(2, 2.0), 0.3, beta, cap)
        assert npb_objective(keep, np.full(2, 2.0), 0.3, best_paths, beta) == pytest.approx(best, abs=1e-12)
        assert (keep.sum(-1) > 0).all()  # 4 kernels, 6 weights: none empty
        if cap is not None:
            assert keep.sum(-1).max() <= max(cap, 2)  # cap 1 cannot hold 6 in 4 kernels: raised to 2


def test_npb_checks_beta_and_max_per_kernel_and_says_when_it_raises_the_cap():
    from prunelab.scores.node_path_balance import NPBCapWarning

    conv = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        prunelab.score(conv, "npb", input_shape=(2, 4, 4), sparsity=0.5, beta=-1.0)
    with pytest.raises(ValueError, match="max_per_kernel must be an integer >= 0"):
        prunelab.score(conv, "npb", input_shape=(2, 4, 4), sparsity=0.5, max_per_kernel=-1)
    with pytest.raises(ValueError, match="max_per_kernel must be an integer >= 0"):
        prunelab.score(conv, "npb", input_shape=(2, 4, 4), sparsity=0.5, max_per_kernel="none")
    with pytest.warns(NPBCapWarning, match=r"max_per_kernel=1 cannot hold .* 0\.weight to 8"):
        prunelab.score(conv, "npb", input_shape=(2, 4, 4), sparsity=0.2, budgets="uniform", max_per_kernel=1)
    method = prunelab.get_method("npb")  # options from a run's text, the defaults read back as themselves
    assert method.parse_options(["max_per_kernel=5", "beta=2"]) == {"beta": 2.0, "max_per_kernel": 5}
    assert method.text_options["beta"] == 1.0 and method.text_options["max_per_kernel"] == 0


def test_npb_mask_is_layerwise_optimal_on_an_mlp():
    import numpy as np

    model = mlp(dims=(4, 3, 2), bias=False)
    alpha = 0.3
    scores = prunelab.score(model, "npb", input_shape=(4,), sparsity=0.5, budgets="uniform", alpha=alpha)
    mask = prunelab.prune(model, "npb", sparsity=0.5, input_shape=(4,), budgets="uniform", alpha=alpha)
    first, second = mask["0.weight"].numpy().astype(np.int64), mask["2.weight"].numpy().astype(np.int64)
    for n in mask:
        assert bool((mask[n] == (scores[n] > 0)).all())
    assert first.sum() == 6 and second.sum() == 3  # uniform budgets: half of 12, half of 6
    # layer 1: every input node has one path (the all-ones input)
    p1 = np.ones(4)
    best1, paths1 = brute_force((3, 4, 1), np.ones((3, 4, 1), bool), 6, p1, alpha)
    assert npb_objective(first[..., None], p1, alpha, paths1) == pytest.approx(best1, abs=1e-12)
    # layer 2: paths into each hidden node through the layer-1 mask found
    p2 = first.sum(1).astype(np.float64)
    best2, paths2 = brute_force((2, 3, 1), np.ones((2, 3, 1), bool), 3, p2, alpha)
    assert npb_objective(second[..., None], p2, alpha, paths2) == pytest.approx(best2, abs=1e-12)


def test_npb_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="npb needs the target sparsity"):
        prunelab.score(mlp(), "npb", input_shape=(6,))
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prunelab.score(mlp(), "npb", input_shape=(6,), sparsity=1.5)
    with pytest.raises(ValueError, match="seed must be an integer, got 1.0"):
        prunelab.score(mlp(), "npb", input_shape=(6,), sparsity=0.5, seed=1.0)
    with pytest.raises(ValueError, match="alpha must be a number in"):
        prunelab.score(mlp(), "npb", input_shape=(6,), sparsity=0.5, alpha=1.5)
    with pytest.raises(ValueError, match="unknown sparsity distribution 'erkk'"):
        prunelab.score(mlp(), "npb", input_shape=(6,), sparsity=0.5, budgets="erkk")
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(3))
    model(torch.ones(1, 4, 5, 5))
    with pytest.raises(ValueError, match="grouped Conv2d"):
        prunelab.score(model, "npb", input_shape=(4, 5, 5), sparsity=0.5)
    with pytest.raises(ValueError, match="'0.bias' is not a layer's weight"):
        prunelab.score(mlp(), "npb", input_shape=(6,), sparsity=0.5, include_bias=True)


def test_npb_on_a_convnet_keeps_each_layer_budget_and_prune_returns_its_mask():
    from prunelab.densities import shape_densities

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5))
    sparsity = 0.7
    scores = prunelab.score(model, "npb", input_shape=(2, 6, 6), sparsity=sparsity, seed=1)
    mask = prunelab.prune(model, "npb", sparsity=sparsity, input_shape=(2, 6, 6), seed=1)
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    want = shape_densities(shapes, sparsity, "erk")
    total = sum(math.prod(s) for s in shapes.values())
    assert mask.num_kept == total - math.floor(sparsity * total + 0.5)
    for n, s in scores.items():
        assert set(s.unique().tolist()) <= {0.0, 1.0}
        assert bool((mask[n] == (s > 0)).all())
        assert abs(int(mask[n].sum()) - want[n] * math.prod(shapes[n])) < 1.0  # ERK budget, rounded


def test_ntk_sap_normalizes_both_networks_with_the_unperturbed_statistics():
    """With BatchNorm, the authors' code sets the running statistics from the unperturbed network on the noise
    (momentum 1, so the unbiased variance) and then evaluates both networks in eval mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.2, 0.2)
    mask = some_pruned(model)
    got = prunelab.score(model, "ntk_sap", mask=mask, input_shape=(6,), epsilon=0.05, noise_batch_size=9, seed=4)
    m1 = mask["0.weight"].double().requires_grad_(True)
    m2 = mask["3.weight"].double().requires_grad_(True)
    g = torch.Generator().manual_seed(4)
    w1 = torch.empty(5, 6).normal_(0.0, math.sqrt(2.0 / 6), generator=g).double()
    w2 = torch.empty(3, 5).normal_(0.0, math.sqrt(2.0 / 5), generator=g).double()
    d1 = (torch.randn(5, 6, generator=g) * 0.05).double()
    d2 = (torch.randn(3, 5, generator=g) * 0.05).double()
    x = torch.randn((9, 6), generator=g).double()
    b1, b2 = model[0].bias.detach().double(), model[3].bias.detach().double()
    gamma, beta = model[1].weight.detach().double(), model[1].bias.detach().double()
    with torch.no_grad():
        h = x @ (w1 * mask["0.weight"].double()).T + b1
        mean, var = h.mean(0), h.var(0, unbiased=True)

    def f(a, b):
        z = (x @ (a * m1).T + b1 - mean) / torch.sqrt(var + model[1].eps) * gamma + beta
        return torch.relu(z) @ (b * m2).T + b2

    total = ((f(w1, w2) - f(w1 + d1, w2 + d2)) ** 2).sum()
    g1, g2 = torch.autograd.grad(total, [m1, m2])
    torch.testing.assert_close(got["0.weight"].double(), g1.abs() * m1.detach(), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(got["3.weight"].double(), g2.abs() * m2.detach(), rtol=2e-4, atol=1e-7)


def _random_norm(norm: nn.Module, g: torch.Generator) -> nn.Module:
    """A BatchNorm with random scale, shift (some negative: a ReLU after it would zero those channels) and
    running statistics, in eval mode."""
    with torch.no_grad():
        n = norm.num_features
        norm.weight.copy_(torch.rand(n, generator=g) * 2 + 0.1)
        norm.bias.copy_(torch.randn(n, generator=g) * 3)
        norm.running_mean.copy_(torch.randn(n, generator=g) * 2)
        norm.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.1)
    return norm.eval()


@pytest.mark.parametrize("conv", [False, True])
def test_npb_path_counts_do_not_go_through_batchnorm(conv):
    """A normalization layer is no connection: the same network with and without BatchNorm layers (random scale,
    shift and statistics, some shifts negative before a ReLU) gets the same NPB mask. ``nn.Identity`` holds the
    place of each norm layer in the plain network, so the parameter names agree."""
    g = torch.Generator().manual_seed(11)

    def net(norm):
        if conv:
            return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), norm(4), nn.ReLU(), nn.Conv2d(4, 5, 3), norm(5),
                                 nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
        return nn.Sequential(nn.Linear(6, 8), norm(8), nn.ReLU(), nn.Linear(8, 7), norm(7), nn.ReLU(), nn.Linear(7, 3))

    bn = nn.BatchNorm2d if conv else nn.BatchNorm1d
    torch.manual_seed(0)
    with_norm = net(lambda n: _random_norm(bn(n), g))
    torch.manual_seed(0)
    plain = net(lambda n: nn.Identity())
    shape = (2, 6, 6) if conv else (6,)
    for sparsity in (0.5, 0.8):
        want = prunelab.prune(plain, "npb", sparsity=sparsity, input_shape=shape, seed=2)
        got = prunelab.prune(with_norm, "npb", sparsity=sparsity, input_shape=shape, seed=2)
        assert set(got) == set(want)
        for n in want:
            assert torch.equal(got[n], want[n]), n
    assert not with_norm[1].training  # the caller's model is left as it was


def test_validators_shared_by_the_criteria_and_the_models():
    """One check each for the target sparsity of a criterion that builds its mask to a budget and for a seed,
    in one line, naming who needs the sparsity; used by NPB, PHEW, NTK-SAP and the model factory."""
    from prunelab.models import create
    from prunelab.models.initializers import initialize
    from prunelab.validate import check_seed, check_target_sparsity

    assert check_seed(3) == 3 and check_target_sparsity(0.25, "npb") == 0.25
    with pytest.raises(ValueError, match=r"^npb needs the target sparsity: .*pass sparsity=\.\.\.$"):
        check_target_sparsity(None, "npb")
    with pytest.raises(ValueError, match=r"^sparsity must be a number in \[0, 1\).*got 2.*compression ratio"):
        check_target_sparsity(2, "phew")
    for bad in (True, 1.0, "1", None):
        with pytest.raises(ValueError, match=rf"^data seed must be an integer, got {re.escape(repr(bad))}$"):
            check_seed(bad, "data seed")
    with pytest.raises(ValueError, match="seed must be an integer, got 'a'"):
        create("lenet_300_100", input_shape=(1, 28, 28), num_classes=10, seed="a")
    with pytest.raises(ValueError, match="seed must be an integer, got 0.5"):
        initialize(mlp(), "kaiming_normal", seed=0.5)
