"""Layer rules know their axes: a layer type registered by a user gets structured pruning and analyses right.

The custom layer stores its weight transposed, ``(in, out)``, and calls its bias ``shift``: every number is
checked against the same network built from ``nn.Linear`` (the built-in path) or against a brute-force count.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab import analysis
from prunelab import layer_rules as rules_module
from prunelab.layer_rules import register_layer_type, split_fused
from prunelab.masks import Mask
from prunelab.pruning import LayerCollapseWarning, uniform_attention
from prunelab.pruning.api import _warn_collapse


class TransposedLinear(nn.Module):
    """``x @ weight + shift`` with ``weight`` of shape ``(in, out)``: nn.Linear's transpose."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.shift = nn.Parameter(torch.randn(n_out)) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y if self.shift is None else y + self.shift


class NoAxes(TransposedLinear):
    """The same layer, registered without its axes."""


@pytest.fixture(autouse=True)
def rules(monkeypatch):
    """Register the test's types in a copy of the registry, dropped after the test."""
    monkeypatch.setattr(rules_module, "_RULES", dict(rules_module._RULES))
    register_layer_type(TransposedLinear, biases=("shift",), out_axis=1, in_axis=0)
    register_layer_type(NoAxes, biases=("shift",))


def twins(seed: int = 0, sizes=(12, 8, 6, 4), bias: bool = True):
    """(custom model, the same network of nn.Linear): weights transposed, biases copied."""
    torch.manual_seed(seed)
    custom, plain = [], []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layer = TransposedLinear(a, b, bias)
        lin = nn.Linear(a, b, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(layer.weight.T)
            if bias:
                lin.bias.copy_(layer.shift)
        custom.append(layer)
        plain.append(lin)
        if i < len(sizes) - 2:
            custom.append(nn.ReLU())
            plain.append(nn.ReLU())
    return nn.Sequential(*custom), nn.Sequential(*plain)


def as_linear(mapping):
    """A custom model's {name: tensor} in the nn.Linear twin's names and layout."""
    return {n.replace(".shift", ".bias"): (t.T if t.dim() == 2 else t) for n, t in mapping.items()}


# ---- structured criteria --------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["l1_channel", "l2_channel", "linf_channel", "lneginf_channel", "random_channel",
                                    "hybrid"])
@pytest.mark.parametrize("axis", ["input", "output"])
def test_structured_pruning_follows_the_registered_axes(method, axis):
    custom, plain = twins()
    got = prunelab.prune(custom, method, sparsity=0.5, axis=axis, seed=3)
    want = prunelab.prune(plain, method, sparsity=0.5, axis=axis, seed=3)
    assert set(got) == {"0.weight", "2.weight", "4.weight"}
    for name, keep in as_linear(got).items():
        assert torch.equal(keep, want[name]), name


@pytest.mark.parametrize("axis", ["input", "output"])
def test_l1_channels_of_the_transposed_layer_by_hand(axis):
    """Per layer, the kept channels are the ones of largest L1 norm, whole (Paganini & Forde 2020, §3.1)."""
    custom, _ = twins(seed=1)
    mask = prunelab.prune(custom, "l1_channel", sparsity=0.5, axis=axis)
    dim = 0 if axis == "input" else 1  # TransposedLinear stores (in, out)
    for name in ("0.weight", "2.weight", "4.weight"):
        w = dict(custom.named_parameters())[name].detach()
        norms = w.abs().sum(dim=1 - dim)
        n_keep = round(w.shape[dim] * 0.5)
        expect = torch.zeros(w.shape[dim], dtype=torch.bool)
        expect[norms.argsort(descending=True)[:n_keep]] = True
        view = [1, 1]
        view[dim] = -1
        assert torch.equal(mask[name], expect.reshape(view).expand_as(w)), name


def test_structured_pruning_of_a_type_without_axes_is_a_one_line_error():
    model = nn.Sequential(NoAxes(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ValueError) as info:
        prunelab.prune(model, "l1_channel", sparsity=0.5)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("structured pruning of NoAxes's 'weight' needs its channel axes")
    assert "register_layer_type(NoAxes, ..., out_axis=" in message
    # Unstructured criteria need no axes, nor does the hybrid (no convolution here: entry by entry).
    prunelab.prune(model, "magnitude", sparsity=0.5)
    prunelab.prune(model, "hybrid", sparsity=0.5)


def test_axes_are_checked_at_registration():
    with pytest.raises(ValueError, match="both out_axis and in_axis"):
        register_layer_type(NoAxes, out_axis=0)
    with pytest.raises(ValueError, match="must differ"):
        register_layer_type(NoAxes, out_axis=1, in_axis=1)
    with pytest.raises(ValueError, match="in_axis must be an integer >= 0"):
        register_layer_type(NoAxes, out_axis=0, in_axis=-1)
    with pytest.raises(ValueError, match="unknown role 'layers'; did you mean 'layer'"):
        register_layer_type(NoAxes, role="layers")


def test_transposed_convolution_output_channels_are_dimension_1():
    conv = nn.ConvTranspose2d(4, 6, 3)  # weight (in=4, out=6, 3, 3)
    rule = rules_module.layer_rule(conv)
    assert (rule.out_axis, rule.in_axis, rule.convolution) == (1, 0, True)
    mask = prunelab.prune(nn.Sequential(conv), "l1_channel", sparsity=0.5, axis="output")
    keep = mask["0.weight"]
    per_output = keep.transpose(0, 1).reshape(6, -1)
    assert bool((per_output.all(dim=1) | ~per_output.any(dim=1)).all()) and int(per_output.all(dim=1).sum()) == 3


# ---- analyses ---------------------------------------------------------------------------------------

def random_mask(model, density: float, seed: int, include_bias: bool = False) -> Mask:
    gen = torch.Generator().manual_seed(seed)
    names = prunelab.coverage(model, include_bias=include_bias).covered
    params = dict(model.named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=gen) < density for n in names})


def test_neuron_collapse_counts_the_registered_output_axis():
    custom, plain = twins(seed=2)
    mask = random_mask(custom, 0.3, seed=4)
    got = analysis.neuron_collapse(mask, model=custom)
    want = analysis.neuron_collapse(Mask(as_linear(mask)))
    assert got["per_layer_neurons"] == {"0.weight": 8, "2.weight": 6, "4.weight": 4}
    assert got["fraction"] == want["fraction"] and got["per_layer"] == want["per_layer"]
    # By hand: a neuron of layer 0 is a column of the (in, out) mask; dead when the whole column is pruned.
    dead = (~mask["0.weight"].any(dim=0)).double().mean().item()
    assert got["per_layer"]["0.weight"][-1] == pytest.approx(dead)
    with pytest.raises(ValueError, match="neuron collapse of NoAxes's 'weight' needs its channel axes"):
        analysis.neuron_collapse(Mask({"0.weight": torch.ones(6, 5, dtype=torch.bool)}),
                                 model=nn.Sequential(NoAxes(6, 5)))


def brute_force_effective(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Effective masks of an MLP of (out, in) masks with ReLU, zero biases: a kept weight counts iff some
    kept path reaches its input unit from the input and its output unit reaches an output."""
    from_input = [torch.ones(masks[0].shape[1], dtype=torch.bool)]
    for m in masks:
        from_input.append((m & from_input[-1]).any(dim=1))
    to_output = [torch.ones(masks[-1].shape[0], dtype=torch.bool)]
    for m in reversed(masks):
        to_output.insert(0, (m & to_output[0][:, None]).any(dim=0))
    return [m & to_output[i + 1][:, None] & from_input[i][None, :] for i, m in enumerate(masks)]


@pytest.mark.parametrize("seed", range(4))
def test_effective_sparsity_of_the_custom_layer_matches_brute_force(seed):
    """The custom bias (``shift``) is a bias by its rule, so it is zeroed: a unit whose incoming weights are
    all pruned receives nothing from the input although its bias is nonzero (Frankle et al. 2021, App. M)."""
    custom, plain = twins(seed=seed)
    mask = random_mask(custom, 0.25, seed=10 + seed)
    got = analysis.effective_mask(custom, mask, input_shape=(12,))
    want = brute_force_effective([as_linear(mask)[n] for n in ("0.weight", "2.weight", "4.weight")])
    for name, expect in zip(("0.weight", "2.weight", "4.weight"), want):
        assert torch.equal(got[name].T, expect), name
    assert analysis.effective_sparsity(custom, mask, (12,))["effective_kept"] == \
        analysis.effective_sparsity(plain, Mask(as_linear(mask)), (12,))["effective_kept"]
    assert any(not torch.equal(got[n], mask[n]) for n in mask)  # the case removes something


def test_effective_mask_keeps_a_covered_custom_bias_only_if_its_unit_reaches_an_output():
    custom, plain = twins(seed=5)
    mask = random_mask(custom, 0.3, seed=6, include_bias=True)
    got = analysis.effective_mask(custom, mask, input_shape=(12,))
    want = analysis.effective_mask(plain, Mask(as_linear(mask)), input_shape=(12,))
    for name, keep in as_linear(got).items():
        assert torch.equal(keep, want[name]), name


def synaptic_saliency(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``dR/dtheta * theta`` for ``R`` the sum of the outputs (Tanaka et al. 2020, eq. (1))."""
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(model(x).sum(), list(params.values()))
    return {n: (g * p).detach() for (n, p), g in zip(params.items(), grads)}


def test_conservation_of_the_custom_layer_matches_the_linear_twin():
    custom, plain = twins(seed=7)
    x = torch.randn(16, 12)
    scores = synaptic_saliency(custom, x)
    got = analysis.conservation(custom, scores)
    want = analysis.conservation(plain, synaptic_saliency(plain, x))
    assert set(got["neurons"]) == {"0.weight", "2.weight"} and got["exact"] and got["conserved"]
    for name in ("0.weight", "2.weight"):
        for side in ("incoming", "outgoing"):
            # float32 gradients of two layouts differ in rounding only
            torch.testing.assert_close(got["neurons"][name][side], want["neurons"][name][side], rtol=1e-5, atol=1e-6)
    # Theorem 1 by hand for the first hidden layer: a unit's incoming weights are a column of (in, out).
    incoming = scores["0.weight"].sum(dim=0) + scores["0.shift"]
    outgoing = scores["2.weight"].sum(dim=1)
    torch.testing.assert_close(got["neurons"]["0.weight"]["incoming"], incoming.double())
    torch.testing.assert_close(incoming, outgoing, rtol=1e-4, atol=1e-5)


def test_conservation_of_a_type_without_axes_is_a_one_line_error():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), NoAxes(5, 3))
    scores = synaptic_saliency(model, torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"^conservation of NoAxes's 'weight' needs its channel axes: register_"):
        analysis.conservation(model, scores)


def test_emergent_structure_reads_input_slices_along_the_registered_axis():
    custom, _ = twins(seed=8)
    mask = random_mask(custom, 0.2, seed=9)
    got = analysis.emergent_structure(mask, model=custom)
    want = analysis.emergent_structure(Mask(as_linear(mask)))
    assert got == want


# ---- parts and biases: attention, gates, collapse -----------------------------------------------------

class KeyFirstAttention(nn.Module):
    """A toy attention whose fused projection ``kqv`` stacks keys, queries and values in that order."""

    def __init__(self, dim: int):
        super().__init__()
        self.kqv = nn.Parameter(torch.randn(3 * dim, dim))

    def forward(self, x):
        k, q, v = (x @ w.T for w in self.kqv.chunk(3))
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def test_uniform_attention_reads_which_part_holds_the_keys_from_the_rule():
    register_layer_type(KeyFirstAttention, weights=("kqv",), biases=(), out_axis=0, in_axis=1,
                        parts={"kqv": ("key", "query", "value")})
    model = nn.Sequential(KeyFirstAttention(4))
    keep = torch.ones(12, 4, dtype=torch.bool)
    keep[:4] = False  # the key rows, first in this layout
    mask = Mask({"0.kqv": keep})
    assert uniform_attention(mask, model) == ["0.kqv"]
    assert uniform_attention(mask) == ["0.kqv"]  # by name alone: one registered type fuses a 'kqv'
    queries_gone = keep.clone()
    queries_gone[:4], queries_gone[4:8] = True, False
    assert uniform_attention(Mask({"0.kqv": queries_gone}), model) == []


def test_multihead_attention_and_gates_split_by_their_rules():
    attn = nn.MultiheadAttention(8, 2)
    parts = split_fused(attn.in_proj_weight, "in_proj_weight", attn)
    assert list(parts) == ["query", "key", "value"] and torch.equal(parts["key"], attn.in_proj_weight[8:16])
    lstm, gru = nn.LSTM(3, 5), nn.GRU(3, 5)
    assert list(split_fused(lstm.weight_ih_l0, "weight_ih_l0", lstm)) == ["input", "forget", "cell", "output"]
    assert list(split_fused(gru.bias_hh_l0, "bias_hh_l0", gru)) == ["reset", "update", "new"]
    assert split_fused(nn.RNN(3, 5).weight_ih_l0, "weight_ih_l0", nn.RNN(3, 5)) is None  # one gate
    assert split_fused(lstm.weight_ih_l0, "rnn.weight_ih_l0") is None  # by name alone: LSTM or GRU?


def test_collapse_warning_leaves_out_the_biases_the_rules_name():
    """An emptied bias is no layer collapse (Tanaka et al. 2020, §3): ``shift`` of the custom type and a
    recurrent ``bias_ih_l0`` are biases by their rules; an emptied weight is a collapse."""
    empty_biases = Mask({"0.weight": torch.ones(3, 2, dtype=torch.bool), "0.shift": torch.zeros(2, dtype=torch.bool),
                         "rnn.bias_ih_l0": torch.zeros(8, dtype=torch.bool)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayerCollapseWarning)
        _warn_collapse(empty_biases, "magnitude", 0.5)
    empty_weight = Mask({"0.weight": torch.zeros(3, 2, dtype=torch.bool), "0.shift": torch.ones(2, dtype=torch.bool)})
    with pytest.warns(LayerCollapseWarning, match="pruned every weight of 0.weight"):
        _warn_collapse(empty_weight, "magnitude", 0.5)


def test_transformers_conv1d_is_known_and_a_users_registration_wins():
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    layer = pytorch_utils.Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs: weight (4, 6)
    rule = rules_module.layer_rule(layer)
    assert (rule.role, rule.out_axis, rule.in_axis) == ("layer", 1, 0)
    assert rules_module.channel_axes(layer, "weight", 2, "test") == (1, 0)
    register_layer_type(pytorch_utils.Conv1D, weights=("weight",))  # no axes: the user's word counts
    assert not rules_module.layer_rule(layer).has_axes
    with pytest.raises(ValueError, match="register_layer_type"):
        prunelab.prune(nn.Sequential(layer), "l1_channel", 0.5)
