"""Masks that change during training (prunelab.sparse_training): gradual magnitude pruning, SET, RigL.

Every expectation is computed independently in the test: the papers' formulas coded here, brute-force
sorts and counts in plain Python, and dense gradients from plain autograd on a hook-free copy.
"""

import copy
import math

import pytest
import torch
from torch import nn

from prunelab import SET, GradualMagnitude, Mask, MaskUpdates, RigL
from prunelab.masks import prunable_parameters, remove_mask
from prunelab.sparse_training import dense_gradients, reset_optimizer_state

# ---- helpers --------------------------------------------------------------------------------------

def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def small_bn_convnet(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def random_mask(model, density=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < density for n, p in prunable_parameters(model).items()})


def mlp_batch(i, n=16):
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(i))
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(1000 + i))
    return x, y


def sgd_step(model, optimizer, batch):
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    optimizer.step()


def flat_set(keep):
    return {i for i, v in enumerate(keep.reshape(-1).tolist()) if v}


def k_smallest(values, candidates, k):
    """Brute force: the k candidates with the smallest value, ties by lower flat index."""
    return set(sorted(candidates, key=lambda i: (values[i], i))[:k])


def k_largest(values, candidates, k):
    return set(sorted(candidates, key=lambda i: (-values[i], i))[:k])


def autograd_dense_grads(model, mask, batch):
    """Plain autograd on a hook-free copy whose pruned weights are zero."""
    net = copy.deepcopy(model)
    remove_mask(net)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, keep in mask.items():
            params[n].mul_(keep.to(params[n].dtype))
    loss = nn.functional.cross_entropy(net(batch[0]), batch[1])
    names = list(mask)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return dict(zip(names, grads))


# ---- GradualMagnitude (Zhu & Gupta 2018) ------------------------------------------------------------

def zhu_gupta(t, s_i, s_f, t0, n, dt):
    """Eq. (1), evaluated at the last update step t0 + k*dt <= t; s_i before t0, s_f after."""
    if t < t0:
        return s_i
    k = min((t - t0) // dt, n)
    return s_f + (s_i - s_f) * (1 - (k * dt) / (n * dt)) ** 3


@pytest.mark.parametrize("s_i, s_f, t0, n, dt", [(0.0, 0.9, 0, 4, 10), (0.2, 0.75, 10, 5, 3), (0.5, 0.5, 3, 2, 7)])
def test_gradual_sparsity_at_follows_zhu_gupta_eq1(s_i, s_f, t0, n, dt):
    sched = GradualMagnitude(sparsity=s_f, initial_sparsity=s_i, start=t0, end=t0 + n * dt, every=dt)
    for k in range(n + 1):
        t = t0 + k * dt
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert sched.sparsity_at(t) == pytest.approx(expected, abs=1e-12), t
        # constant between update steps
        if k < n:
            for between in range(t + 1, t + dt):
                assert sched.sparsity_at(between) == pytest.approx(expected, abs=1e-12), between
    for t in range(0, t0):
        assert sched.sparsity_at(t) == s_i
    for t in range(t0 + n * dt, t0 + n * dt + 25):
        assert sched.sparsity_at(t) == pytest.approx(s_f, abs=1e-12)
    for t in range(0, t0 + n * dt + 10):
        assert sched.sparsity_at(t) == pytest.approx(zhu_gupta(t, s_i, s_f, t0, n, dt), abs=1e-12), t


@pytest.mark.parametrize("start, end, every, total", [(0, 40, 10, 60), (10, 50, 10, 35), (3, 17, 7, 100), (5, 5, 4, 9)])
def test_gradual_update_steps_match_brute_force(start, end, every, total):
    sched = GradualMagnitude(sparsity=0.8, start=start, end=end, every=every)
    expected = [t for t in range(1, total + 1) if start <= t <= end and (t - start) % every == 0]
    assert sched.update_steps(total) == expected
    assert [t for t in range(0, total + 5) if sched.due(t)] == [t for t in expected if t <= total] + [
        t for t in range(total + 1, total + 5) if start <= t <= end and (t - start) % every == 0]


@pytest.mark.parametrize("kwargs", [
    dict(sparsity=0.9),                                             # end missing
    dict(sparsity=0.9, start=0, end=45, every=10),                  # 45 not a multiple of 10
    dict(sparsity=0.9, start=5, end=30, every=10),                  # 25 not a multiple of 10
    dict(sparsity=0.3, initial_sparsity=0.5, end=10, every=10),     # initial > final
    dict(sparsity=1.0, end=10, every=10),
    dict(sparsity=1.5, end=10, every=10),
    dict(sparsity=-0.1, end=10, every=10),
    dict(sparsity=0.9, initial_sparsity=-0.2, end=10, every=10),
    dict(sparsity=float("nan"), end=10, every=10),
])
def test_gradual_constructor_errors(kwargs):
    with pytest.raises(ValueError):
        GradualMagnitude(**kwargs)


def test_gradual_with_mask_updates_prunes_to_rounded_count_and_never_revives():
    model = tiny_mlp()
    s_f, end, every = 0.8, 40, 10
    sched = GradualMagnitude(sparsity=s_f, start=0, end=end, every=every)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    updates = MaskUpdates(model, sched, opt)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in prunable_parameters(model).values())
    assert total == 6 * 12 + 12 * 8 + 8 * 3
    old = {n: k.clone() for n, k in updates.mask.items()}
    n_updates = 0
    for step in range(1, 51):
        sgd_step(model, opt, mlp_batch(step))
        before = {n: params[n].detach().abs().clone() for n in old}
        if not updates.after_step(step):
            continue
        n_updates += 1
        s_t = s_f + (0.0 - s_f) * (1 - step / end) ** 3
        expected_pruned = math.floor(s_t * total + 0.5)
        pruned = sum(int((~k).sum()) for k in updates.mask.values())
        assert pruned == expected_pruned, (step, s_t)
        kept_mags, dropped_mags = [], []
        for n, new in updates.mask.items():
            assert not bool((new & ~old[n]).any()), f"revived a weight in {n} at step {step}"
            kept_mags += before[n][new].tolist()
            dropped_mags += before[n][old[n] & ~new].tolist()
            assert torch.all(params[n].detach()[~new] == 0.0)
            # momentum at newly pruned positions is reset
            buf = opt.state[params[n]]["momentum_buffer"]
            assert torch.all(buf[old[n] & ~new] == 0.0)
        if dropped_mags:  # global magnitude pruning: nothing dropped is larger than anything kept
            assert max(dropped_mags) <= min(kept_mags)
        old = {n: k.clone() for n, k in updates.mask.items()}
    assert n_updates == 4
    for n, keep in updates.mask.items():
        assert torch.all(params[n].detach()[~keep] == 0.0)


# ---- RigL ---------------------------------------------------------------------------------------------

def test_rigl_fraction_is_cosine_annealed():
    alpha, t_end = 0.3, 100
    sched = RigL(sparsity=0.5, drop_fraction=alpha, end=t_end, every=10, distribution="uniform")
    for t in range(0, t_end + 1):
        assert sched.fraction(t) == pytest.approx(alpha / 2 * (1 + math.cos(math.pi * t / t_end)), abs=1e-12)
    assert sched.fraction(0) == pytest.approx(alpha)
    assert sched.fraction(t_end) == pytest.approx(0.0, abs=1e-12)


def _rigl_setup(make_opt):
    model = tiny_mlp()
    mask = random_mask(model, 0.5, seed=2)
    alpha, t_end, every = 0.4, 100, 10
    sched = RigL(sparsity=0.5, drop_fraction=alpha, end=t_end, every=every, distribution="uniform")
    opt = make_opt(model.parameters())
    updates = MaskUpdates(model, sched, opt, mask=mask)
    for step in range(1, every):  # train up to just before the first update step
        batch = mlp_batch(step)
        sgd_step(model, opt, batch)
        assert not updates.after_step(step, batch=batch)
    step = every
    batch = mlp_batch(step)
    sgd_step(model, opt, batch)
    return model, opt, updates, step, batch, alpha, t_end


def _expected_rigl_masks(model, old, batch, step, alpha, t_end, grads=None):
    params = dict(model.named_parameters())
    grads = autograd_dense_grads(model, old, batch) if grads is None else grads
    f = alpha / 2 * (1 + math.cos(math.pi * step / t_end))
    expected = {}
    for n, keep in old.items():
        w = params[n].detach().abs().reshape(-1).tolist()
        g = grads[n].abs().reshape(-1).tolist()
        kept = flat_set(keep)
        k = math.floor(f * len(kept) + 0.5)
        assert k > 0
        dropped = k_smallest(w, kept, k)
        inactive = set(range(keep.numel())) - (kept - dropped)
        grown = k_largest(g, inactive, k)
        expected[n] = (kept, dropped, grown, k)
    return expected


def test_rigl_update_drops_smallest_and_grows_largest_dense_gradient():
    model, opt, updates, step, batch, alpha, t_end = _rigl_setup(
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4))
    params = dict(model.named_parameters())
    old = Mask({n: k.clone() for n, k in updates.mask.items()})
    expected = _expected_rigl_masks(model, old, batch, step, alpha, t_end)
    w_before = {n: params[n].detach().clone() for n in old}
    mom_before = {n: opt.state[params[n]]["momentum_buffer"].clone() for n in old}
    assert all(bool((m != 0).any()) for m in mom_before.values())

    assert updates.after_step(step, batch=batch)
    changed_somewhere = False
    for n, new in updates.mask.items():
        kept, dropped, grown, k = expected[n]
        new_set = flat_set(new)
        assert new_set == (kept - dropped) | grown, n
        assert len(new_set) == len(kept), n  # per-layer count unchanged
        # the dropped/grown split as seen from the new mask
        assert kept - new_set == dropped - grown, n
        assert new_set - kept == grown - dropped, n
        w = params[n].detach().reshape(-1)
        for i in grown - kept:
            assert w[i].item() == 0.0, (n, i)  # regrown weights start at exactly zero
        assert torch.all(params[n].detach()[~new] == 0.0)
        changed = (new != old[n])
        changed_somewhere |= bool(changed.any())
        mom = opt.state[params[n]]["momentum_buffer"]
        assert torch.all(mom[changed] == 0.0), n
        assert torch.equal(mom[~changed], mom_before[n][~changed]), n
        # kept-and-unchanged weights are untouched
        assert torch.equal(params[n].detach()[new & old[n]], w_before[n][new & old[n]]), n
    assert changed_somewhere

    # further training (no update due): pruned weights stay exactly zero
    final = updates.mask
    for s in range(step + 1, step + 6):
        b = mlp_batch(s)
        sgd_step(model, opt, b)
        assert not updates.after_step(s, batch=b)
    for n, keep in final.items():
        assert torch.all(params[n].detach()[~keep] == 0.0), n


@pytest.mark.parametrize("amsgrad", [False, True])
def test_rigl_update_resets_adam_moments_at_changed_positions(amsgrad):
    model, opt, updates, step, batch, alpha, t_end = _rigl_setup(
        lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4, amsgrad=amsgrad))
    params = dict(model.named_parameters())
    old = Mask({n: k.clone() for n, k in updates.mask.items()})
    keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    state_before = {n: {k: opt.state[params[n]][k].clone() for k in keys} for n in old}
    step_before = {n: copy.deepcopy(opt.state[params[n]]["step"]) for n in old}
    for n in old:
        for k in keys:
            assert bool((state_before[n][k] != 0).any())

    assert updates.after_step(step, batch=batch)
    for n, new in updates.mask.items():
        changed = new != old[n]
        assert bool(changed.any()), n
        st = opt.state[params[n]]
        for k in keys:
            assert torch.all(st[k][changed] == 0.0), (n, k)
            assert torch.equal(st[k][~changed], state_before[n][k][~changed]), (n, k)
        assert float(st["step"]) == float(step_before[n]) == float(step)
    for s in range(step + 1, step + 6):
        b = mlp_batch(s)
        sgd_step(model, opt, b)
        updates.after_step(s, batch=b)
    for n, keep in updates.mask.items():
        assert torch.all(params[n].detach()[~keep] == 0.0), n


def test_rigl_and_set_break_ties_by_lower_index_and_round_half_up():
    """Exact magnitude ties (a layer of +-0.25) and exact gradient ties (zeros behind dead ReLUs)."""
    model = tiny_mlp()
    with torch.no_grad():
        model[0].bias[:10] = -100.0  # units 0..9 dead for every input: their weights get exactly zero gradient
        signs = torch.where(torch.rand(model[4].weight.shape, generator=torch.Generator().manual_seed(7)) < 0.5,
                            -1.0, 1.0)
        model[4].weight.copy_(0.25 * signs)
    mask = random_mask(model, 0.5, seed=2).apply(model)
    batch = mlp_batch(0)
    step, alpha, t_end = 10, 0.4, 100
    f = alpha / 2 * (1 + math.cos(math.pi * step / t_end))
    # round-half-up matters for at least one layer (f * kept has fractional part >= 0.5)
    assert any((f * int(k.sum())) % 1 >= 0.5 for k in mask.values())
    sched = RigL(sparsity=0.5, drop_fraction=alpha, end=t_end, every=step, distribution="uniform")
    new = sched.next_mask(step, model, mask, batch)
    expected = _expected_rigl_masks(model, mask, batch, step, alpha, t_end)
    grads = autograd_dense_grads(model, mask, batch)
    for n, keep in mask.items():
        kept, dropped, grown, k = expected[n]
        assert flat_set(new[n]) == (kept - dropped) | grown, n
        # the test really exercises gradient ties: the k-th and (k+1)-th candidates tie at zero
        g = grads[n].abs().reshape(-1).tolist()
        inactive = sorted(set(range(keep.numel())) - (kept - dropped), key=lambda i: (-g[i], i))
        if n != "4.weight":
            assert g[inactive[k - 1]] == g[inactive[k]] == 0.0, n
    # magnitude ties in the last layer: the k kept positions of lowest index are dropped
    kept4 = sorted(flat_set(mask["4.weight"]))
    k4 = math.floor(f * len(kept4) + 0.5)
    assert expected["4.weight"][1] == set(kept4[:k4])
    zeta = 0.3
    set_new = SET(sparsity=0.5, drop_fraction=zeta, every=step, seed=0).next_mask(step, model, mask)
    k4 = math.floor(zeta * len(kept4) + 0.5)
    assert set(kept4) - flat_set(set_new["4.weight"]) <= set(kept4[:k4])
    assert set(kept4[k4:]) <= flat_set(set_new["4.weight"])


# ---- SET ---------------------------------------------------------------------------------------------

def test_set_drops_smallest_grows_among_inactive_reproducibly():
    model = tiny_mlp()
    zeta, every = 0.3, 5
    sched = SET(sparsity=0.5, drop_fraction=zeta, every=every, seed=3, distribution="uniform")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    updates = MaskUpdates(model, sched, opt, mask=random_mask(model, 0.5, seed=4))
    params = dict(model.named_parameters())
    counts = {n: int(k.sum()) for n, k in updates.mask.items()}
    n_updates = 0
    for step in range(1, 3 * every + 1):
        batch = mlp_batch(step)
        sgd_step(model, opt, batch)
        if not sched.due(step):
            assert not updates.after_step(step)
            continue
        old = Mask({n: k.clone() for n, k in updates.mask.items()})
        # reproducible: same seed and step -> same mask; another step or seed -> another mask
        a = sched.next_mask(step, model, old)
        b = SET(sparsity=0.5, drop_fraction=zeta, every=every, seed=3).next_mask(step, model, old)
        assert a == b
        assert a != sched.next_mask(step + 1, model, old)
        assert a != SET(sparsity=0.5, drop_fraction=zeta, every=every, seed=4).next_mask(step, model, old)
        w_before = {n: params[n].detach().abs().reshape(-1).tolist() for n in old}
        assert updates.after_step(step)
        n_updates += 1
        assert updates.mask == a
        for n, new in updates.mask.items():
            kept = flat_set(old[n])
            k = math.floor(zeta * len(kept) + 0.5)
            dropped = k_smallest(w_before[n], kept, k)
            new_set = flat_set(new)
            assert len(new_set) == counts[n], n
            remained = kept - dropped
            assert remained <= new_set, n  # only the k smallest were dropped
            grown = new_set - remained
            assert len(grown) == k, n
            assert not (grown & remained), n  # grown among the positions inactive after the drop
            w = params[n].detach().reshape(-1)
            for i in grown - kept:
                assert w[i].item() == 0.0, (n, i)
            assert torch.all(params[n].detach()[~new] == 0.0)
    assert n_updates == 3


# ---- dense_gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("applied", [True, False])
def test_dense_gradients_match_plain_autograd_and_leave_batchnorm_alone(applied):
    model = small_bn_convnet()
    mask = random_mask(model, 0.5, seed=5)
    if applied:
        mask.apply(model)
    model.train()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(1))
    bn = model[1]
    stats = {k: v.clone() for k, v in bn.state_dict().items() if "running" in k or "num_batches" in k}
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}

    got = dense_gradients(model, mask, (x, y))
    want = autograd_dense_grads(model, mask, (x, y))
    assert set(got) == set(mask)
    for n, keep in mask.items():
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7)
        assert bool((want[n][~keep] != 0).any()), n  # nonzero at pruned positions
        assert bool((got[n][~keep] != 0).any()), n
    for k, v in bn.state_dict().items():
        if k in stats:
            assert torch.equal(v, stats[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[n]), n
        assert p.grad is None, n
    assert model.training and bn.training


# ---- due / update_steps for SET and RigL ------------------------------------------------------------

@pytest.mark.parametrize("cls, start, end, every", [
    (SET, 0, None, 7), (SET, 4, 30, 6), (SET, 0, 20, 5), (RigL, 0, 40, 10), (RigL, 3, 50, 8), (RigL, 12, 12, 5),
])
def test_due_and_update_steps_match_brute_force(cls, start, end, every):
    sched = cls(sparsity=0.5, start=start, end=end, every=every, distribution="uniform")
    total = 60
    expected = []
    for t in range(1, total + 1):
        if t >= start and (end is None or t <= end) and (t - start) % every == 0:
            expected.append(t)
    assert sched.update_steps(total) == expected
    assert [t for t in range(0, total + 1) if sched.due(t)] == expected


def test_rigl_errors():
    with pytest.raises(ValueError):
        RigL(sparsity=0.5)
    with pytest.raises(ValueError):
        RigL(sparsity=0.5, end=10, drop_fraction=0.0)
    with pytest.raises(ValueError):
        SET(sparsity=0.5, drop_fraction=1.0)
    model = tiny_mlp()
    mask = random_mask(model, 0.5, seed=6)
    with pytest.raises(ValueError):
        RigL(sparsity=0.5, end=10, distribution="uniform").next_mask(5, model, mask, None, None)
    updates = MaskUpdates(model, RigL(sparsity=0.5, end=10, every=5), mask=mask)
    with pytest.raises(ValueError):
        updates.after_step(5)


# ---- reset_optimizer_state -------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt, keys", [
    (lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True), ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    (lambda ps: torch.optim.AdamW(ps, lr=1e-2), ["exp_avg", "exp_avg_sq"]),
    (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), ["momentum_buffer"]),
])
def test_reset_optimizer_state_zeroes_exactly_the_given_positions(make_opt, keys):
    model = tiny_mlp()
    opt = make_opt(model.parameters())
    for i in range(3):
        sgd_step(model, opt, mlp_batch(i))
    plist = list(model.parameters())
    g = torch.Generator().manual_seed(9)
    positions = {p: torch.rand(p.shape, generator=g) < 0.3 for p in plist[:4]}  # weights and biases; not all params
    before = {p: {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in opt.state[p].items()}
              for p in plist}
    for p in plist:
        for k in keys:
            assert bool((before[p][k] != 0).any())
    reset_optimizer_state(opt, positions)
    for p in plist:
        st = opt.state[p]
        assert set(st) == set(before[p])
        where = positions.get(p, torch.zeros(p.shape, dtype=torch.bool))
        for k in keys:
            assert torch.all(st[k][where] == 0.0), k
            assert torch.equal(st[k][~where], before[p][k][~where]), k
        if "step" in st:
            assert float(st["step"]) == float(before[p]["step"]) == 3.0


# ---- RigL growing by the training step's own gradient (grow_gradient="step") ------------------------

def test_rigl_step_gradient_grows_by_the_gradient_at_the_steps_own_weights():
    """Evci et al. 2020, Algorithm 1: grow by |dL_t/dw| at the weights the step started from, captured
    before the mask zeroes its pruned entries; the expectation is plain autograd on a hook-free copy taken
    before the step, and brute-force sorts."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    alpha, t_end, every = 0.3, 40, 2
    sched = RigL(sparsity=0.5, drop_fraction=alpha, end=t_end, every=every, distribution="uniform",
                 grow_gradient="step")
    updates = MaskUpdates(model, sched, opt)
    for step in range(1, every + 1):
        batch = mlp_batch(step)
        before = copy.deepcopy(model)
        old = Mask({n: k.clone() for n, k in updates.mask.items()})
        updates.before_backward(step)
        sgd_step(model, opt, batch)
        expected_grads = autograd_dense_grads(before, old, batch)
        changed = updates.after_step(step, batch=None)  # the step's gradient: no batch needed
        assert changed == (step % every == 0)
    expected = _expected_rigl_masks(model, old, batch, every, alpha, t_end, grads=expected_grads)
    for n in old:
        kept, dropped, grown, _ = expected[n]
        assert flat_set(updates.mask[n]) == (kept - dropped) | grown, n
    # and it differs from growing by the gradient after the step, which the default uses
    after = _expected_rigl_masks(model, old, batch, every, alpha, t_end)
    assert any(after[n][2] != expected[n][2] for n in old)


def test_rigl_step_gradient_without_capture_says_how_to_drive_it():
    model = tiny_mlp()
    updates = MaskUpdates(model, RigL(sparsity=0.5, end=10, every=1, grow_gradient="step"))
    sgd_step(model, torch.optim.SGD(model.parameters(), lr=0.1), mlp_batch(0))
    with pytest.raises(ValueError, match="before_backward"):
        updates.after_step(1, batch=mlp_batch(0))
    with pytest.raises(ValueError, match="unknown grow_gradient 'stepp'; did you mean 'step'"):
        RigL(sparsity=0.5, end=10, grow_gradient="stepp")


def test_a_nan_gradient_does_not_stop_the_update_before_the_loop_sees_the_divergence():
    """On a GPU the loop checks for divergence every 25 steps; a RigL update between must not raise on NaN.
    NaN ranks as the largest value, as a sort ranks it: NaN gradients grow first."""
    model = tiny_mlp()
    mask = random_mask(model, 0.5, seed=2).apply(model)
    sched = RigL(sparsity=0.5, drop_fraction=0.3, end=100, every=10, distribution="uniform", grow_gradient="step")
    grads = {n: torch.zeros(k.shape) for n, k in mask.items()}
    inactive = (~mask["2.weight"]).reshape(-1).nonzero().squeeze(1)
    grads["2.weight"].view(-1)[inactive[:2]] = float("nan")
    new = sched.next_mask(10, model, mask, gradients=grads)
    assert set(inactive[:2].tolist()) <= flat_set(new["2.weight"])


def test_step_gradients_add_up_over_the_micro_batches_of_an_accumulated_step():
    """Gradient accumulation: two backward passes per optimizer step; RigL grows by their sum, as .grad holds it
    (the expectation: plain autograd of the two losses on a hook-free copy)."""
    model = tiny_mlp()
    sched = RigL(sparsity=0.5, drop_fraction=0.3, end=40, every=1, distribution="uniform", grow_gradient="step")
    updates = MaskUpdates(model, sched)
    old = Mask({n: k.clone() for n, k in updates.mask.items()})
    halves = [mlp_batch(1, n=8), mlp_batch(2, n=8)]
    expected = [autograd_dense_grads(model, old, b) for b in halves]
    captured = {}
    sched_next = sched.next_mask

    def spy(step, model, mask, batch=None, loss_fn=None, gradients=None):
        captured.update(gradients)
        return sched_next(step, model, mask, batch, loss_fn, gradients)

    object.__setattr__(sched, "next_mask", spy)
    for b in halves:
        updates.before_backward(1)  # once per micro-batch, as Lightning's on_before_backward calls it
        nn.functional.cross_entropy(model(b[0]), b[1]).backward()
    assert updates.after_step(1)
    for n in old:
        torch.testing.assert_close(captured[n], expected[0][n] + expected[1][n])
