"""remove / prune semantics, checked against brute-force rankings and hand-built masks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab.pruning import LayerCollapseWarning, selection


def convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def data(n=8, shape=(3, 6, 6), classes=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def round_half_up(x):
    return math.floor(x + 0.5)


def brute_force(scores, mask, sparsity, highest=False, scope="global"):
    """Rank by (pruned first, key, position) with a full stable sort; prune round(s*n)."""
    names = list(scores)

    def pick(ns):
        key = torch.cat([scores[n].reshape(-1).double() for n in ns])
        alive = torch.cat([mask[n].reshape(-1) for n in ns])
        key = -key if highest else key
        key = torch.where(alive, key, torch.full_like(key, -math.inf))
        order = torch.sort(key, stable=True).indices
        k = max(round_half_up(sparsity * key.numel()), int((~alive).sum()))
        keep = torch.ones_like(alive)
        keep[order[:k]] = False
        out, start = {}, 0
        for n in ns:
            out[n] = keep[start : start + scores[n].numel()].view(scores[n].shape)
            start += scores[n].numel()
        return out

    if scope == "layer":
        res = {}
        for n in names:
            res.update(pick([n]))
        return prunelab.Mask(res)
    return prunelab.Mask(pick(names))


def random_scores(shapes, seed=0, levels=None):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(shapes):
        s = torch.randn(shape, generator=g)
        if levels:
            s = torch.randint(0, levels, shape, generator=g).float()
        out[f"t{i}"] = s
    return out


def random_mask_for(scores, density, seed=5):
    g = torch.Generator().manual_seed(seed)
    return prunelab.Mask({n: torch.rand(s.shape, generator=g) < density for n, s in scores.items()})


# ------------------------------------------------------------------------------------------------
# remove: exact counts, ties, scopes, never revive
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.93, 0.999])
def test_remove_prunes_exact_count_like_brute_force(scope, sparsity):
    scores = random_scores([(7, 3), (11,), (4, 5, 2)], seed=2)
    got = prunelab.remove(scores, sparsity=sparsity, scope=scope)
    dense = prunelab.Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    assert got == brute_force(scores, dense, sparsity, scope=scope)
    if scope == "global":
        assert got.num_total - got.num_kept == round_half_up(sparsity * got.num_total)
    else:
        for kept, total in got.layer_counts().values():
            assert total - kept == round_half_up(sparsity * total)


def test_rounding_is_half_up():
    scores = {"a": torch.arange(5.0)}
    assert prunelab.remove(scores, sparsity=0.5).num_kept == 2  # 2.5 -> 3 pruned
    assert prunelab.remove(scores, sparsity=0.3).num_kept == 3  # 1.5 -> 2 pruned
    assert prunelab.remove(scores, density=0.6) == prunelab.remove(scores, sparsity=0.4)


def test_ties_are_broken_by_position_deterministically():
    scores = {"a": torch.zeros(3, 4), "b": torch.zeros(5)}
    m = prunelab.remove(scores, sparsity=0.5)
    assert m["a"].reshape(-1).tolist() == [False] * 9 + [True] * 3 and m["b"].all()  # round(8.5) = 9
    m_hi = prunelab.remove(scores, sparsity=0.5, prune_highest=True)
    assert m_hi == m  # position order, whichever end is pruned
    scores = {"a": torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0])}
    assert prunelab.remove(scores, sparsity=0.4)["a"].tolist() == [False, False, True, True, True]
    assert prunelab.remove(scores, sparsity=0.6, prune_highest=True)["a"].tolist() == [True, False, False, True, False]


@pytest.mark.parametrize("highest", [False, True])
@pytest.mark.parametrize("sparsity", [0.2, 0.75])
def test_remove_never_revives_and_ranks_pruned_first(highest, sparsity):
    scores = random_scores([(6, 5), (9,)], seed=3)
    mask = random_mask_for(scores, 0.6)
    for n in scores:  # make already-pruned weights the most valuable: they must still stay pruned
        scores[n] = torch.where(mask[n], scores[n], torch.full_like(scores[n], -1e9 if highest else 1e9))
    got = prunelab.remove(scores, mask, sparsity=sparsity, prune_highest=highest)
    assert all(not bool((got[n] & ~mask[n]).any()) for n in mask)
    want_pruned = max(round_half_up(sparsity * got.num_total), mask.num_total - mask.num_kept)
    assert got.num_total - got.num_kept == want_pruned
    assert got == brute_force(scores, mask, sparsity, highest)


# ------------------------------------------------------------------------------------------------
# the sampled-bracket selection (large inputs) agrees with brute force, ties and NaN included
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("highest", [False, True])
@pytest.mark.parametrize("sparsity", [0.003, 0.05, 0.5, 0.97])
@pytest.mark.parametrize("with_mask", [False, True])
def test_large_selection_matches_brute_force(monkeypatch, highest, sparsity, with_mask):
    monkeypatch.setattr(selection, "_CHUNK", 30_000)  # several chunks per tensor
    monkeypatch.setattr(selection, "_CAP", 40_000)  # exercise the two-sided bracket too
    scores = random_scores([(300, 300), (50_000,), (20, 20, 20)], seed=7)
    mask = random_mask_for(scores, 0.8) if with_mask else None
    full = mask or prunelab.Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    got = prunelab.remove(scores, mask, sparsity=sparsity, prune_highest=highest)
    assert got == brute_force(scores, full, sparsity, highest)


@pytest.mark.parametrize("levels", [1, 3, 50])
def test_large_selection_with_massive_ties(monkeypatch, levels):
    monkeypatch.setattr(selection, "_CHUNK", 25_000)
    monkeypatch.setattr(selection, "_CAP", 5_000)  # ties overflow the candidate buffer
    scores = random_scores([(400, 200), (30_000,)], seed=9, levels=levels)
    mask = random_mask_for(scores, 0.9)
    for s in (0.01, 0.4, 0.9):
        assert prunelab.remove(scores, mask, sparsity=s) == brute_force(scores, mask, s)
        assert prunelab.remove(scores, mask, sparsity=s, scope="layer") == brute_force(scores, mask, s, scope="layer")


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        prunelab.remove({"a": torch.tensor([1.0, float("nan"), 0.0])}, sparsity=0.5)
    big = torch.randn(200_000)
    big[12345] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prunelab.remove({"w": big}, sparsity=0.5)


# ------------------------------------------------------------------------------------------------
# invert (ranks, not 1/score)
# ------------------------------------------------------------------------------------------------
def test_invert_prunes_the_top_ranks_also_for_negative_scores():
    scores = {"w": torch.tensor([-5.0, -1.0, 0.0, 0.5, 3.0, -0.2])}
    assert prunelab.remove(scores, sparsity=0.5)["w"].tolist() == [False, False, True, True, True, False]
    inverted = prunelab.remove(scores, sparsity=0.5, invert=True)["w"]
    assert inverted.tolist() == [True, True, False, False, False, True]  # 3, 0.5 and 0 go
    # the reference implementations' "invert" = remove by 1/score: wrong with negative and zero scores
    by_reciprocal = prunelab.remove({"w": 1.0 / scores["w"]}, sparsity=0.5)["w"]
    assert not torch.equal(inverted, by_reciprocal)


def test_invert_on_grasp_prunes_the_lowest_scores():
    model = convnet()
    x, y = data()
    s = prunelab.score(model, "grasp", batch=(x, y))
    normal = prunelab.prune(model, "grasp", 0.6, batch=(x, y))
    inverted = prunelab.prune(model, "grasp", 0.6, batch=(x, y), invert=True)
    assert normal == prunelab.remove(s, sparsity=0.6, prune_highest=True)
    assert inverted == prunelab.remove(s, sparsity=0.6, prune_highest=False)
    flat = torch.cat([s[n].reshape(-1) for n in s])
    assert (flat < 0).any() and (flat > 0).any()  # the case 1/score gets wrong
    pruned_inv = torch.cat([s[n][~inverted[n]] for n in s])
    kept_inv = torch.cat([s[n][inverted[n]] for n in s])
    assert pruned_inv.max() <= kept_inv.min()
    pruned = torch.cat([s[n][~normal[n]] for n in s])
    kept = torch.cat([s[n][normal[n]] for n in s])
    assert pruned.min() >= kept.max()


# ------------------------------------------------------------------------------------------------
# iterative pruning: schedule, monotone masks
# ------------------------------------------------------------------------------------------------
_SEEN: list = []


@prunelab.register_method("test_pruning_recorder", needs_data=False, default_iterations=7)
def _recorder(model, mask, batch=None, *, seed: int = 0):
    """Fresh random scores each call, so that pruned weights often score highest later on."""
    _SEEN.append(prunelab.Mask({n: t.clone() for n, t in mask.items()}))
    g = torch.Generator().manual_seed(len(_SEEN))
    return {n: torch.rand(t.shape, generator=g) for n, t in mask.items()}


@pytest.mark.filterwarnings("ignore::prunelab.LayerCollapseWarning")  # random scores at 99% may empty a layer
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_iterative_schedule_densities_and_monotone_masks(schedule, sparsity):
    model = convnet()
    _SEEN.clear()
    final = prunelab.prune(model, "test_pruning_recorder", sparsity, schedule=schedule)
    masks = _SEEN[:] + [final]
    assert len(_SEEN) == 7  # the criterion's default iterations
    total = final.num_total
    for n, m in enumerate(masks):
        frac = n / 7
        d = (1 - sparsity) ** frac if schedule == "exponential" else 1 - sparsity * frac
        expect_pruned = round_half_up(sparsity * total) if n == 7 else round_half_up((1 - d) * total)
        assert total - m.num_kept == expect_pruned, n
    for a, b in zip(masks, masks[1:]):
        assert all(not bool((b[k] & ~a[k]).any()) for k in a)  # a weight pruned once stays pruned


def test_density_schedule():
    assert prunelab.density_schedule(0.99, 2) == pytest.approx([0.1, 0.01])
    assert prunelab.density_schedule(0.9, 3, "linear") == pytest.approx([0.7, 0.4, 0.1])
    assert prunelab.density_schedule(0.75, 2, start_density=0.5) == pytest.approx([0.5 * 0.5**0.5, 0.25])


def test_default_iterations_and_continuing_from_a_mask():
    info = prunelab.methods()
    assert info["synflow"].default_iterations == 100 and info["iterative_snip"].default_iterations == 100
    assert info["snip"].default_iterations == 1 and info["magnitude"].default_iterations == 1
    model = convnet()
    first = prunelab.prune(model, "random", 0.5, seed=3)
    second = prunelab.prune(model, "magnitude", 0.8, mask=first)
    assert all(not bool((second[n] & ~first[n]).any()) for n in first)
    assert second.num_total - second.num_kept == round_half_up(0.8 * second.num_total)
    assert prunelab.prune(model, "magnitude", 0.3, mask=first) == first  # never revives


def test_synflow_iterative_matches_manual_loop():
    """prune's fast SynFlow path equals score + remove repeated by hand on the masked network."""
    model = convnet()
    got = prunelab.prune(model, "synflow", 0.95, input_shape=(3, 6, 6), iterations=5)
    mask = prunelab.Mask.ones(model)
    for n in range(1, 6):
        s = prunelab.score(model, "synflow", mask=mask, input_shape=(3, 6, 6))
        mask = prunelab.remove(s, mask, density=0.05 ** (n / 5) if n < 5 else 0.05)
    assert got == mask


def test_iterative_snip_differs_from_one_shot_and_is_exact():
    model = convnet()
    x, y = data()
    one = prunelab.prune(model, "snip", 0.9, batch=(x, y))
    it = prunelab.prune(model, "iterative_snip", 0.9, batch=(x, y), iterations=10)
    assert one.num_kept == it.num_kept and one != it


# ------------------------------------------------------------------------------------------------
# structured
# ------------------------------------------------------------------------------------------------
def channel_l1(w, dim):
    return w.abs().sum(dim=[d for d in range(w.dim()) if d != dim])


@pytest.mark.parametrize("method", ["l1_channel", "l2_channel", "linf_channel", "lneginf_channel", "random_channel"])
@pytest.mark.parametrize("axis", ["input", "output"])
def test_structured_prunes_whole_channels_nearest_count(method, axis):
    model = convnet()
    sparsity = 0.6
    mask = prunelab.prune(model, method, sparsity, axis=axis)  # per layer by default
    for name, w in prunelab.prunable_parameters(model).items():
        dim = 1 if axis == "input" else 0
        m = mask[name].movedim(dim, 0).reshape(w.shape[dim], -1)
        whole = m.all(1) | (~m).all(1)
        assert whole.all(), name  # every channel entirely kept or entirely pruned
        pruned_channels = int((~m).all(1).sum())
        assert pruned_channels == round_half_up(sparsity * w.shape[dim]), name
    want = 1 - sum(mask[n].sum().item() for n in mask) / mask.num_total
    assert mask.sparsity == pytest.approx(want)


def test_l1_channel_removes_lowest_norm_input_channels():
    model = convnet()
    mask = prunelab.prune(model, "l1_channel", 0.5)
    w = model[3].weight.detach()
    norms = channel_l1(w, 1)
    pruned = (~mask["3.weight"]).all(dim=(0, 2, 3))
    assert int(pruned.sum()) == 2
    assert norms[pruned].max() <= norms[~pruned].min()
    # linear layer: channels are input features (columns)
    lin = model[7].weight.detach()
    cols = (~mask["7.weight"]).all(0)
    assert int(cols.sum()) == 3 and channel_l1(lin, 1)[cols].max() <= channel_l1(lin, 1)[~cols].min()


@pytest.mark.filterwarnings("ignore:structured pruning kept the last channel")
def test_structured_global_scope_takes_nearest_achievable_count():
    model = convnet()
    s = prunelab.score(model, "l1_channel")
    for sparsity in (0.1, 0.37, 0.8):
        m = prunelab.remove(s, sparsity=sparsity, scope="global")
        # brute force: channels sorted by score, best prefix, each tensor's best channel left out
        units = []
        for name, dim in s.groups.items():
            sc = s[name].mean(dim=[d for d in range(s[name].dim()) if d != dim])
            size = s[name].numel() // s[name].shape[dim]
            top = max(range(len(sc)), key=lambda c: (float(sc[c]), c))  # ties: the later one ranks higher
            units += [(float(v), size) for c, v in enumerate(sc) if c != top]
        order = sorted(range(len(units)), key=lambda i: units[i][0])
        target = round_half_up(sparsity * m.num_total)
        counts = [0]
        for i in order:
            counts.append(counts[-1] + units[i][1])
        best = min(reversed(counts), key=lambda c: abs(c - target))  # ties: the larger count
        assert m.num_total - m.num_kept == best


def test_hybrid_channels_in_convs_exact_weights_in_linear():
    model = convnet()
    mask = prunelab.prune(model, "hybrid", 0.5)
    assert int((~mask["0.weight"]).all(dim=(0, 2, 3)).sum()) == 2  # round(1.5) input channels of 3
    assert int((~mask["3.weight"]).all(dim=(0, 2, 3)).sum()) == 2
    lin = mask["7.weight"]
    assert int((~lin).sum()) == 15  # exactly half of 30 weights, not whole columns
    w = model[7].weight.detach().abs()
    assert w[~lin].max() <= w[lin].min()


def test_structured_iterative_never_revives():
    model = convnet()
    first = prunelab.prune(model, "random", 0.3, seed=1)
    m = prunelab.prune(model, "l2_channel", 0.6, mask=first, iterations=3)
    assert all(not bool((m[n] & ~first[n]).any()) for n in m)


# ------------------------------------------------------------------------------------------------
# prunable options, collapse, bad input
# ------------------------------------------------------------------------------------------------
def test_prune_covers_exactly_the_prunable_parameters():
    model = convnet()
    assert set(prunelab.prune(model, "magnitude", 0.5)) == {"0.weight", "3.weight", "7.weight"}
    m = prunelab.prune(model, "magnitude", 0.5, include_bias=True, exclude=["7.weight"])
    assert set(m) == {"0.weight", "0.bias", "3.weight", "3.bias", "7.bias"}
    m = prunelab.prune(model, "magnitude", 0.5, include_norm=True, filter=lambda n, p: not n.startswith("7"))
    assert set(m) == {"0.weight", "1.weight", "1.bias", "3.weight"}


def test_layer_collapse_warning_names_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    with pytest.warns(LayerCollapseWarning, match=r"2\.weight"):
        prunelab.prune(model, "magnitude", 0.5)


def test_synflow_avoids_the_collapse_that_one_shot_magnitude_suffers():
    """Tanaka et al. 2020, §3/§6 in miniature: at 99% sparsity global magnitude empties the two later layers of this
    MLP (their init bound is smaller), while SynFlow's 100 iterations keep every layer connected."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 100, bias=False),
        nn.ReLU(),
        nn.Linear(100, 100, bias=False),
        nn.ReLU(),
        nn.Linear(100, 10, bias=False),
    )
    with pytest.warns(LayerCollapseWarning):
        prunelab.prune(model, "magnitude", 0.99)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        m = prunelab.prune(model, "synflow", 0.99, input_shape=(10,))
    assert all(kept > 0 for kept, _ in m.layer_counts().values())


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.5", None, True, float("nan")])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a number in \[0, 1\)"):
        prunelab.prune(convnet(), "magnitude", bad)


def test_bad_inputs_say_what_is_wrong():
    model = convnet()
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
            prunelab.prune(model, "magnitude", 0.5, iterations=bad)
    with pytest.raises(ValueError, match=r"unknown pruning method 'snp'; did you mean 'snip'\?.*synflow"):
        prunelab.prune(model, "snp", 0.5)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prunelab.score(model, "nope")
    with pytest.raises(ValueError, match="snip needs data"):
        prunelab.prune(model, "snip", 0.5)
    with pytest.raises(ValueError, match="grasp needs data"):
        prunelab.score(model, "grasp")
    with pytest.raises(ValueError, match="synflow needs input_shape"):
        prunelab.prune(model, "synflow", 0.5)
    with pytest.raises(ValueError, match="no prunable parameters"):
        prunelab.prune(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "magnitude", 0.5)
    with pytest.raises(ValueError, match="lacks"):
        prunelab.prune(model, "magnitude", 0.5, mask=prunelab.Mask({"nope.weight": torch.ones(3, dtype=torch.bool)}))
    bad_shape = prunelab.Mask({"0.weight": torch.ones(4, 3, 3, 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        prunelab.prune(model, "magnitude", 0.5, mask=bad_shape)
    with pytest.raises(ValueError, match="does not take option.*'temprature'.*temperature"):
        prunelab.score(model, "grasp", batch=data(), temprature=3)
    with pytest.raises(ValueError, match="unknown scope .local.; did you mean .global."):
        prunelab.prune(model, "magnitude", 0.5, scope="local")
    with pytest.raises(ValueError, match="unknown schedule .cubic."):
        prunelab.prune(model, "magnitude", 0.5, schedule="cubic")
    with pytest.raises(ValueError, match="axis must be 'input'"):
        prunelab.prune(model, "l1_channel", 0.5, axis=2)
    with pytest.raises(ValueError, match="batch=\\(inputs, targets\\)"):
        prunelab.score(model, "snip", batch=torch.zeros(3))
    with pytest.raises(ValueError, match="temperature must be a positive"):
        prunelab.score(model, "grasp", batch=data(), temperature=0)
    with pytest.raises(ValueError, match="exactly one of sparsity"):
        prunelab.remove({"a": torch.ones(3)}, sparsity=0.5, density=0.5)
    with pytest.raises(ValueError, match="no scores for .b.; every parameter the mask covers needs scores"):
        prunelab.remove({"a": torch.ones(3)}, prunelab.Mask({"b": torch.ones(3)}), sparsity=0.5)


# ------------------------------------------------------------------------------------------------
# review fixes: last channels, low-precision scores, narrowing brackets, layer-scope hybrid,
# criterion validation, mask device
# ------------------------------------------------------------------------------------------------
def lenet5(in_channels, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("method", ["l1_channel", "random_channel"])
def test_structured_pruning_never_removes_a_layers_last_channel(in_channels, method):
    """Paganini & Forde 2020, §3.1: 20% of the remaining channels per level; a 1-channel layer is never emptied."""
    model = lenet5(in_channels)
    mask = None
    for level in range(1, 21):
        sparsity = 1 - 0.8**level
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mask = prunelab.prune(model, method, sparsity, mask=mask)
        assert not any(issubclass(w.category, LayerCollapseWarning) for w in caught)
        capped = []
        for name, w in prunelab.prunable_parameters(model).items():
            channels = w.shape[1]
            m = mask[name].movedim(1, 0).reshape(channels, -1)
            assert (m.all(1) | (~m).all(1)).all(), name  # still whole channels
            alive = int(m.any(1).sum())
            # the count nearest round(sparsity * weights), ties to the larger, as before the fix
            target = round_half_up(sparsity * w.numel())
            per = w.numel() // channels
            pruned = min(range(channels + 1), key=lambda c: (abs(c * per - target), -c))
            want = channels - pruned
            assert alive == max(1, want), (level, name)
            if want == 0:
                capped.append(name)
        spared = [str(w.message) for w in caught if "last channel" in str(w.message)]
        assert all(any(repr(n) in msg for msg in spared) for n in capped), (level, capped, spared)
        assert bool(spared) == bool(capped)
    if in_channels == 1:  # level 4: round(1 - 0.8**4) = round(0.59) = 1 would have emptied it
        assert int(mask["0.weight"].any(dim=(0, 2, 3)).sum()) == 1


def test_structured_global_scope_keeps_one_channel_per_tensor():
    model = lenet5(1)
    with pytest.warns(UserWarning, match="last channel"):
        mask = prunelab.prune(model, "l1_channel", 0.999, scope="global")
    for name, w in prunelab.prunable_parameters(model).items():
        alive = mask[name].movedim(1, 0).reshape(w.shape[1], -1).any(1)
        assert int(alive.sum()) == 1, name
        # the one kept is the channel of largest L1 norm
        assert bool(alive[channel_l1(w.detach(), 1).argmax()]), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_scores_prune_the_exact_count(dtype):
    torch.manual_seed(0)
    model = nn.Linear(1000, 400).to(dtype)
    mask = prunelab.prune(model, "magnitude", 0.2)
    assert mask.num_total - mask.num_kept == round_half_up(0.2 * 400_000)
    w = model.weight.detach().abs()
    dense = prunelab.Mask({"weight": torch.ones(400, 1000, dtype=torch.bool)})
    assert mask == brute_force({"weight": w.double()}, dense, 0.2)  # float64 holds bf16/f16 exactly
    partial = random_mask_for({"weight": w}, 0.7)
    for highest, sparsity in [(False, 0.5), (True, 0.9)]:
        got = prunelab.remove({"weight": w}, partial, sparsity=sparsity, prune_highest=highest)
        assert got == brute_force({"weight": w.double()}, partial, sparsity, highest)


@pytest.mark.parametrize("highest", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.97])
@pytest.mark.parametrize("with_mask", [False, True])
def test_an_overflowing_bracket_narrows_instead_of_gathering_everything(monkeypatch, highest, sparsity, with_mask):
    cap = 3_000
    monkeypatch.setattr(selection, "_CAP", cap)
    monkeypatch.setattr(selection, "_SAMPLE_MAX", 0)  # no cap-sized sample: the first bracket overflows
    monkeypatch.setattr(selection, "_CHUNK", 40_000)
    gathered, rounds = [], []
    kthvalue, select_bracket = torch.Tensor.kthvalue, selection._select_bracket

    def spy_kthvalue(self, *args, **kwargs):
        gathered.append(self.numel())
        return kthvalue(self, *args, **kwargs)

    def spy_select_bracket(*args):
        rounds.append(args)
        return select_bracket(*args)

    monkeypatch.setattr(torch.Tensor, "kthvalue", spy_kthvalue)
    monkeypatch.setattr(selection, "_select_bracket", spy_select_bracket)
    scores = random_scores([(400, 300), (80_000,)], seed=11)
    mask = random_mask_for(scores, 0.8) if with_mask else None
    full = mask or prunelab.Mask({n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()})
    got = prunelab.remove(scores, mask, sparsity=sparsity, prune_highest=highest)
    assert got == brute_force(scores, full, sparsity, highest)
    assert gathered and max(gathered) <= cap  # never more candidate keys than the cap
    if sparsity == 0.5:
        assert len(rounds) >= 2  # the first bracket did overflow: the test exercises the narrowing


def test_layer_scope_prunes_unstructured_tensors_without_sorting_them(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 300), nn.ReLU(),
        nn.Linear(300, 200),
    )  # fmt: skip
    sorted_sizes = []
    sort = torch.sort

    def spy_sort(t, *args, **kwargs):
        sorted_sizes.append(t.numel())
        return sort(t, *args, **kwargs)

    monkeypatch.setattr(torch, "sort", spy_sort)
    mask = prunelab.prune(model, "hybrid", 0.7, include_bias=True)
    monkeypatch.setattr(torch, "sort", sort)
    assert max(sorted_sizes, default=0) <= 300  # channels and bias-sized tensors at most, never 60,000 weights
    params = dict(model.named_parameters())
    for name in ("4.weight", "4.bias", "6.weight", "6.bias", "0.bias"):
        w = params[name].detach().abs()
        want = brute_force({name: w}, prunelab.Mask({name: torch.ones_like(w, dtype=torch.bool)}), 0.7)
        assert torch.equal(mask[name], want[name]), name
    assert int((~mask["0.weight"]).all(dim=(0, 2, 3)).sum()) == 2  # round(0.7 * 3) input channels


def _register_bad_criterion(name, fn):
    if name not in prunelab.methods():
        prunelab.register_method(name, needs_data=False)(fn)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("transposed", r"shape \(6, 5\) for '7\.weight', whose weight has shape \(5, 6\)"),
        ("missing", r"no scores for '3\.weight'"),
        ("extra", r"scores for '0\.bias', which the mask does not cover"),
        ("not_tensor", r"returned a list for '0\.weight'"),
    ],
)
def test_a_custom_criterions_scores_are_checked_by_name_and_shape(kind, message):
    def bad(model, mask, batch=None):
        out = {n: p.detach().abs() for n, p in mask.check_compatible(model).items()}
        if kind == "transposed":
            out["7.weight"] = out["7.weight"].t().contiguous()  # same size, wrong shape
        elif kind == "missing":
            del out["3.weight"]
        elif kind == "extra":
            out["0.bias"] = model[0].bias.detach().abs()
        else:
            out["0.weight"] = out["0.weight"].tolist()
        return out

    name = f"test_pruning_bad_{kind}"
    _register_bad_criterion(name, bad)
    model = convnet()
    with pytest.raises(ValueError, match=message):
        prunelab.prune(model, name, 0.5)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_prune_returns_a_cpu_mask_whatever_the_devices():
    model = convnet().cuda()
    assert all(t.device.type == "cpu" for t in prunelab.prune(model, "magnitude", 0.5).values())
    start = prunelab.prune(model, "magnitude", 0.5).to("cuda")
    same = prunelab.prune(model, "magnitude", 0.3, mask=start)  # already sparser: returned unchanged
    assert same == start and all(t.device.type == "cpu" for t in same.values())


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("rows, warned", [(slice(8, 16), True), (slice(0, 8), False)])
def test_attention_collapse_is_warned_when_the_keys_are_emptied(rows, warned):
    """Emptying the key rows of in_proj_weight (keys are rows 8-15 of the stacked q, k, v) makes the attention
    uniform, which the warning says; emptying the queries leaves a content-based attention (one learned query,
    the bias), which is not a collapse. Checked against nn.MultiheadAttention's own attention weights."""
    torch.manual_seed(0)
    model = _Attention()
    with torch.no_grad():
        model.attn.in_proj_weight[rows].mul_(1e-4)  # the smallest magnitudes: pruned first
        model.attn.in_proj_bias.normal_()  # nonzero biases, as after training
    sparsity = 64 / (192 + 64 + 24)  # those 64 weights of the 280 covered ones
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = prunelab.prune(model, "magnitude", sparsity)
    said = [str(w.message) for w in caught if issubclass(w.category, LayerCollapseWarning)]
    assert not mask["attn.in_proj_weight"][rows].any()
    assert bool(said) == warned
    if warned:
        assert said[0].startswith("attention collapse: magnitude") and "attn.in_proj_weight" in said[0]
    mask.apply(model)
    x = torch.randn(4, 5, 8)
    _, weights = model.attn(x, x, x, need_weights=True, average_attn_weights=False)
    uniform = torch.allclose(weights, torch.full_like(weights, 1 / 5), atol=1e-6)
    assert uniform == warned


def test_inverted_iterative_synflow_that_disconnects_the_network_is_the_ablations_result_said_once():
    # Inverting iterative SynFlow (Frankle et al. 2021, §5) keeps the weights off the paths first, so after a few
    # iterations no path joins input and output and every score is 0: a result (chance accuracy), not an error.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match="inverted: every score is 0") as caught:
        mask = prunelab.prune(model, "synflow", 0.9, input_shape=(1, 4, 4), invert=True)
    assert sum("inverted: every score is 0" in str(w.message) for w in caught) == 1
    assert abs(mask.sparsity - 0.9) < 0.01
    # independent check: the number of input-output paths through the kept weights, a product of 0/1 matrices
    kept = [mask[n].double() for n in ("1.weight", "3.weight", "5.weight")]
    assert float((kept[2] @ kept[1] @ kept[0]).sum()) == 0.0
    # not inverted, the same network is pruned without a word of this kind
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message="(?!synflow, inverted)")
        prunelab.prune(model, "synflow", 0.9, input_shape=(1, 4, 4))
