"""Scores that are all zero, or tied at the threshold, must not prune a network in layer order unnoticed.

Expectations are brute-force counts over the scores and hand-built networks whose zero layer is known.
"""

import pytest
import torch
from torch import nn

import prunelab
from prunelab.pruning.removal import TieWarning


def zero_head_net():
    """A classifier whose head starts at zero, as torchvision's ViT does: no gradient reaches the body."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    nn.init.zeros_(net[4].weight)
    return net


def test_all_zero_scores_stop_with_the_zero_layer_named():
    net = zero_head_net()
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    for method, kwargs in (("snip", {"batch": (x, y)}), ("synflow", {"input_shape": (6,)})):
        with pytest.raises(ValueError, match=r"every score is 0.*4\.weight is all zeros.*re-initialize it"):
            prunelab.prune(net, method, 0.9, **kwargs)


def test_a_network_with_signal_prunes_as_before():
    net = zero_head_net()
    nn.init.normal_(net[4].weight)
    mask = prunelab.prune(net, "snip", 0.9, batch=(torch.randn(12, 6), torch.randint(0, 3, (12,))))
    total = sum(p.numel() for n, p in net.named_parameters() if n.endswith("weight"))
    assert mask.num_total - mask.num_kept == round(0.9 * total)


def tied_scores():
    """Two tensors with a block of equal scores (7.0) across both, around which the threshold falls."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 50, generator=g) * 10 + 10  # all above the tie
    b = torch.rand(30, 50, generator=g) * 10 + 10
    a.view(-1)[:600] = 7.0
    b.view(-1)[:900] = 7.0
    a.view(-1)[600:700] = 1.0  # below the tie: always pruned
    return {"a": a, "b": b}


def _count(mask, scores, value):
    return {n: int(((scores[n] == value) & ~mask[n]).sum()) for n in scores}


def test_a_large_tie_is_broken_by_position_by_default_and_said():
    scores = tied_scores()
    total = sum(v.numel() for v in scores.values())
    with pytest.warns(TieWarning, match=r"1,500 weights tie at score 7 .* in b, a; 400 of them were pruned"):
        mask = prunelab.remove(scores, sparsity=500 / total)
    assert mask.num_total - mask.num_kept == 500
    assert _count(mask, scores, 7.0) == {"a": 400, "b": 0}  # the first tensor's ties all go first


def test_ties_random_spreads_the_tie_over_its_tensors_from_the_seed():
    scores = tied_scores()
    total = sum(v.numel() for v in scores.values())
    with pytest.warns(TieWarning, match="chosen at random from the seed"):
        mask = prunelab.remove(scores, sparsity=500 / total, ties="random", seed=3)
    assert mask.num_total - mask.num_kept == 500  # the exact count still holds
    assert int((~mask["a"]).view(-1)[600:700].sum()) == 100  # every score below the tie is pruned
    counts = _count(mask, scores, 7.0)
    assert sum(counts.values()) == 400 and counts["b"] > 150  # b holds 60% of the tie: about 240 expected
    again = prunelab.remove(scores, sparsity=500 / total, ties="random", seed=3)
    other = prunelab.remove(scores, sparsity=500 / total, ties="random", seed=4)
    assert again == mask and other != mask


def test_prune_takes_the_tie_rule_and_checks_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    with torch.no_grad():
        for layer in net:
            layer.weight.fill_(0.5)  # every magnitude ties
    with pytest.warns(TieWarning):
        by_position = prunelab.prune(net, "magnitude", 0.5)
    assert by_position["0.weight"].sum() == 0 and by_position["1.weight"].all()
    with pytest.warns(TieWarning):
        spread = prunelab.prune(net, "magnitude", 0.5, ties="random")
    assert 0 < int(spread["0.weight"].sum()) < 100 and spread.num_kept == 100
    with pytest.raises(ValueError, match="unknown ties 'rand'; did you mean 'random'"):
        prunelab.prune(net, "magnitude", 0.5, ties="rand")
