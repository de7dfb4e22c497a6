"""N:M patterns (prunelab.pruning.patterns): checked against brute force over every subset of every group, with
every registered criterion, beyond the pattern's own sparsity, and refused where they cannot hold."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab.pruning.patterns import NMPattern, PatternWarning, group_keep, parse_pattern, satisfies


def _groups_by_hand(shape, axis, m):
    """Every group as a list of index tuples: M consecutive positions along ``axis`` for each position of the others
    (plain loops, not the module's reshapes)."""
    others = [range(s) for d, s in enumerate(shape) if d != axis]
    out = []
    for rest in itertools.product(*others):
        for start in range(0, shape[axis], m):
            group = []
            for j in range(start, start + m):
                idx = list(rest)
                idx.insert(axis, j)
                group.append(tuple(idx))
            out.append(group)
    return out


def _brute_force_keep(scores, alive, axis, n, m, highest):
    """In each group, the subset of at most N live entries with the best score sum, found by trying all of them
    (scores are distinct, so the best subset is unique)."""
    keep = torch.zeros_like(alive)
    for group in _groups_by_hand(tuple(scores.shape), axis, m):
        live = [i for i in group if alive[i]]
        size = min(n, len(live))
        sign = -1.0 if highest else 1.0
        best = max(itertools.combinations(live, size), key=lambda sub: sum(sign * float(scores[i]) for i in sub))
        for i in best:
            keep[i] = True
    return keep


@pytest.mark.parametrize("shape,axis", [((6, 8), 1), ((3, 8, 2, 2), 1), ((8, 3, 2), 0)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (2, 8)])
@pytest.mark.parametrize("highest", [False, True])
def test_group_keep_is_the_best_subset_of_every_group(shape, axis, n, m, highest):
    g = torch.Generator().manual_seed(n * 10 + m + len(shape))
    scores = torch.randperm(torch.Size(shape).numel(), generator=g).reshape(shape).double() - 7.0  # distinct
    alive = torch.rand(shape, generator=g) < 0.8
    got = group_keep(scores, alive, axis, NMPattern(n, m), highest)
    assert torch.equal(got, _brute_force_keep(scores, alive, axis, n, m, highest))


def test_ties_in_a_group_prune_the_first_entries_first():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 5.0, 2.0, 2.0, 0.0]])
    alive = torch.tensor([[True, True, True, True, True, True, False, True]])
    got = group_keep(scores, alive, 1, NMPattern(2, 4))
    # group 1: all tied, the last two stay; group 2: 5 and 2 (position 5) stay, position 6 was pruned already
    assert got.tolist() == [[False, False, True, True, True, True, False, False]]
    got_high = group_keep(scores, alive, 1, NMPattern(2, 4), highest=True)  # the highest go first: 0 and 2 stay
    assert got_high.tolist() == [[False, False, True, True, False, True, False, True]]


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        group_keep(torch.tensor([[1.0, float("nan"), 0.0, 2.0]]), torch.ones(1, 4, dtype=torch.bool), 1,
                   NMPattern(2, 4))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 4, 4, 4, generator=g), torch.arange(12) % 4


def _holds(model, mask, n=2, m=4):
    """Every group of every weight tensor keeps at most N, checked group by group."""
    for keep in mask.values():
        if keep.dim() < 2:
            continue
        for group in _groups_by_hand(tuple(keep.shape), 1, m):
            if sum(bool(keep[i]) for i in group) > n:
                return False
    return True


@pytest.mark.parametrize("method", prunelab.methods())
def test_every_criterion_takes_a_pattern(method):
    """Every criterion that ranks the weights; one that builds its own mask to the sparsity (NPB, PHEW) is refused
    in one line (test_criteria_since.py), its scores ranking no weights within a group."""
    model = _net()
    if prunelab.get_method(method).builds_mask:
        with pytest.raises(ValueError, match=f"{method} builds its own mask .* pattern 2:4"):
            prunelab.prune(model, method, 0.5, batch=_batch(), input_shape=(4, 4, 4), pattern="2:4", seed=0)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # criteria's own notes (ties, micro-batches) are not what is tested here
        mask = prunelab.prune(model, method, 0.5, batch=_batch(), input_shape=(4, 4, 4), pattern="2:4", seed=0)
        deeper = prunelab.prune(model, method, 0.8, batch=_batch(), input_shape=(4, 4, 4), pattern="2:4", seed=0)
    assert _holds(model, mask) and _holds(model, deeper)
    total = mask.num_total
    assert total - mask.num_kept == round(0.5 * total)  # the pattern alone: exactly half of every tensor
    assert all(abs(v - 0.5) < 1e-9 for v in mask.layer_sparsity().values())
    if not prunelab.get_method(method).structured:  # channels go whole: the nearest achievable count
        assert total - deeper.num_kept == int(0.8 * total + 0.5)


def test_magnitude_is_the_top_two_of_four_then_the_global_ranking_among_survivors():
    model = _net()
    mask = prunelab.prune(model, "magnitude", 0.5, pattern="2:4")
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        w = params[name].detach().abs().double()
        assert torch.equal(keep, _brute_force_keep(w, torch.ones_like(keep), 1, 2, 4, highest=False))
    # Beyond the pattern: the survivors of the 2:4 mask ranked together by |w|, by a full sort here.
    deeper = prunelab.prune(model, "magnitude", 0.8, pattern="2:4")
    survivors = torch.cat([params[n].detach().abs().reshape(-1)[mask[n].reshape(-1)] for n in mask])
    k_more = int(0.8 * mask.num_total + 0.5) - (mask.num_total - mask.num_kept)
    threshold = survivors.sort().values[k_more - 1]
    for name, keep in deeper.items():
        w = params[name].detach().abs()
        assert torch.equal(keep, mask[name] & (w > threshold))  # |w| are distinct: no tie at the threshold


def test_layer_scope_and_iterations():
    model = _net()
    mask = prunelab.prune(model, "synflow", 0.75, input_shape=(4, 4, 4), iterations=5, scope="layer",
                          pattern="2:4")
    assert _holds(model, mask)
    for name, (kept, total) in mask.layer_counts().items():
        assert total - kept == int(0.75 * total + 0.5), name


def test_weights_already_pruned_stay_pruned():
    model = _net()
    start = prunelab.prune(model, "random", 0.3, seed=3)
    mask = prunelab.prune(model, "magnitude", 0.6, mask=start, pattern="2:4")
    assert _holds(model, mask)
    assert all(not bool((mask[n] & ~start[n]).any()) for n in mask)
    assert abs(mask.sparsity - 0.6) < 1e-3


def test_a_tensor_the_pattern_cannot_take_is_named_and_pruned_without_it():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 2 * 2, 6))
    with pytest.warns(PatternWarning, match=r"0\.weight \(input size 3\)"):
        mask = prunelab.prune(model, "magnitude", 0.5, pattern="2:4")
    assert satisfies(mask["3.weight"], 1, NMPattern(2, 4))
    assert not satisfies(mask["0.weight"], 1, NMPattern(2, 4))  # its input size 3 has no groups of 4
    assert mask.num_total - mask.num_kept == round(0.5 * mask.num_total)


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "2:4:8", "4:4", "two:four", 24, "2:1000"])
def test_bad_patterns_are_refused_in_one_line(text):
    with pytest.raises(ValueError) as e:
        parse_pattern(text)
    message = str(e.value)
    assert "\n" not in message and ("e.g. '2:4'" in message or "0 < N < M" in message), message


def test_refusals_come_before_any_scoring():
    calls = []

    def counting(model, mask, batch=None):
        calls.append(1)
        return {n: torch.rand(t.shape) for n, t in mask.items()}

    from prunelab.scores.registry import METHODS, register_method

    register_method("counting_nm", needs_data=False)(counting)
    try:
        with pytest.raises(ValueError, match=r"sparsity 0\.3 is below what the 2:4 pattern prunes by itself"):
            prunelab.prune(_net(), "counting_nm", 0.3, pattern="2:4")
        with pytest.raises(ValueError, match="do not combine"):
            prunelab.prune(_net(), "counting_nm", 0.6, pattern="2:4", distribution="erk")
        with pytest.raises(ValueError, match="N:M"):
            prunelab.prune(_net(), "counting_nm", 0.6, pattern="2/4")
    finally:
        METHODS.unregister("counting_nm")
    assert calls == []


def test_the_pattern_leaves_existing_run_ids_alone():
    from prunelab.experiments.hparams import nondefault_fields
    from prunelab.experiments.protocols.prune_at import PruneHparams

    plain = PruneHparams(method="snip", sparsity=0.5)
    assert "pattern" not in nondefault_fields(plain)
    assert nondefault_fields(PruneHparams(method="snip", sparsity=0.5, pattern=" 2 : 4"))["pattern"] == "2:4"
    with pytest.raises(ValueError, match="does not combine|not combine"):
        PruneHparams(sparsity=0.5, pattern="2:4", distribution="erk")


def test_cli_refuses_a_bad_pattern_before_any_work(tmp_path, capsys):
    from prunelab import cli

    status = cli.main(["run", "--model", "lenet_300_100", "--dataset", "fashion_mnist", "--pattern", "2/4",
                       "--root", str(tmp_path / "runs"), "--print-config"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pattern must be 'N:M'" in err[0]
    assert not (tmp_path / "runs").exists()
