"""Sparse execution of masked layers (prunelab.training.sparse_kernels): the same training as the dense masked step.

Every reference here is the dense masked path (``Mask.apply`` and plain autograd through ``nn.Linear``), run
on its own copy of the network; the sparse path must match it to float rounding. The tolerance is derived,
not tuned: a float sum of ``K`` terms is off by at most ``K u`` times the sum of their magnitudes (``u`` the
unit roundoff; Higham 2002, §3.1), each step adds such an error to every weight, so after ``n`` steps
``n K u`` bounds the difference relative to the weights' scale, ``K`` being the longest sum of a step
(the fan-in or the batch).
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab import models
from prunelab.experiments.runner import realized_cost
from prunelab.training import TrainSettings, sparse_crossover, train
from prunelab.training.checkpoints import CheckpointFolder
from prunelab.training.runtime import RuntimeOptions
from prunelab.training.sparse_kernels import SparseExecution, Structure, sparse_execution, sparse_linear


def tolerance(steps: int, reduction: int, dtype: torch.dtype, scale: float = 1.0) -> float:
    """``steps * K * u * scale``: the rounding bound of the module docstring."""
    return steps * reduction * torch.finfo(dtype).eps / 2 * scale


class MLP(nn.Module):
    """Linear layers with and without biases, on inputs with a token dimension (batch, tokens, features)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(24, 40)
        self.b = nn.Linear(40, 32, bias=False)
        self.c = nn.Linear(32, 5)

    def forward(self, x):
        return self.c(torch.tanh(self.b(F.relu(self.a(x))))).mean(1)


def lenet(dtype=torch.float64):
    return models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0).to(dtype)


NETS = {"lenet_300_100": (lenet, (1, 28, 28), 784), "mlp": (lambda dtype=torch.float64: MLP().to(dtype), (3, 24), 40)}
OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def batches(shape, n, steps, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g).to(dtype), torch.randint(0, 5, (n,), generator=g))
            for _ in range(steps)]


def train_steps(model, optimizer, data):
    for x, y in data:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_close_weights(sparse: nn.Module, dense: nn.Module, tol: float, mask=None):
    for (name, p), (_, q) in zip(sparse.named_parameters(), dense.named_parameters()):
        scale = max(1.0, float(q.detach().abs().max()))
        diff = float((p.detach() - q.detach()).abs().max())
        assert diff <= tol * scale, f"{name}: differs by {diff:.3g} > {tol * scale:.3g}"
        if mask is not None and name in mask:
            assert bool((p.detach()[~mask[name]] == 0).all()), f"{name}: a pruned weight moved"


# ---- one layer against autograd ---------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(7,), (3, 5)])
def test_layer_gradients_are_those_of_autograd_through_the_masked_dense_layer(lead):
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(6, 9, generator=g) < 0.4
    keep[2] = False  # a row without kept weights
    keep[:, 4] = False  # and a column
    weight = torch.randn(6, 9, generator=g, dtype=torch.float64) * keep
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(*lead, 9, generator=g, dtype=torch.float64, requires_grad=True)
    s = Structure(keep)
    values = weight.reshape(-1)[keep.reshape(-1)].clone().requires_grad_()
    out = sparse_linear(x, values, bias, s)
    w = weight.clone().requires_grad_()
    ref = x @ w.t() + bias  # plain autograd, the dense masked product
    probe = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    gx, gv, gb = torch.autograd.grad((out * probe).sum(), (x, values, bias))
    rx, rw, rb = torch.autograd.grad((ref * probe).sum(), (x, w, bias))
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)
    assert torch.allclose(gx, rx, rtol=0, atol=1e-13)
    assert torch.allclose(gv, rw[keep], rtol=0, atol=1e-13)  # the weight gradient at the kept positions only
    assert torch.allclose(gb, rb, rtol=0, atol=1e-13)


def test_a_layer_with_nothing_kept_outputs_its_bias():
    keep = torch.zeros(4, 3, dtype=torch.bool)
    bias = torch.arange(4.0, dtype=torch.float64)
    out = sparse_linear(torch.ones(2, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), bias,
                        Structure(keep))
    assert torch.equal(out, bias.expand(2, 4))


# ---- whole networks: the same training ----------------------------------------------------------------

@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_sparse_training_is_the_dense_masked_training(net, opt):
    make, shape, fan_in = NETS[net]
    base = make()
    mask = prunelab.prune(base, "random", 0.9, seed=0)
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    mask.apply(dense)
    mask.apply(sparse)
    od, os_ = OPTIMIZERS[opt](dense.parameters()), OPTIMIZERS[opt](sparse.parameters())
    steps = 5
    data = batches(shape, 16, steps)
    train_steps(dense, od, data)
    with sparse_execution(sparse, os_, "on") as ex:
        assert sorted(ex.sparse_layers()) == sorted(mask)
        train_steps(sparse, os_, data)
        inside = os_.state_dict()  # the optimizer's state in dense shapes while sparse
        assert_close_weights(sparse, dense, tolerance(steps, fan_in, torch.float64), mask)
    tol = tolerance(steps, fan_in, torch.float64)
    assert_close_weights(sparse, dense, tol, mask)
    ref = od.state_dict()["state"]
    for state in (inside["state"], os_.state_dict()["state"]):
        assert state.keys() == ref.keys()
        for i in ref:
            for k, v in ref[i].items():
                assert state[i][k].shape == v.shape
                assert torch.allclose(state[i][k], v, rtol=0, atol=tol * max(1.0, float(v.abs().max())))
    assert prunelab.Mask.from_weights(sparse, list(mask)) == prunelab.Mask.from_weights(dense, list(mask))


def test_float32_lenet_stays_within_the_rounding_bound():
    base = lenet(torch.float32)
    mask = prunelab.prune(base, "random", 0.982, seed=0)
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    mask.apply(dense)
    mask.apply(sparse)
    od = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    os_ = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    steps = 8
    data = batches((1, 28, 28), 128, steps, dtype=torch.float32)
    train_steps(dense, od, data)
    with sparse_execution(sparse, os_, "on"):
        train_steps(sparse, os_, data)
    assert_close_weights(sparse, dense, tolerance(steps, 784, torch.float32), mask)
    assert any(not torch.equal(p, q) for p, q in zip(sparse.parameters(), dense.parameters())), \
        "bitwise equal: the sparse kernels did not run"


@pytest.mark.parametrize("schedule", [
    prunelab.SET(sparsity=0.8, every=2, drop_fraction=0.3, seed=1),
    prunelab.RigL(sparsity=0.8, every=2, end=8),
    prunelab.GradualMagnitude(sparsity=0.95, initial_sparsity=0.5, every=2, start=0, end=6, scope="layer"),
], ids=["set", "rigl", "gradual"])
def test_mask_updates_rebuild_the_sparse_layers(schedule):
    base = MLP().double()
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    od = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    os_ = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    ud, us = prunelab.MaskUpdates(dense, schedule, od), prunelab.MaskUpdates(sparse, schedule, os_)
    data = batches((3, 24), 16, 8)
    with sparse_execution(sparse, os_, "on") as ex:
        for step, (x, y) in enumerate(data, start=1):
            for model, opt, updates in ((dense, od, ud), (sparse, os_, us)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                updates.after_step(step, batch=(x, y))
            ex.refresh()
            assert us.mask == ud.mask, f"masks differ after step {step}"
            for name, layer in ex.layers.items():
                assert layer.structure.nnz == int(us.mask[name].sum())
        assert us.updates == ud.updates > 0
    assert_close_weights(sparse, dense, tolerance(8, 40, torch.float64), us.mask)


# ---- the training loop: checkpoints, resume in either mode, the record ----------------------------------

SETTINGS = TrainSettings(train="3ep", batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-4, eval_every="1ep")


def small_lenet():
    return models.create("lenet_300_100", num_classes=4, input_shape=(1, 8, 8), seed=0)


@pytest.mark.parametrize("first, then", [("on", "off"), ("off", "on")])
def test_checkpoints_are_dense_and_a_run_resumes_in_either_mode(tiny_dataset, tmp_path, first, then):
    mask = prunelab.prune(small_lenet(), "random", 0.9, seed=0)
    ref = small_lenet()
    train(ref, tiny_dataset, SETTINGS, mask=mask, device="cpu")  # uninterrupted, dense masked

    class Stop(Exception):
        pass

    def stop(step, model):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        train(small_lenet(), tiny_dataset, SETTINGS, mask=mask, device="cpu", checkpoint_dir=tmp_path,
              runtime=RuntimeOptions(sparse_kernels=first), on_step=stop)
    state = CheckpointFolder(tmp_path).load_latest()
    assert state["step"] == 4
    plain = small_lenet().state_dict()
    assert state["model"].keys() == plain.keys()
    assert all(state["model"][k].shape == v.shape for k, v in plain.items())
    shapes = [tuple(p.shape) for p in small_lenet().parameters()]
    assert [tuple(s["momentum_buffer"].shape) for _, s in sorted(state["optimizer"]["state"].items())] == shapes
    resumed = small_lenet()
    res = train(resumed, tiny_dataset, SETTINGS, mask=mask, device="cpu", checkpoint_dir=tmp_path,
                runtime=RuntimeOptions(sparse_kernels=then))
    assert res.step == 12
    assert_close_weights(resumed, ref, tolerance(12, 64, torch.float32), mask)
    assert type(resumed[1]).forward is nn.Linear.forward and "forward" not in vars(resumed[1])  # ordinary again


def test_the_loop_records_step_time_and_sparse_layers(tiny_dataset):
    mask = prunelab.prune(small_lenet(), "random", 0.9, seed=0)
    on = train(small_lenet(), tiny_dataset, SETTINGS, mask=mask, device="cpu",
               runtime=RuntimeOptions(sparse_kernels="on"))
    off = train(small_lenet(), tiny_dataset, SETTINGS, mask=mask, device="cpu")
    assert on.timed_steps == off.timed_steps == 12
    assert on.step_wall_time > 0 and off.step_wall_time > 0
    assert on.execution["sparse_layers"] == list(mask)
    assert on.execution["sparse_steps"] == dict.fromkeys(mask, 12)
    assert off.execution == {}
    record = realized_cost([on, on], "on")
    assert record["timed_steps"] == 24 and record["sparse_steps"] == dict.fromkeys(mask, 24)
    assert record["step_wall_time"] == pytest.approx(on.step_wall_time)
    assert realized_cost([off], "off") == {"step_wall_time": off.step_wall_time, "timed_steps": 12,
                                           "sparse_kernels": "off", "sparse_layers": [], "sparse_steps": {},
                                           "dense_layers": {}}


def test_where_sparse_cannot_be_the_same_training_it_stays_dense_and_says_so(tiny_dataset):
    mask = prunelab.prune(small_lenet(), "random", 0.9, seed=0)
    with pytest.warns(UserWarning, match="--sparse-kernels on ignored: .*mixed precision"):
        res = train(small_lenet(), tiny_dataset, SETTINGS.replace(train="2it", amp="bf16"), mask=mask, device="cpu",
                    runtime=RuntimeOptions(sparse_kernels="on"))
    assert res.execution["sparse_layers"] == []
    with pytest.warns(UserWarning, match="grows by each step's dense gradient"):
        train(small_lenet(), tiny_dataset, SETTINGS.replace(train="2it"), device="cpu",
              mask_schedule=prunelab.RigL(sparsity=0.9, every=1, end=2, grow_gradient="step"),
              runtime=RuntimeOptions(sparse_kernels="on"))


def test_on_names_the_masked_layers_that_stay_dense():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    prunelab.prune(net, "random", 0.5, seed=0).apply(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match=r"1 masked layer\(s\) that are not linear layers run dense \(0.weight\)"):
        with sparse_execution(net, opt, "on") as ex:
            assert ex.sparse_layers() == ["2.weight"]
            assert ex.record()["dense_layers"] == {"0.weight": "dense: not a linear layer"}


def test_auto_runs_a_layer_sparse_only_below_its_measured_crossover(tmp_path, monkeypatch):
    cache = tmp_path / "crossover.json"
    monkeypatch.setenv(sparse_crossover.ENV_VAR, str(cache))
    monkeypatch.setattr(sparse_crossover, "_memo", {})
    where = sparse_crossover.machine(torch.device("cpu"))
    entry = {"dense_ms": 1.0, "sparse_over_dense": {}, "measured_at": 0}
    cache.write_text(json.dumps({where: {"40x24, batch 16": {**entry, "crossover": 0.5},
                                         "32x40, batch 16": {**entry, "crossover": 0.05},
                                         "5x32, batch 16": {**entry, "crossover": 0.0}}}))
    net = MLP()
    prunelab.prune(net, "random", 0.9, seed=0, distribution="uniform").apply(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with sparse_execution(net, opt, "auto", batch_size=16) as ex:
        assert ex.sparse_layers() == ["a.weight"]
        assert ex.choices["b.weight"].startswith("dense: density 0.1000 above the crossover 0.05")
        assert ex.choices["c.weight"].startswith("dense: density")
    monkeypatch.setattr(sparse_crossover, "measure", lambda *a: pytest.fail("a cached crossover was measured again"))
    assert sparse_crossover.crossover((40, 24), 16) == 0.5


def _ask_crossover_slowly(log: str, start, results) -> None:
    """In a child process: the crossover of a layer no one has measured, asked for once every child is ready, with
    a measurement that takes a while and leaves a line in ``log`` (the cache file comes from the environment)."""
    def slow_measure(shape, batch, device, chained=False):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return {"dense_ms": 1.0, "sparse_over_dense": {}, "measured_at": 0, "crossover": 0.25}

    sparse_crossover.measure = slow_measure
    sparse_crossover._memo.clear()
    start.wait()
    results.put(sparse_crossover.crossover((40, 24), 16))


def test_processes_that_ask_for_one_crossover_at_once_measure_it_once_and_keep_every_entry(tmp_path, monkeypatch):
    """A sweep's workers start together: the first to ask measures under the cache's lock, the others wait and read
    its figure; an entry another process stored meanwhile survives the write."""
    cache, log = tmp_path / "crossover.json", tmp_path / "measured.log"
    monkeypatch.setenv(sparse_crossover.ENV_VAR, str(cache))
    where = sparse_crossover.machine(torch.device("cpu"))
    cache.write_text(json.dumps({where: {"7x7, batch 16": {"crossover": 0.1}}}))
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(3), ctx.Queue()
    children = [ctx.Process(target=_ask_crossover_slowly, args=(str(log), start, results)) for _ in range(3)]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert [results.get(timeout=5) for _ in children] == [0.25] * 3
    assert len(log.read_text().split()) == 1  # measured once, not by every process
    stored = json.loads(cache.read_text())[where]
    assert stored["40x24, batch 16"]["crossover"] == 0.25 and stored["7x7, batch 16"] == {"crossover": 0.1}


def test_auto_lets_a_layer_join_a_sparse_neighbours_chain_below_its_crossover_there(tmp_path, monkeypatch):
    """Alone only the first layer pays; in a chain behind it the second does too (so the two run as one chain) and
    the third does not: its in-chain crossover is below its density. Without a sparse neighbour nothing joins."""
    cache = tmp_path / "crossover.json"
    monkeypatch.setenv(sparse_crossover.ENV_VAR, str(cache))
    where = sparse_crossover.machine(torch.device("cpu"))
    entry = {"dense_ms": 1.0, "sparse_over_dense": {}, "measured_at": 0}

    def cached(first_alone: float) -> None:
        monkeypatch.setattr(sparse_crossover, "_memo", {})
        crossovers = {"40x24, batch 16": first_alone, "32x40, batch 16": 0.0, "5x32, batch 16": 0.0,
                      "40x24, batch 16, in a chain": 0.5, "32x40, batch 16, in a chain": 0.2,
                      "5x32, batch 16, in a chain": 0.05}
        cache.write_text(json.dumps({where: {k: {**entry, "crossover": c} for k, c in crossovers.items()}}))

    def fresh():
        net = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 5))
        prunelab.prune(net, "random", 0.9, seed=0, distribution="uniform").apply(net)
        return net, torch.optim.SGD(net.parameters(), lr=0.1)

    monkeypatch.setattr(sparse_crossover, "measure", lambda *a, **k: pytest.fail("a cached crossover was measured"))
    cached(first_alone=0.5)
    net, opt = fresh()
    with sparse_execution(net, opt, "auto", batch_size=16) as ex:
        assert ex.sparse_layers() == ["0.weight", "2.weight"]
        assert [len(layers) for c in ex.chains for _, _, layers, _ in c.runs] == [2]  # one chain of the two
        assert ex.choices["4.weight"] == ("dense: density 0.1000 above the crossover 0; in a sparse neighbour's "
                                          "chain too (crossover there 0.05)")
    cached(first_alone=0.0)
    net, opt = fresh()
    with sparse_execution(net, opt, "auto", batch_size=16) as ex:
        assert ex.sparse_layers() == [] and ex.chains == []


def test_a_crossover_is_measured_once_and_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(sparse_crossover.ENV_VAR, str(tmp_path / "c.json"))
    monkeypatch.setattr(sparse_crossover, "_memo", {})
    monkeypatch.setattr(sparse_crossover, "DENSITIES", (0.5, 0.01))
    calls = []
    real = sparse_crossover.measure
    monkeypatch.setattr(sparse_crossover, "measure", lambda *a, **k: calls.append(a) or real(*a, rounds=3, **k))
    first = sparse_crossover.crossover((8, 16), 4)
    assert sparse_crossover.crossover((8, 16), 4) == first and len(calls) == 1
    assert first in (0.0, 0.01, 0.5)
    chained = sparse_crossover.crossover((8, 16), 4, chained=True)  # behind a sparse feeder: measured apart
    assert sparse_crossover.crossover((8, 16), 4, chained=True) == chained and len(calls) == 2
    assert chained in (0.0, 0.01, 0.5)
    sparse_crossover.main([])
    out = capsys.readouterr().out
    assert "8x16, batch 4 " in out and "8x16, batch 4, in a chain" in out and "crossover" in out


def test_bad_modes_are_refused_before_any_work():
    with pytest.raises(ValueError, match="unknown --sparse-kernels mode 'fast'.*auto"):
        RuntimeOptions(sparse_kernels="fast")
    net = MLP()
    with pytest.raises(ValueError, match="applied mask"):
        SparseExecution(net, torch.optim.SGD(net.parameters(), lr=0.1), "on").engage()
    with pytest.raises(ValueError, match="batch size"):
        SparseExecution(net, torch.optim.SGD(net.parameters(), lr=0.1), "auto")


def test_functional_calls_with_other_weights_run_dense():
    """RigL's dense gradient and the criteria swap the weights in (``torch.func.functional_call``): the sparse
    forward must not hide the tensors they put there."""
    net = MLP().double()
    mask = prunelab.prune(net, "random", 0.8, seed=0).apply(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 3, 24, dtype=torch.float64)
    ones = {n: torch.ones_like(p) for n, p in net.named_parameters() if n in mask}
    with warnings.catch_warnings(), sparse_execution(net, opt, "on"):
        warnings.simplefilter("error")
        got = torch.func.functional_call(net, ones, (x,))
    prunelab.remove_mask(net)
    assert torch.allclose(got, torch.func.functional_call(net, ones, (x,)), rtol=0, atol=1e-12)


# ---- the chain of sparse layers and the packed optimizer parameter -----------------------------------------

@pytest.mark.parametrize("lead", [(7,), (3, 5)])
def test_a_chain_is_plain_autograd_through_the_masked_dense_layers(lead):
    """``sparse_chain`` (one autograd node, its backward written out) against autograd through dense masked
    layers with ReLUs, in float64: a layer without bias, a pair without a ReLU between them, a row and a column
    with nothing kept."""
    from prunelab.training.sparse_kernels import sparse_chain

    g = torch.Generator().manual_seed(0)
    sizes = [9, 7, 6, 4]
    keeps = [torch.rand(o, i, generator=g) < 0.5 for i, o in zip(sizes, sizes[1:])]
    keeps[0][2] = False
    keeps[1][:, 3] = False
    weights = [torch.randn(k.shape, generator=g, dtype=torch.float64) * k for k in keeps]
    biases = [torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True) if i != 0 else None
              for i in range(3)]
    biases[2] = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    biases[1] = None
    relus = [True, False]
    x = torch.randn(*lead, 9, generator=g, dtype=torch.float64, requires_grad=True)
    values = [w.reshape(-1)[k.reshape(-1)].clone().requires_grad_() for w, k in zip(weights, keeps)]
    out = sparse_chain(x, list(zip(values, biases)), [Structure(k) for k in keeps], relus)
    dense = [w.clone().requires_grad_() for w in weights]
    ref = x
    for i, (w, b) in enumerate(zip(dense, biases)):
        ref = F.linear(ref, w, b)
        if i < 2 and relus[i]:
            ref = F.relu(ref)
    probe = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad((out * probe).sum(), [x, *values, biases[2]])
    want = torch.autograd.grad((ref * probe).sum(), [x, *dense, biases[2]])
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)
    assert torch.allclose(got[0], want[0], rtol=0, atol=1e-13)
    for gv, gw, k in zip(got[1:4], want[1:4], keeps):
        assert torch.allclose(gv, gw[k], rtol=0, atol=1e-13)
    assert torch.allclose(got[4], want[4], rtol=0, atol=1e-13)


def test_lenet_runs_as_one_chain_in_one_packed_parameter():
    net = lenet()
    mask = prunelab.prune(net, "random", 0.9, seed=0).apply(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with sparse_execution(net, opt, "on") as ex:
        assert len(ex.chains) == 1 and [len(r[2]) for r in ex.chains[0].runs] == [3]
        assert [p.shape for p in opt.param_groups[0]["params"]] == [(sum(int(k.sum()) for k in mask.values())
                                                                      + 300 + 100 + 10,)]
        assert "forward" in vars(net)
    assert "forward" not in vars(net) and len(opt.param_groups[0]["params"]) == 6
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], net.parameters()))


def test_a_hooked_layer_sends_the_chain_back_to_its_layers():
    base = lenet()
    mask = prunelab.prune(base, "random", 0.9, seed=0)
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    mask.apply(dense)
    mask.apply(sparse)
    od, os_ = OPTIMIZERS["momentum_wd"](dense.parameters()), OPTIMIZERS["momentum_wd"](sparse.parameters())
    seen = []
    for net in (dense, sparse):
        net[3].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    data = batches((1, 28, 28), 16, 3)
    train_steps(dense, od, data)
    with sparse_execution(sparse, os_, "on"):
        train_steps(sparse, os_, data)
    assert seen == [(16, 100)] * 6  # the hook ran in both
    assert_close_weights(sparse, dense, tolerance(3, 784, torch.float64), mask)


@pytest.mark.parametrize("opt", ["momentum_wd", "adamw"])
def test_the_packed_optimizer_state_saves_and_loads_as_the_dense_one(opt):
    """The optimizer's state_dict while sparse is the dense one (shapes, numbering, values); a dense state_dict
    loads into the packed optimizer, and training goes on as the dense one does."""
    base = lenet()
    mask = prunelab.prune(base, "random", 0.9, seed=0)
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    mask.apply(dense)
    mask.apply(sparse)
    od, os_ = OPTIMIZERS[opt](dense.parameters()), OPTIMIZERS[opt](sparse.parameters())
    data = batches((1, 28, 28), 16, 6)
    train_steps(dense, od, data[:3])
    tol = tolerance(6, 784, torch.float64)
    sparse.load_state_dict(dense.state_dict())  # the weights before engaging, as a resume loads them
    with sparse_execution(sparse, os_, "on"):
        saved = copy.deepcopy(od.state_dict())
        os_.load_state_dict(saved)  # the dense optimizer's state, into the packed one
        got = os_.state_dict()
        assert got["param_groups"][0]["params"] == saved["param_groups"][0]["params"] == list(range(6))
        for i, s in saved["state"].items():
            for k, v in s.items():
                assert torch.equal(got["state"][i][k], v), (i, k)
        train_steps(sparse, os_, data[3:])
    train_steps(dense, od, data[3:])
    assert_close_weights(sparse, dense, tol, mask)
    ref = od.state_dict()["state"]
    for i, s in os_.state_dict()["state"].items():
        for k, v in s.items():
            assert torch.allclose(v, ref[i][k], rtol=0, atol=tol * max(1.0, float(ref[i][k].abs().max()))), (i, k)


def test_biases_in_their_own_group_stay_theirs():
    """Weights and biases in two parameter groups (no weight decay on biases): a pack per group."""
    base = lenet()
    mask = prunelab.prune(base, "random", 0.9, seed=0)
    dense, sparse = copy.deepcopy(base), copy.deepcopy(base)
    mask.apply(dense)
    mask.apply(sparse)

    def groups(net):
        ps = dict(net.named_parameters())
        return [{"params": [p for n, p in ps.items() if n.endswith("weight")], "weight_decay": 1e-2},
                {"params": [p for n, p in ps.items() if n.endswith("bias")], "weight_decay": 0.0}]

    od = torch.optim.SGD(groups(dense), lr=0.1, momentum=0.9)
    os_ = torch.optim.SGD(groups(sparse), lr=0.1, momentum=0.9)
    data = batches((1, 28, 28), 16, 4)
    train_steps(dense, od, data)
    with sparse_execution(sparse, os_, "on") as ex:
        assert len(ex.packs) == 2
        train_steps(sparse, os_, data)
        assert [len(s["params"]) for s in os_.state_dict()["param_groups"]] == [3, 3]
    assert_close_weights(sparse, dense, tolerance(4, 784, torch.float64), mask)
