"""Training cost (train_flops, total_train_flops, density curve) of every protocol against hand counts.

LeNet-300-100 on 28x28 inputs has only linear layers, and bias additions count 0 FLOPs, so the forward
FLOPs of one example are 2 * (784*300 + 300*100 + 100*10) = 532,400 dense, and sum_l d_l * 2 n_in n_out
at layer densities d_l. One training step on a batch of B costs 3 * B * F.
"""

import math

import pytest
from test_data import write_idx_set

from prunelab import Mask
from prunelab.experiments.cost import Segment, account
from prunelab.experiments.hparams import (
    DataHparams,
    DynamicHparams,
    GradualHparams,
    LotteryHparams,
    ModelHparams,
    PruneHparams,
)
from prunelab.experiments.protocols import get_protocol, lottery, prune_at_step
from prunelab.experiments.runner import Replicate, Runner
from prunelab.experiments.store import RunStore
from prunelab.flops import FlopCount
from prunelab.sparse_training import GradualMagnitude, RigL
from prunelab.training import TrainSettings

B, T = 16, 12  # 64 examples, batch 16: 4 iterations per epoch, 12 steps
TRAINING = TrainSettings(train="3ep", batch_size=B, lr=0.05, momentum=0.9)
REP = Replicate(ModelHparams("lenet_300_100"), DataHparams("mnist"), TRAINING, seed=0)
# (name, n_in, n_out) of LeNet-300-100's weights
LAYERS = {"1.weight": (784, 300), "3.weight": (300, 100), "5.weight": (100, 10)}
DENSE_F = 2 * (784 * 300 + 300 * 100 + 100 * 10)
N = sum(i * o for i, o in LAYERS.values())


def hand_forward(densities: dict[str, float]) -> float:
    return sum(densities[n] * 2 * i * o for n, (i, o) in LAYERS.items())


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_idx_set(root / "MNIST" / "raw", n_train=64, n_test=32, gz=True)
    r = Runner(RunStore(tmp_path_factory.mktemp("runs")), data_root=root, device="cpu")
    names = list(r.flop_count(REP).per_layer)
    assert sorted(names) == sorted(LAYERS), names  # the layer names this file's hand counts assume
    return r


def mask_of(runner, result) -> Mask:
    return Mask.load(runner.store.folder(result["id"]) / "mask.pt")


def test_hand_count_of_lenet_and_the_dense_run(runner):
    assert DENSE_F == 532_400
    dense = runner.dense(REP)
    assert dense["status"] == "done" and dense["steps"] == T
    assert dense["dense_forward_flops"] == DENSE_F and dense["forward_flops"] == DENSE_F
    assert dense["train_flops"] == 3 * B * T * DENSE_F
    assert dense["total_train_flops"] == 3 * B * T * DENSE_F
    assert dense["density_curve"] == [[0, 1.0]] and dense["density_auc"] == 1.0


def test_prune_at_init_costs_its_own_sparse_steps_only(runner):
    r = prune_at_step(runner, REP, PruneHparams(method="random", sparsity=0.9))
    m = mask_of(runner, r)
    dens = {n: kept / total for n, (kept, total) in m.layer_counts().items()}
    f_sparse = hand_forward(dens)
    assert r["forward_flops"] == pytest.approx(f_sparse, rel=1e-12)
    assert r["train_flops"] == pytest.approx(3 * B * T * f_sparse, rel=1e-12)
    assert r["total_train_flops"] == pytest.approx(r["train_flops"], rel=1e-12)  # t = 0: nothing before
    kept = sum(k for k, _ in m.layer_counts().values())
    assert r["density_curve"] == [[0, pytest.approx(kept / N, abs=1e-12)]]
    assert r["density_auc"] == pytest.approx(kept / N, abs=1e-12)


def test_magnitude_after_training_adds_the_dense_run(runner):
    r = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=0.8, prune_at="end"))
    m = mask_of(runner, r)
    dens = {n: kept / total for n, (kept, total) in m.layer_counts().items()}
    own = 3 * B * T * hand_forward(dens)
    assert r["train_flops"] == pytest.approx(own, rel=1e-12)
    assert r["total_train_flops"] == pytest.approx(own + 3 * B * T * DENSE_F, rel=1e-12)
    d = sum(k for k, _ in m.layer_counts().values()) / N
    assert r["density_curve"] == [[0, 1.0], [T, pytest.approx(d, abs=1e-12)]]
    assert r["density_auc"] == pytest.approx((T * 1.0 + T * d) / (2 * T), abs=1e-12)


def test_lottery_level_one_rewinding_to_t(runner):
    t = 4
    (r,) = lottery(runner, REP, LotteryHparams(levels=1, rate=0.5, rewind_to=f"{t}it"))
    assert r["rewind_step"] == t
    m = mask_of(runner, r)
    f_sparse = hand_forward({n: k / tot for n, (k, tot) in m.layer_counts().items()})
    assert r["train_flops"] == pytest.approx(3 * B * (T - t) * f_sparse, rel=1e-12)
    dense = runner.dense(REP)
    assert r["total_train_flops"] == pytest.approx(dense["train_flops"] + 3 * B * (T - t) * f_sparse, rel=1e-12)


def test_gradual_cost_follows_its_density_curve(runner):
    s, every, end = 0.8, 2, 8
    hp = GradualHparams(sparsity=s, every=f"{every}it", end=f"{end}it", scope="layer")
    (g,) = get_protocol("gradual").run(runner, REP, hp)
    assert g["status"] == "done"
    # an independent schedule: Zhu & Gupta's cubic from 0 at step 0 to s at step 8, updates every 2 steps
    schedule = GradualMagnitude(every=every, start=0, end=end, sparsity=s, scope="layer")
    updates = [2, 4, 6, 8]
    assert schedule.update_steps(T) == updates
    curve = g["density_curve"]
    assert [step for step, _ in curve] == [0, *updates]
    bounds = [step for step, _ in curve] + [T]
    flops, auc = 0.0, 0.0
    for (step, density), nxt in zip(curve, bounds[1:]):
        sp = schedule.sparsity_at(step)
        if step > 0:  # the cubic, by hand
            assert sp == pytest.approx(s * (1 - (1 - step / end) ** 3), abs=1e-12)
        # layer scope: each layer prunes round(sp * n_l) of its weights (halves up)
        kept = {n: i * o - half_up(sp * i * o) for n, (i, o) in LAYERS.items()}
        assert density == pytest.approx(sum(kept.values()) / N, abs=1e-12), step
        flops += 3 * B * (nxt - step) * hand_forward({n: kept[n] / (i * o) for n, (i, o) in LAYERS.items()})
        auc += density * (nxt - step)
    assert g["train_flops"] == pytest.approx(flops, rel=1e-12)
    assert g["total_train_flops"] == pytest.approx(flops, rel=1e-12)
    assert g["density_auc"] == pytest.approx(auc / T, abs=1e-12)
    # strictly between the static sparse run at the same final (layerwise) sparsity and the dense run
    static = prune_at_step(runner, REP, PruneHparams(method="magnitude", sparsity=s, scope="layer"))
    assert mask_of(runner, static).layer_counts() == Mask.load(runner.store.folder(g["id"]) / "mask.pt").layer_counts()
    assert static["train_flops"] < g["train_flops"] < runner.dense(REP)["train_flops"]


def test_rigl_counts_a_dense_gradient_pass_per_update(runner):
    every, end, s = 2, 8, 0.9
    (r,) = get_protocol("rigl").run(runner, REP, DynamicHparams(sparsity=s, every=f"{every}it", end=f"{end}it"))
    assert r["status"] == "done"
    n_updates = len(RigL(every=every, end=end, sparsity=s).update_steps(T))
    assert n_updates == len([t for t in range(1, T + 1) if t % every == 0 and t <= end]) == 4
    assert r["mask_updates"] == n_updates
    m = mask_of(runner, r)
    f_s = hand_forward({n: k / tot for n, (k, tot) in m.layer_counts().items()})
    expected = 3 * B * T * f_s + n_updates * B * (2 * f_s + DENSE_F)
    assert r["train_flops"] == pytest.approx(expected, rel=1e-12)
    assert r["total_train_flops"] == pytest.approx(expected, rel=1e-12)
    assert r["forward_flops"] == pytest.approx(f_s, rel=1e-12)


def test_set_has_no_extra_passes(runner):
    (r,) = get_protocol("set").run(runner, REP, DynamicHparams(sparsity=0.9, every="2it", end="8it"))
    m = mask_of(runner, r)
    f_s = hand_forward({n: k / tot for n, (k, tot) in m.layer_counts().items()})
    assert r["train_flops"] == pytest.approx(3 * B * T * f_s, rel=1e-12)


# ---- account() on a fake FlopCount ---------------------------------------------------------------

FAKE = FlopCount(per_layer={"a": (100, 0.0), "b": (50, 0.0)}, other=7)


def test_account_segments_before_extra_and_curve():
    own = [Segment(3, {"a": 0.5, "b": 1.0}, 0.6), Segment(0, None, 1.0, 11.0), Segment(2, {"a": 0.1}, 0.2)]
    out = account(FAKE, 4, own, before=[Segment(5)])
    f1 = 7 + 0.5 * 100 + 1.0 * 50  # 107
    f2 = 7 + 0.1 * 100 + 50  # "b" not listed: dense
    own_flops = 3 * 4 * 3 * f1 + 11.0 + 3 * 4 * 2 * f2
    assert out["dense_forward_flops"] == 157.0
    assert out["forward_flops"] == pytest.approx(f2)
    assert out["train_flops"] == pytest.approx(own_flops)
    assert out["total_train_flops"] == pytest.approx(own_flops + 3 * 4 * 5 * 157)
    assert out["density_curve"] == [[0, 1.0], [5, 0.6], [8, 0.2]]
    assert out["density_auc"] == pytest.approx((5 * 1.0 + 3 * 0.6 + 2 * 0.2) / 10)


def test_account_merges_equal_densities_and_handles_no_steps():
    out = account(FAKE, 2, [Segment(4, {"a": 0.5}, 0.5), Segment(6, {"a": 0.5}, 0.5)])
    assert out["density_curve"] == [[0, 0.5]] and out["density_auc"] == pytest.approx(0.5)
    assert out["train_flops"] == pytest.approx(3 * 2 * 10 * (7 + 50 + 50))
    empty = account(FAKE, 2, [])
    assert empty["train_flops"] == 0 and empty["total_train_flops"] == 0
    assert empty["forward_flops"] == 157.0 and empty["density_curve"] == [] and empty["density_auc"] == 1.0
