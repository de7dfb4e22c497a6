"""Effective mask vs a brute-force reachability search over an explicit graph of units.

Each test builds the unit graph by hand from the layer shapes (units of an MLP; (channel, y, x)
positions of a convnet, padding included; a residual block's identity edges), adds one edge per
kept weight, and runs two breadth-first searches: forward from the input units and backward from
the output units. A kept weight is effective iff one of its edges goes from an input-reachable unit
to an output-reaching unit (Frankle et al. 2021, App. M; Paganini & Forde 2020, App. B).
"""

from __future__ import annotations

import time
from collections import defaultdict, deque

import pytest
import torch
from torch import nn

import prunelab
import prunelab.models
from prunelab import analysis
from prunelab.masks import Mask


class UnitGraph:
    def __init__(self):
        self.edges: list[tuple[object, object, tuple[str, int] | None]] = []

    def edge(self, src, dst, label=None):
        self.edges.append((src, dst, label))

    def linear(self, name, weight_mask, ins, outs):
        rows, cols = weight_mask.shape
        assert rows == len(outs) and cols == len(ins)
        for i in range(rows):
            for j in range(cols):
                if weight_mask[i, j]:
                    self.edge(ins[j], outs[i], (name, i * cols + j))

    def conv(self, name, weight_mask, src, dst, in_hw, stride, padding):
        o_n, i_n, kh, kw = weight_mask.shape
        h, w = in_hw
        ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
        for o in range(o_n):
            for i in range(i_n):
                for ky in range(kh):
                    for kx in range(kw):
                        if not weight_mask[o, i, ky, kx]:
                            continue
                        flat = ((o * i_n + i) * kh + ky) * kw + kx
                        for oy in range(ho):
                            for ox in range(wo):
                                iy, ix = oy * stride - padding + ky, ox * stride - padding + kx
                                if 0 <= iy < h and 0 <= ix < w:  # outside: a padding zero, no unit
                                    self.edge((src, i, iy, ix), (dst, o, oy, ox), (name, flat))
        return ho, wo

    def effective(self, mask: Mask, inputs, outputs) -> Mask:
        fwd_adj, bwd_adj = defaultdict(list), defaultdict(list)
        for s, d, _ in self.edges:
            fwd_adj[s].append(d)
            bwd_adj[d].append(s)

        def bfs(starts, adj):
            seen, queue = set(starts), deque(starts)
            while queue:
                u = queue.popleft()
                for v in adj[u]:
                    if v not in seen:
                        seen.add(v)
                        queue.append(v)
            return seen

        from_input, to_output = bfs(inputs, fwd_adj), bfs(outputs, bwd_adj)
        alive = {label for s, d, label in self.edges if label and s in from_input and d in to_output}
        out = {}
        for name, keep in mask.items():
            flat = torch.zeros(keep.numel(), dtype=torch.bool)
            for n, idx in alive:
                if n == name:
                    flat[idx] = True
            out[name] = flat.reshape(keep.shape)
        return Mask(out)


def random_mask(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in prunelab.prunable_parameters(model).items()})


# ---- MLP -----------------------------------------------------------------------------------------
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)
    )


def mlp_search(mask):
    g = UnitGraph()
    units = [[(layer, k) for k in range(size)] for layer, size in enumerate((5, 6, 6, 3))]
    for layer, name in enumerate(("0.weight", "2.weight", "4.weight")):
        g.linear(name, mask[name], units[layer], units[layer + 1])
    return g.effective(mask, units[0], units[-1])


@pytest.mark.parametrize("seed", range(6))
def test_effective_mask_mlp_matches_search(seed):
    model = mlp()
    mask = random_mask(model, 0.35, seed)
    assert analysis.effective_mask(model, mask, (5,)) == mlp_search(mask)


def test_random_masks_do_disconnect_kept_weights():
    model = mlp()
    removed = 0
    for seed in range(6):
        mask = random_mask(model, 0.35, seed)
        removed += mask.num_kept - mlp_search(mask).num_kept
    assert removed > 0  # the comparison above is not between two dense masks


def test_dead_neuron_disconnects_its_incoming_and_outgoing_weights():
    model = mlp()
    keep = {n: torch.ones_like(t) for n, t in Mask.ones(model).items()}
    keep["2.weight"][:, 2] = False  # hidden unit 2 of layer 1 has no outgoing weight ...
    keep["0.weight"][4, :] = False  # ... and hidden unit 4 of layer 1 no incoming weight
    mask = Mask(keep)
    eff = analysis.effective_mask(model, mask, (5,))
    assert not eff["0.weight"][2].any()  # kept, but its output goes nowhere: effectively pruned
    assert not eff["2.weight"][:, 4].any()  # kept, but fed by a unit nothing reaches
    expected = {n: t.clone() for n, t in keep.items()}
    expected["0.weight"][2] = False
    expected["2.weight"][:, 4] = False
    assert eff == Mask(expected) == mlp_search(mask)
    stats = analysis.effective_sparsity(model, mask, (5,))
    assert stats["kept"] - stats["effective_kept"] == 5 + 6
    assert stats["effective"] > stats["actual"]
    assert stats["per_layer"]["0.weight"]["effective_kept"] == 30 - 5 - 5


def test_model_is_untouched():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis.effective_mask(model, random_mask(model, 0.5, 0), (5,))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---- convnet -------------------------------------------------------------------------------------
def convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3, bias=False),
    )


def convnet_search(mask):
    g = UnitGraph()
    h1 = g.conv("0.weight", mask["0.weight"], "x", "c1", (5, 5), 1, 1)
    h2 = g.conv("2.weight", mask["2.weight"], "c1", "c2", h1, 2, 1)
    flat = [("c2", c, y, x) for c in range(4) for y in range(h2[0]) for x in range(h2[1])]  # channel-major
    outs = [("out", k) for k in range(3)]
    g.linear("5.weight", mask["5.weight"], flat, outs)
    inputs = [("x", c, y, x) for c in range(2) for y in range(5) for x in range(5)]
    return g.effective(mask, inputs, outs)


@pytest.mark.parametrize("seed,density", [(0, 0.15), (1, 0.2), (2, 0.1), (3, 0.3)])
def test_effective_mask_convnet_matches_search(seed, density):
    model = convnet()
    mask = random_mask(model, density, seed)
    expected = convnet_search(mask)
    assert analysis.effective_mask(model, mask, (2, 5, 5)) == expected


def test_convnet_cases_remove_something():
    model = convnet()
    masks = [random_mask(model, d, s) for s, d in [(0, 0.15), (1, 0.2), (2, 0.1), (3, 0.3)]]
    assert sum(m.num_kept - convnet_search(m).num_kept for m in masks) > 0


def test_max_pool_counts_its_whole_window_as_connected():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 2, bias=False),
    )
    for seed in range(3):
        mask = random_mask(model, 0.4, seed)
        g = UnitGraph()
        g.conv("0.weight", mask["0.weight"], "x", "c1", (4, 4), 1, 1)
        for c in range(2):
            for py in range(2):
                for px in range(2):
                    for dy in range(2):
                        for dx in range(2):
                            g.edge(("c1", c, 2 * py + dy, 2 * px + dx), ("p", c, py, px))
        g.conv("3.weight", mask["3.weight"], "p", "c2", (2, 2), 1, 1)
        flat = [("c2", c, y, x) for c in range(2) for y in range(2) for x in range(2)]
        outs = [("out", k) for k in range(2)]
        g.linear("6.weight", mask["6.weight"], flat, outs)
        inputs = [("x", 0, y, x) for y in range(4) for x in range(4)]
        assert analysis.effective_mask(model, mask, (1, 4, 4)) == g.effective(mask, inputs, outs)


# ---- residual net --------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 6, bias=False)
        self.a = nn.Linear(6, 6, bias=False)
        self.b = nn.Linear(6, 6, bias=False)
        self.head = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.relu(self.b(torch.relu(self.a(h))) + h))  # identity skip


def residual_search(mask):
    g = UnitGraph()
    x, h, a, s, out = ([(t, k) for k in range(n)] for t, n in (("x", 4), ("h", 6), ("a", 6), ("s", 6), ("o", 3)))
    g.linear("stem.weight", mask["stem.weight"], x, h)
    g.linear("a.weight", mask["a.weight"], h, a)
    g.linear("b.weight", mask["b.weight"], a, s)
    for k in range(6):
        g.edge(h[k], s[k])  # the skip: always there, no weight
    g.linear("head.weight", mask["head.weight"], s, out)
    return g.effective(mask, x, out)


@pytest.mark.parametrize("seed", range(5))
def test_effective_mask_residual_matches_search(seed):
    torch.manual_seed(0)
    model = ResidualMLP()
    mask = random_mask(model, 0.3, seed)
    assert analysis.effective_mask(model, mask, (4,)) == residual_search(mask)


def test_residual_skip_keeps_a_block_with_a_dead_branch_connected():
    torch.manual_seed(0)
    model = ResidualMLP()
    keep = {n: torch.ones_like(t) for n, t in Mask.ones(model).items()}
    keep["b.weight"][:] = False  # the residual branch is cut: a's weights are disconnected, stem's are not
    mask = Mask(keep)
    eff = analysis.effective_mask(model, mask, (4,))
    assert not eff["a.weight"].any()
    assert eff["stem.weight"].all() and eff["head.weight"].all()
    assert eff == residual_search(mask)


def test_effective_sparsity_resnet20_random_98():
    model = prunelab.models.create("resnet20", num_classes=10, input_shape=(3, 32, 32), seed=0)
    mask = prunelab.prune(model, "random", sparsity=0.98)
    start = time.perf_counter()
    stats = analysis.effective_sparsity(model, mask, (3, 32, 32))
    elapsed = time.perf_counter() - start
    assert stats["actual"] == pytest.approx(0.98, abs=1e-4)
    assert stats["effective"] >= stats["actual"]
    assert stats["effective_kept"] <= stats["kept"]
    assert set(stats["per_layer"]) == set(mask)
    print(f"resnet20 effective sparsity: {stats['effective']:.4f} in {elapsed:.2f}s")


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        analysis.effective_mask(mlp(), Mask.ones(mlp()), None)


def test_max_pool_tie_does_not_disconnect_a_window_member():
    # On a 2x2 input, weight (0, 0) only ever feeds output position (1, 1) and weight (2, 2) only (0, 0);
    # both positions carry the same value, so a max-pool's gradient reaches only the first. Both
    # weights are connected: the max depends on its whole window.
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 1))
    keep = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    keep[0, 0, 0, 0] = keep[0, 0, 2, 2] = True
    mask = Mask({"0.weight": keep, "3.weight": torch.ones(1, 1, dtype=torch.bool)})
    assert analysis.effective_mask(model, mask, (1, 2, 2)) == mask


def test_deep_network_path_counts_do_not_overflow():
    # 300 dense layers of fan-in 16 have 16**300 ~ 1e361 paths per output: beyond float64. A unit in
    # the last layers with no incoming weight must still mark its outgoing weights as disconnected.
    torch.manual_seed(0)
    layers = []
    for _ in range(300):
        layers += [nn.Linear(16, 16, bias=False), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    keep = {n: torch.ones_like(t) for n, t in Mask.ones(model).items()}
    keep["560.weight"][5, :] = False  # unit 5 after layer 281 receives nothing (past 1e308 paths)
    eff = analysis.effective_mask(model, Mask(keep), (16,))
    expected = {n: t.clone() for n, t in keep.items()}
    expected["562.weight"][:, 5] = False
    assert eff == Mask(expected)


def test_effective_parameter_ratio_of_shuffled_to_unmodified():
    import prunelab
    from prunelab import ablations, analysis

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))
    keep0 = torch.ones(8, 16, dtype=torch.bool)
    keep0[0] = False  # hidden unit 0 gets no input: its outgoing weights are disconnected
    mask = prunelab.Mask({"1.weight": keep0, "3.weight": torch.ones(4, 8, dtype=torch.bool)})
    shuffled = ablations.shuffle(mask, seed=0)  # spreads the 16 pruned inputs over the units
    # independent count: effective = kept, minus unit 0's 4 outgoing weights in the unmodified mask
    unmodified = (8 * 16 - 16) + (4 * 8 - 4)
    eff_shuffled = analysis.effective_sparsity(model, shuffled, (16,))["effective_kept"]
    assert analysis.effective_parameter_ratio(model, shuffled, mask, (16,)) == pytest.approx(eff_shuffled / unmodified)
    assert eff_shuffled == 8 * 16 - 16 + 4 * 8  # no unit is left without inputs after this shuffle
