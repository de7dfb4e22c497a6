"""The criteria published after prunelab's starting papers (issue 31), each against an independent computation of
its defining formula on a tiny network: FORCE and Iter-SNIP (de Jorge et al. 2021) by a plain-autograd re-scoring
loop, ProsPr (Alizadeh et al. 2022) by differentiating through SGD steps written out here, LAMP (Lee et al. 2021)
by a brute-force double loop, PHEW (Patil & Dovrolis 2021) by the walk statistics and the paths of its mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab.scores.phew import walk_visits


def _mlp(sizes=(8, 12, 3), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def _batch(n=24, features=8, classes=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g, dtype=dtype), torch.arange(n) % classes


def _mlp_forward(ws, bs, x):
    """The two-layer MLP written out: what the tests differentiate, sharing no code with prunelab."""
    h = torch.relu(x @ ws[0].T + bs[0])
    return h @ ws[1].T + bs[1]


def _pruned_count(sparsity, total):
    return min(total, math.floor(sparsity * total + 0.5))


# ---- FORCE and Iter-SNIP (de Jorge et al. 2021) ----------------------------------------------------------------

def _progressive(model, x, y, sparsity, steps, revive):
    """de Jorge et al.'s loop: T steps to density d^(t/T); score |theta * dL/dw| at w = theta * c (FORCE: all
    weights, pruned ones may return) or |theta * c * dL/dw| with removal permanent (Iter-SNIP). Ties: the first
    weight in (layer, flattened) order is pruned first, prunelab's rule. Returns the final keep mask and whether any
    weight pruned at one step was kept at a later one."""
    thetas = [model[0].weight.detach(), model[2].weight.detach()]
    bs = [model[0].bias.detach(), model[2].bias.detach()]
    sizes = [t.numel() for t in thetas]
    total = sum(sizes)
    keep = torch.ones(total, dtype=torch.bool)
    ever_pruned = torch.zeros(total, dtype=torch.bool)
    revived = False
    for t in range(1, steps + 1):
        density = (1 - sparsity) ** (t / steps)
        n_prune = _pruned_count(sparsity if t == steps else 1 - density, total)
        cs = keep.to(thetas[0].dtype).split(sizes)
        ws = [(th * c.view_as(th)).requires_grad_(True) for th, c in zip(thetas, cs)]
        loss = F.cross_entropy(_mlp_forward(ws, bs, x), y)
        gs = torch.autograd.grad(loss, ws)
        base = thetas if revive else [w.detach() for w in ws]
        score = torch.cat([(b * g).abs().reshape(-1) for b, g in zip(base, gs)])
        if not revive:
            score[~keep] = -math.inf  # already pruned: ranked as pruned first
        order = torch.sort(score, stable=True).indices  # ascending; equal scores: the first position first
        new_keep = torch.ones(total, dtype=torch.bool)
        new_keep[order[:n_prune]] = False
        revived |= bool((new_keep & ever_pruned).any())
        ever_pruned |= ~new_keep
        keep = new_keep
    return keep, revived


@pytest.mark.parametrize("method, revive", [("force", True), ("iter_snip_dejorge", False)])
def test_progressive_skeletonization_matches_the_plain_autograd_loop(method, revive):
    model = _mlp()
    x, y = _batch()
    expected, revived = _progressive(model, x, y, sparsity=0.9, steps=6, revive=revive)
    mask = prunelab.prune(model, method, 0.9, batch=(x, y), iterations=6)
    got = torch.cat([mask["0.weight"].reshape(-1), mask["2.weight"].reshape(-1)])
    assert torch.equal(got, expected)
    if revive:  # the case is one where revival matters: without it the mask would differ
        assert revived
        permanent, _ = _progressive(model, x, y, sparsity=0.9, steps=6, revive=False)
        assert not torch.equal(permanent, expected)


def test_force_scores_pruned_weights_and_iter_snip_does_not():
    model = _mlp()
    x, y = _batch()
    mask = prunelab.prune(model, "snip", 0.5, batch=(x, y))
    force = prunelab.score(model, "force", batch=(x, y), mask=mask)
    snip = prunelab.score(model, "iter_snip_dejorge", batch=(x, y), mask=mask)
    pruned = ~mask["0.weight"]
    assert bool((force["0.weight"][pruned] > 0).any())
    assert bool((snip["0.weight"][pruned] == 0).all())
    assert torch.allclose(force["0.weight"][~pruned], snip["0.weight"][~pruned])


def test_progressive_defaults_are_de_jorge_et_al_s():
    assert prunelab.get_method("force").default_iterations == 60
    assert prunelab.get_method("iter_snip_dejorge").default_iterations == 60
    assert prunelab.get_method("force").revives and not prunelab.get_method("iter_snip_dejorge").revives


# ---- ProsPr (Alizadeh et al. 2022) -----------------------------------------------------------------------------

def _prospr_by_hand(model, x, y, steps, lr, momentum=0.0, first_order=False, keep=None):
    """dL(w_M)/dc at c = 1 with w_0 = c * theta, every parameter taking ``steps`` SGD steps, written out;
    ``keep``: a mask of the two weights, pruned entries at 0 in w_0 and in every update."""
    keep = keep or [torch.ones_like(model[0].weight), torch.ones_like(model[2].weight)]
    thetas = [model[0].weight.detach() * keep[0], model[2].weight.detach() * keep[1]]
    cs = [torch.ones_like(t, requires_grad=True) for t in thetas]
    params = [thetas[0] * cs[0], model[0].bias.detach().clone().requires_grad_(True),
              thetas[1] * cs[1], model[2].bias.detach().clone().requires_grad_(True)]
    buffers = [None] * 4
    for _ in range(steps):
        loss = F.cross_entropy(_mlp_forward(params[0::2], params[1::2], x), y)
        grads = torch.autograd.grad(loss, params, create_graph=not first_order)
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if first_order:
                g = g.detach()
            if momentum:
                buffers[i] = g if buffers[i] is None else momentum * buffers[i] + g
                g = buffers[i]
            if i % 2 == 0:
                g = g * keep[i // 2]
            new.append(p - lr * g)
        params = new
    loss = F.cross_entropy(_mlp_forward(params[0::2], params[1::2], x), y)
    return [g.abs() for g in torch.autograd.grad(loss, cs)]


@pytest.mark.parametrize("options", [
    {"steps": 3, "lr": 0.5},
    {"steps": 2, "lr": 0.3, "momentum": 0.9},
    {"steps": 3, "lr": 0.5, "first_order": True},
])
def test_prospr_is_the_meta_gradient_through_the_sgd_steps(options):
    model = _mlp()
    x, y = _batch()
    expected = _prospr_by_hand(model, x, y, **options)
    got = prunelab.score(model, "prospr", batch=(x, y), **options)
    for name, e in zip(("0.weight", "2.weight"), expected):
        torch.testing.assert_close(got[name], e, rtol=1e-9, atol=1e-12)


def test_prospr_on_a_pruned_network_keeps_pruned_weights_at_zero():
    model = _mlp()
    x, y = _batch()
    mask = prunelab.prune(model, "random", 0.6, seed=3)
    keep = [mask["0.weight"].double(), mask["2.weight"].double()]
    expected = _prospr_by_hand(model, x, y, steps=3, lr=0.5, keep=keep)
    got = prunelab.score(model, "prospr", batch=(x, y), mask=mask, steps=3, lr=0.5)
    for name, e in zip(("0.weight", "2.weight"), expected):
        torch.testing.assert_close(got[name], e, rtol=1e-9, atol=1e-12)


def test_prospr_meta_gradient_is_not_snip_nor_its_first_order_approximation():
    model = _mlp()
    x, y = _batch()
    full = prunelab.score(model, "prospr", batch=(x, y), steps=3, lr=0.5)
    first = prunelab.score(model, "prospr", batch=(x, y), steps=3, lr=0.5, first_order=True)
    snip = prunelab.score(model, "snip", batch=(x, y))
    zero = prunelab.score(model, "prospr", batch=(x, y), steps=0)
    torch.testing.assert_close(zero["0.weight"], snip["0.weight"])
    assert not torch.allclose(full["0.weight"], first["0.weight"], rtol=1e-3)
    assert not torch.allclose(full["0.weight"], snip["0.weight"], rtol=1e-3)


def test_prospr_says_it_scores_its_batch_whole():
    with pytest.warns(UserWarning, match="prospr scores its batch whole.*score_batch_size=4 is ignored"):
        prunelab.score(_mlp(), "prospr", batch=_batch(), score_batch_size=4)


@pytest.mark.parametrize("options, message", [
    ({"steps": -1}, "steps"), ({"lr": 0}, "lr"), ({"momentum": 1.0}, "momentum"),
    ({"first_order": "yes"}, "first_order"),
])
def test_prospr_options_are_checked(options, message):
    model = _mlp()
    with pytest.raises(ValueError, match=message):
        prunelab.score(model, "prospr", batch=_batch(), **options)


# ---- LAMP (Lee et al. 2021) ------------------------------------------------------------------------------------

def _lamp_brute_force(w):
    """Lee et al. 2021, §3, Eq. (2) by a double loop: the weights in ascending order of magnitude (equal
    magnitudes in flattened order), each scored W[u]^2 / sum over v >= u in that order of W[v]^2."""
    flat = w.reshape(-1).tolist()
    order = sorted(range(len(flat)), key=lambda i: (abs(flat[i]), i))
    out = [0.0] * len(flat)
    for u in range(len(order)):
        denominator = 0.0
        for v in range(u, len(order)):
            denominator += flat[order[v]] * flat[order[v]]
        out[order[u]] = 0.0 if denominator == 0 else flat[order[u]] ** 2 / denominator
    return torch.tensor(out, dtype=torch.float64).view(w.shape)


def test_lamp_is_the_brute_force_ratio_with_ties():
    model = _mlp((6, 7, 4))
    with torch.no_grad():  # equal magnitudes (ties), opposite signs, zeros
        model[0].weight.copy_(torch.randint(-3, 4, model[0].weight.shape).double())
        model[2].weight.mul_(10)
    scores = prunelab.score(model, "lamp")
    for name in ("0.weight", "2.weight"):
        w = dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(scores[name], _lamp_brute_force(w), rtol=1e-12, atol=0)
        # exactly one weight per tensor scores 1: of its largest magnitudes, the last in flattened order
        ones = (scores[name] == 1.0).reshape(-1).nonzero().reshape(-1).tolist()
        largest = (w.abs() == w.abs().max()).reshape(-1).nonzero().reshape(-1).tolist()
        assert ones == [largest[-1]]


def test_lamp_keeps_a_weight_of_a_tensor_of_equal_magnitudes_at_high_sparsity():
    """Lee et al. 2021, §3: the largest weight of each tensor scores 1, so global selection never empties a layer,
    ties included: a tensor of small equal magnitudes (signs mixed) keeps its last weight in flattened order."""
    model = _mlp((6, 7, 4))
    with torch.no_grad():
        signs = torch.where(torch.arange(42) % 3 == 0, -1.0, 1.0).double().view(7, 6)
        model[0].weight.copy_(0.01 * signs)
        model[2].weight.mul_(10)
    scores = prunelab.score(model, "lamp")
    assert int((scores["0.weight"] == 1.0).sum()) == 1 and float(scores["0.weight"][-1, -1]) == 1.0
    mask = prunelab.prune(model, "lamp", 0.95)
    assert mask.num_kept == 70 - _pruned_count(0.95, 70)
    assert int(mask["0.weight"].sum()) >= 1 and bool(mask["0.weight"][-1, -1])


@pytest.mark.filterwarnings("ignore::prunelab.pruning.removal.TieWarning")
def test_lamp_prunes_globally_by_score_and_position():
    model = _mlp((6, 7, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.randint(-2, 3, model[0].weight.shape).double())
    brute = torch.cat([_lamp_brute_force(model[0].weight).reshape(-1), _lamp_brute_force(model[2].weight).reshape(-1)])
    n_prune = _pruned_count(0.6, brute.numel())
    expected = torch.ones(brute.numel(), dtype=torch.bool)
    expected[torch.sort(brute, stable=True).indices[:n_prune]] = False
    mask = prunelab.prune(model, "lamp", 0.6)
    assert torch.equal(torch.cat([mask["0.weight"].reshape(-1), mask["2.weight"].reshape(-1)]), expected)


def test_lamp_counts_pruned_weights_as_zero():
    model = _mlp((6, 7, 4))
    mask = prunelab.prune(model, "magnitude", 0.5)
    scores = prunelab.score(model, "lamp", mask=mask)
    w = model[0].weight.detach() * mask["0.weight"]
    torch.testing.assert_close(scores["0.weight"], _lamp_brute_force(w), rtol=1e-12, atol=0)


# ---- PHEW (Patil & Dovrolis 2021) ------------------------------------------------------------------------------

def _expected_mlp_visits(ws, forward_walks, backward_walks):
    """Expected number of walks crossing each weight: forward walks start at each input unit equally often and
    step to output unit i from unit u with probability |W[i, u]| / sum_i |W[i, u]|; backward walks likewise from
    the output units with |W[i, u]| / sum_u |W[i, u]|."""
    absw = [w.abs() for w in ws]
    expected = [torch.zeros_like(w) for w in ws]
    p = torch.full((ws[0].shape[1],), 1.0 / ws[0].shape[1], dtype=torch.float64)  # where forward walks are
    for k, a in enumerate(absw):
        step = a / a.sum(0, keepdim=True)  # column u: distribution over the outputs
        expected[k] += forward_walks * step * p[None, :]
        p = (step * p[None, :]).sum(1)
    q = torch.full((ws[-1].shape[0],), 1.0 / ws[-1].shape[0], dtype=torch.float64)
    for k in range(len(absw) - 1, -1, -1):
        step = absw[k] / absw[k].sum(1, keepdim=True)  # row i: distribution over the inputs
        expected[k] += backward_walks * step * q[:, None]
        q = (step * q[:, None]).sum(0)
    return expected


def _max_z(counts, expected):
    return max(float(((c - e).abs() / (e.sqrt() + 1.0)).max()) for c, e in zip(counts, expected))


def test_phew_walks_cross_weights_in_proportion_to_their_magnitude():
    model = _mlp((3, 4, 5, 2), seed=3)
    ws = [model[0].weight.detach(), model[2].weight.detach(), model[4].weight.detach()]
    walks = 40_000
    visits = walk_visits(model, walks, (3,), seed=0)
    counts = [visits["0.weight"], visits["2.weight"], visits["4.weight"]]
    assert _max_z(counts, _expected_mlp_visits(ws, walks // 2, walks // 2)) < 5
    # the check has the power to tell: walks biased by w^2, or uniform, would be far off
    assert _max_z(counts, _expected_mlp_visits([w * w for w in ws], walks // 2, walks // 2)) > 8
    assert _max_z(counts, _expected_mlp_visits([torch.ones_like(w) for w in ws], walks // 2, walks // 2)) > 8


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, bias=False)
        self.fc = nn.Linear(3 * 2 * 2, 2, bias=False)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_phew_walks_through_kernels_and_into_the_flattened_map():
    torch.manual_seed(5)
    model = _ConvNet().double()
    conv, fc = model.conv.weight.detach().abs(), model.fc.weight.detach().abs()
    block = fc.shape[1] // conv.shape[0]  # 4 positions of the feature map per channel
    walks = 40_000
    n_f = n_b = walks // 2
    e_conv, e_fc = torch.zeros_like(conv), torch.zeros_like(fc)
    for u in range(conv.shape[1]):  # forward from input channel u: an entry of conv[:, u] by |w|
        p_entry = conv[:, u] / conv[:, u].sum()
        e_conv[:, u] += n_f / conv.shape[1] * p_entry
        for i in range(conv.shape[0]):
            p_i = float(p_entry[i].sum())
            for pos in range(block):  # a uniform position of channel i, then an output by |w|
                j = i * block + pos
                e_fc[:, j] += n_f / conv.shape[1] * p_i / block * fc[:, j] / fc[:, j].sum()
    for o in range(fc.shape[0]):  # backward from output o: an input position by |w|, its channel, a kernel entry
        p_j = fc[o] / fc[o].sum()
        e_fc[o] += n_b / fc.shape[0] * p_j
        for j in range(fc.shape[1]):
            i = j // block
            e_conv[i] += n_b / fc.shape[0] * float(p_j[j]) * conv[i] / conv[i].sum()
    visits = walk_visits(model, walks, (2, 4, 4), seed=1)
    assert _max_z([visits["conv.weight"], visits["fc.weight"]], [e_conv, e_fc]) < 5


def _off_path(mask, names):
    """Kept weights of an MLP's mask that lie on no path of kept weights from an input to an output."""
    ms = [mask[n].double() for n in names]
    reach_in = [torch.ones(ms[0].shape[1], dtype=torch.float64)]
    for m in ms:  # units reachable from the inputs
        reach_in.append((m @ reach_in[-1] > 0).double())
    reach_out = [torch.ones(ms[-1].shape[0], dtype=torch.float64)]
    for m in reversed(ms):  # units that reach the outputs
        reach_out.insert(0, (m.T @ reach_out[0] > 0).double())
    off = 0
    for k, m in enumerate(ms):
        on = m * reach_out[k + 1][:, None] * reach_in[k][None, :]
        off += int(m.sum() - on.sum())
    return off


@pytest.mark.filterwarnings("ignore::prunelab.pruning.LayerCollapseWarning")
def test_phew_keeps_the_budget_made_of_whole_walks():
    model = _mlp((20, 30, 25, 10), seed=2)
    names = ["0.weight", "2.weight", "4.weight"]
    mask = prunelab.prune(model, "phew", 0.95, seed=7, input_shape=(20,))
    total = sum(mask[n].numel() for n in names)
    assert mask.num_kept == total - _pruned_count(0.95, total)
    assert _off_path(mask, names) <= len(names) - 1  # only the last walk, cut at the budget, may be partial
    again = prunelab.prune(model, "phew", 0.95, seed=7, input_shape=(20,))
    other = prunelab.prune(model, "phew", 0.95, seed=8, input_shape=(20,))
    assert all(torch.equal(mask[n], again[n]) for n in names)
    assert any(not torch.equal(mask[n], other[n]) for n in names)
    magnitude = prunelab.prune(model, "magnitude", 0.95)
    assert _off_path(magnitude, names) > len(names)  # the path check does tell a non-walk mask apart


def test_phew_never_walks_pruned_weights():
    model = _mlp((20, 30, 10), seed=4)
    start = prunelab.prune(model, "random", 0.5, seed=0)
    mask = prunelab.prune(model, "phew", 0.95, mask=start, input_shape=(20,))
    for n in start:
        assert not bool((mask[n] & ~start[n]).any())


def test_phew_refuses_what_it_cannot_walk():
    with pytest.raises(ValueError, match="phew needs the target sparsity"):
        prunelab.score(_mlp(), "phew", input_shape=(8,))
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\).*compression ratio"):
        prunelab.score(_mlp(), "phew", input_shape=(8,), sparsity=10)
    with pytest.raises(ValueError, match="seed must be an integer, got '3'"):
        prunelab.score(_mlp(), "phew", input_shape=(8,), sparsity=0.5, seed="3")

    class Residual(nn.Module):  # shapes that chain (4 -> 6 -> 6 -> 3), a graph that does not
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(h + torch.relu(self.b(h)))

    class Parallel(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 6)

        def forward(self, x):
            return self.a(x) * self.b(x)

    with pytest.raises(ValueError, match="phew walks a chain of layers.*input of 'c.weight' comes from 2"):
        prunelab.prune(Residual(), "phew", 0.9, input_shape=(4,))
    with pytest.raises(ValueError, match="phew walks a chain of layers.*a.weight, b.weight all read the network"):
        prunelab.prune(Parallel(), "phew", 0.9, input_shape=(4,))
    with pytest.raises(ValueError, match="phew walks the chain of layers that a forward pass of ones"):
        prunelab.prune(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3)), "phew", 0.9, input_shape=(5,))
    with pytest.raises(ValueError, match="phew walks through the weights of linear layers"):
        prunelab.prune(nn.Sequential(nn.Linear(4, 6), nn.LSTM(6, 3)), "phew", 0.9, input_shape=(2, 4))


def test_phew_walks_weights_only_so_batchnorm_changes_nothing():
    """PHEW's walks read the weights' magnitudes alone (Patil & Dovrolis 2021): BatchNorm layers with random scale,
    shift and statistics between the layers leave its mask as it is without them."""
    g = torch.Generator().manual_seed(3)

    def net(norm):
        torch.manual_seed(2)
        return nn.Sequential(nn.Linear(10, 16), norm(16), nn.ReLU(), nn.Linear(16, 12), norm(12), nn.ReLU(),
                             nn.Linear(12, 4))

    def bn(n):
        b = nn.BatchNorm1d(n)
        with torch.no_grad():
            b.weight.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            b.bias.copy_(torch.randn(n, generator=g) * 3)
            b.running_mean.copy_(torch.randn(n, generator=g))
            b.running_var.copy_(torch.rand(n, generator=g) + 0.1)
        return b

    plain, with_norm = net(lambda n: nn.Identity()), net(bn)
    want = prunelab.prune(plain, "phew", 0.9, input_shape=(10,), seed=5)
    got = prunelab.prune(with_norm, "phew", 0.9, input_shape=(10,), seed=5)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)


def test_criteria_that_build_their_own_mask_refuse_an_nm_pattern():
    """PHEW's scores are the order its walks reached the weights, NPB's are 0/1: neither ranks the weights of an
    N:M group, so the pattern would choose by position. Refused in one line, before any work (no input_shape is
    even looked at)."""
    assert prunelab.get_method("phew").builds_mask and prunelab.get_method("npb").builds_mask
    assert not prunelab.get_method("magnitude").builds_mask and not prunelab.get_method("synflow").builds_mask
    for method in ("phew", "npb"):
        with pytest.raises(ValueError, match=rf"^{method} builds its own mask .*pattern 2:4 would choose within "
                                             "each group by position") as err:
            prunelab.prune(_mlp((8, 16, 3)), method, 0.6, pattern="2:4")
        assert "\n" not in str(err.value)
    prunelab.prune(_mlp((8, 16, 3)), "magnitude", 0.6, pattern="2:4")  # a ranking criterion still takes it


def test_new_criteria_are_listed_with_family_and_year():
    expected = {"force": ("init_data", 2021), "iter_snip_dejorge": ("init_data", 2021),
                "prospr": ("init_data", 2022), "phew": ("init_data_free", 2021), "lamp": ("after_training", 2021)}
    for name, (family, year) in expected.items():
        m = prunelab.get_method(name)
        assert (m.family, m.year) == (family, year)


# ---- a criterion's own options in a run's settings ---------------------------------------------------------------

def test_method_options_are_typed_checked_and_canonical():
    from prunelab.experiments.hparams import PruneHparams, run_hash

    a = PruneHparams(method="prospr", method_options=("steps=5", "lr=0.050", "first_order=True"))
    b = PruneHparams(method="prospr", method_options=("first_order=true", "lr=0.05", "steps=5"))
    assert a.method_options == ("first_order=true", "lr=0.05", "steps=5")
    assert run_hash("prune", pruning=a) == run_hash("prune", pruning=b)
    assert run_hash("prune", pruning=PruneHparams(method="prospr")) != run_hash("prune", pruning=a)
    assert prunelab.get_method("prospr").parse_options(a.method_options) == {"first_order": True, "lr": 0.05,
                                                                             "steps": 5}
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        PruneHparams(method="prospr", method_options=("stepz=5",))
    with pytest.raises(ValueError, match="must be an integer"):
        PruneHparams(method="prospr", method_options=("steps=five",))
    with pytest.raises(ValueError, match="NAME=VALUE"):
        PruneHparams(method="grasp", method_options=("temperature",))
    with pytest.raises(ValueError, match="does not take option 'seed'"):  # prune() gives it
        PruneHparams(method="phew", method_options=("seed=3",))
