"""Memory-bounded scoring: SNIP and GraSP over micro-batches equal the one-pass score (float64, ~1e-12).

The references are computed here with ``torch.func`` (gradient by reverse mode, Hessian-gradient product
by forward-over-reverse ``jvp``), independently of the scorers' double back-propagation.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

import prunelab
from prunelab.experiments.hparams import PruneHparams, nondefault_fields, run_hash
from prunelab.scores.batching import MicroBatchWarning

# The criteria that score a batch in micro-batches (and across ranks): those that take score_batch_size. Their
# scores are functions of the loss's gradient, checked here against torch.func; PX's is not (the path kernel of
# Iurada et al. 2024, on ReLU networks only): its micro-batches are checked against its path enumeration in
# tests/test_criteria_ntk_px_npb.py, and its ranks below against one process.
NOT_OF_THE_LOSS = {"px"}
BATCHED = [n for n, m in prunelab.methods().items() if m.needs_data and "score_batch_size" in m.options]
DATA_METHODS = [n for n in BATCHED if n not in NOT_OF_THE_LOSS]
TEMPERATURE = {"snip": 1.0, "iterative_snip": 1.0, "grasp": 200.0, "grasp_abs": 200.0, "force": 1.0,
               "iter_snip_dejorge": 1.0}


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def relu_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()


def data(n, shape=(4,), classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def reference(model, pieces, method, bn_train=True, unmasked=None):
    """The score of ``method`` for L = sum_i n_i/N * CE(model(x_i) / T, y_i) over ``pieces``, by torch.func.

    With train-mode BatchNorm every piece is normalized with its own statistics (that is what a
    micro-batched score computes); with one piece this is the one-pass score. ``unmasked``: the model before its
    mask was applied, whose weights FORCE multiplies the gradient by (de Jorge et al. 2021).
    """
    ref = copy.deepcopy(model).train(bn_train).requires_grad_(False)
    if bn_train:
        torch.func.replace_all_batch_norm_modules_(ref)  # batch statistics without in-place running-stat updates
    names = list(prunelab.prunable_parameters(model))
    ws = {n: p.detach() for n, p in ref.named_parameters() if n in names}
    total = sum(len(x) for x, _ in pieces)
    t = TEMPERATURE[method]

    def loss(w):
        return sum(F.cross_entropy(functional_call(ref, w, (x,)) / t, y) * (len(x) / total) for x, y in pieces)

    g = grad(loss)(ws)
    if method in ("snip", "iterative_snip", "iter_snip_dejorge"):
        return {n: (g[n] * ws[n]).abs() for n in names}
    if method == "force":
        theta = dict((unmasked or model).named_parameters())
        return {n: (g[n] * theta[n].detach()).abs() for n in names}
    _, hg = jvp(grad(loss), (ws,), (g,))
    return {n: -ws[n] * hg[n] if method == "grasp" else (ws[n] * hg[n]).abs() for n in names}


def assert_scores_equal(got, want, tol=1e-12):
    assert got.keys() == want.keys()
    scale = max(float(v.abs().max()) for v in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=tol * scale, msg=n)


@pytest.mark.parametrize("method", DATA_METHODS)
@pytest.mark.parametrize("size", [1, 4, 5, 13, 100])  # 13 = 3 * 4 + 1: an uneven last micro-batch
def test_micro_batched_score_equals_the_one_pass_score(method, size):
    model = mlp()
    x, y = data(13)
    mask = prunelab.Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(5)) < 0.7
                          for n, p in prunelab.prunable_parameters(model).items()})
    masked = copy.deepcopy(model)
    mask.apply(masked)
    want = reference(masked, [(x, y)], method, unmasked=model)
    one_pass = prunelab.score(model, method, batch=(x, y), mask=mask)
    got = prunelab.score(model, method, batch=(x, y), mask=mask, score_batch_size=size)
    assert_scores_equal(one_pass, want)
    assert_scores_equal(got, want)
    assert_scores_equal(got, one_pass)


def test_micro_batches_split_each_pair_of_a_batch_list():
    model = mlp()
    x, y = data(11)
    pairs = [(x[:7], y[:7]), (x[7:], y[7:])]
    want = reference(model, [(x, y)], "grasp")
    assert_scores_equal(prunelab.score(model, "grasp", batch=pairs, score_batch_size=3), want)


@pytest.mark.parametrize("method", ["snip", "iterative_snip", "grasp", "grasp_abs"])
def test_prune_with_micro_batches_gives_the_one_pass_mask(method):
    model = mlp()
    x, y = data(13)
    kwargs = dict(batch=(x, y), iterations=3) if method == "iterative_snip" else dict(batch=(x, y))
    one = prunelab.prune(model, method, 0.6, **kwargs)
    micro = prunelab.prune(model, method, 0.6, score_batch_size=4, **kwargs)
    assert all(torch.equal(one[n], micro[n]) for n in one)


@pytest.mark.parametrize("method", DATA_METHODS)
def test_train_mode_batchnorm_normalizes_each_micro_batch_and_says_so(method):
    model = bn_net()
    x, y = data(10, shape=(2, 4, 4))
    with pytest.warns(MicroBatchWarning, match="BatchNorm in train mode"):
        got = prunelab.score(model, method, batch=(x, y), score_batch_size=4)
    pieces = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    assert_scores_equal(got, reference(model, pieces, method))
    one_pass = prunelab.score(model, method, batch=(x, y))
    assert_scores_equal(one_pass, reference(model, [(x, y)], method))
    assert not all(torch.allclose(got[n], one_pass[n]) for n in got)  # the statistics differ, and so do the scores


@pytest.mark.parametrize("method", DATA_METHODS)
def test_running_statistics_batchnorm_makes_micro_batches_exact_without_warning(method):
    model = bn_net().eval()  # batchnorm_train=False keeps the caller's mode: eval, the running statistics
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    x, y = data(10, shape=(2, 4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MicroBatchWarning)
        got = prunelab.score(model, method, batch=(x, y), score_batch_size=3, batchnorm_train=False)
        whole = prunelab.score(model, method, batch=(x, y), score_batch_size=10)  # one piece: nothing to say
    assert_scores_equal(got, reference(model, [(x, y)], method, bn_train=False))
    assert_scores_equal(whole, reference(model, [(x, y)], method))
    with pytest.warns(MicroBatchWarning):  # the caller's train mode, kept by batchnorm_train=False, is batch statistics
        prunelab.score(model.train(), method, batch=(x, y), score_batch_size=3, batchnorm_train=False)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_score_batch_size_is_refused_before_any_work(bad):
    model = mlp()
    x, y = data(6)
    with pytest.raises(ValueError, match="score_batch_size must be a positive number"):
        prunelab.score(model, "snip", batch=(x, y), score_batch_size=bad)
    with pytest.raises(ValueError, match="score_batch_size must be a positive number"):
        prunelab.prune(model, "grasp", 0.5, batch=(x, y), score_batch_size=bad)
    with pytest.raises(ValueError, match="score_batch_size must be a positive number"):
        PruneHparams(method="snip", score_batch_size=bad)


def test_a_criterion_without_data_says_it_ignores_score_batch_size():
    model = mlp()
    with pytest.warns(UserWarning, match="synflow scores no batch of data: score_batch_size=8 is ignored"):
        prunelab.prune(model, "synflow", 0.5, input_shape=(4,), iterations=2, score_batch_size=8)
    with pytest.warns(UserWarning, match="magnitude scores no batch of data"):
        prunelab.score(model, "magnitude", score_batch_size=8)


def test_score_batch_size_is_outside_the_run_identity():
    plain = PruneHparams(method="snip", sparsity=0.9)
    micro = PruneHparams(method="snip", sparsity=0.9, score_batch_size=64)
    assert nondefault_fields(micro) == nondefault_fields(plain)
    assert run_hash("prune", pruning=micro) == run_hash("prune", pruning=plain)
    assert dataclasses.replace(micro, sparsity=0.8) != plain  # other fields still count

    from prunelab.experiments.protocols import PROTOCOLS
    from prunelab.experiments.runner import Replicate

    rep = Replicate(prunelab.experiments.hparams.ModelHparams(), prunelab.experiments.hparams.DataHparams(),
                    prunelab.training.TrainSettings(), seed=0)
    record = PROTOCOLS.get("run").hparams_record(rep, micro)
    assert "score_batch_size" not in record["pruning"] and record == PROTOCOLS.get("run").hparams_record(rep, plain)


def test_cli_flag_sets_the_field():
    from prunelab.cli import build_parser
    from prunelab.experiments.hparams import dataclass_from_flags

    args = build_parser().parse_args(["run", "--model", "lenet5", "--dataset", "mnist", "--method", "grasp",
                                      "--score-batch-size", "256"])
    assert dataclass_from_flags(PruneHparams, args).score_batch_size == 256


# ---- DDP: the ranks share the batch out and all-reduce (tests/ddp_score_worker.py) -----------------------------
DDP_CASES = [(method, net, size) for method in DATA_METHODS for net, size in
             (("mlp", None), ("mlp", 3), ("bn", 4))]
DDP_CASES += [(method, net, size) for method in sorted(set(BATCHED) & NOT_OF_THE_LOSS) for net, size in
              (("relu_mlp", None), ("relu_mlp", 3), ("bn", 4))]


def ddp_case(method, net, size):
    """(model, batch, method, options) of one case; 13 examples, so the ranks get unequal shares."""
    if net in ("mlp", "relu_mlp"):
        model, batch = (mlp if net == "mlp" else relu_mlp)(), data(13)
    else:
        model, batch = bn_net(), data(13, shape=(2, 4, 4))
    return model, batch, method, {} if size is None else {"score_batch_size": size}


def test_two_ranks_score_what_one_process_scores(tmp_path):
    import subprocess
    import sys

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           "tests/ddp_score_worker.py", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key in DDP_CASES:
        model, batch, method, options = ddp_case(*key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MicroBatchWarning)
            single = prunelab.score(model, method, batch=batch, **options)  # same micro-batches, one process
        for r in ranks:
            assert all(torch.equal(ranks[0][key][n], r[key][n]) for n in single), key  # every rank holds the same
            assert_scores_equal(r[key], single)
        if key[1] == "mlp":  # without BatchNorm, the one-pass score
            assert_scores_equal(ranks[0][key], reference(model, [batch], method))
