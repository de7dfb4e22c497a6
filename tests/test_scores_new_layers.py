"""Criteria on attention, recurrent and embedding weights, against plain autograd on explicit formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import prunelab
import prunelab.models


class AttnNet(nn.Module):
    """Self-attention (packed in_proj_weight) or, with kv=True, attention with kdim/vdim (q/k/v_proj_weight)."""

    def __init__(self, kv=False):
        super().__init__()
        self.kv = kv
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=5 if kv else None, vdim=6 if kv else None)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        k, v = (x[..., :5], x[..., :6]) if self.kv else (x, x)
        return self.head(self.attn(x, k, v, need_weights=False)[0].mean(1))


class RecurrentNet(nn.Module):
    def __init__(self, cell):
        super().__init__()
        if cell is nn.LSTM:  # output: 2 directions x proj_size 3
            self.rnn = nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True, proj_size=3)
        else:
            self.rnn = cell(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class TransformerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


def data(shape, n=6, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def build(name):
    torch.manual_seed(0)
    model = {
        "mha": lambda: AttnNet(),
        "mha_kv": lambda: AttnNet(kv=True),
        "lstm": lambda: RecurrentNet(nn.LSTM),
        "gru": lambda: RecurrentNet(nn.GRU),
        "rnn": lambda: RecurrentNet(nn.RNN),
        "transformer": lambda: TransformerNet(),
    }[name]()
    return model.double().train(), (5, 8) if name.startswith(("mha", "transformer")) else (5, 4)


EXPECTED_WEIGHTS = {
    "mha": {"attn.in_proj_weight", "attn.out_proj.weight", "head.weight"},
    "mha_kv": {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight",
               "head.weight"},
    "lstm": {f"rnn.weight_{k}_l{i}{s}" for k in ("ih", "hh", "hr") for i in (0, 1) for s in ("", "_reverse")}
    | {"head.weight"},
    "gru": {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"},
    "rnn": {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_WEIGHTS))
def test_snip_and_magnitude_on_attention_and_recurrent_weights(name):
    model, shape = build(name)
    x, y = data(shape)
    scores = prunelab.score(model, "snip", batch=(x, y))
    assert set(scores) == EXPECTED_WEIGHTS[name]
    params = dict(model.named_parameters())
    names = sorted(EXPECTED_WEIGHTS[name])
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [params[n] for n in names])
    for n, g in zip(names, grads):
        torch.testing.assert_close(scores[n], (g * params[n]).abs(), rtol=1e-9, atol=1e-14, msg=n)
    mags = prunelab.score(model, "magnitude")
    assert set(mags) == EXPECTED_WEIGHTS[name]
    for n in names:
        assert torch.equal(mags[n], params[n].detach().abs()), n


@pytest.mark.parametrize("name", ["transformer", "mha_kv", "gru"])
def test_grasp_is_minus_w_times_hessian_gradient(name):
    model, shape = build(name)
    x, y = data(shape)
    scores = prunelab.score(model, "grasp", batch=(x, y), temperature=1)
    names = sorted(scores)
    params = dict(model.named_parameters())
    ws = tuple(params[n].detach().clone() for n in names)

    def loss(*w):
        return F.cross_entropy(functional_call(model, dict(zip(names, w)), (x,)), y)

    with sdpa_kernel(SDPBackend.MATH):
        leaves = tuple(w.clone().requires_grad_() for w in ws)
        g = torch.autograd.grad(loss(*leaves), leaves)
        _, hg = torch.autograd.functional.hvp(loss, ws, tuple(gi.detach() for gi in g))
    assert any(h.abs().max() > 0 for h in hg)
    for n, w, h in zip(names, ws, hg):
        torch.testing.assert_close(scores[n], -w * h, rtol=1e-7, atol=1e-12, msg=n)


class TokenMean(nn.Module):
    def __init__(self, vocab=7, dim=4, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lin = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.lin(self.emb(tokens).mean(1))


def test_synflow_on_token_model_matches_explicit_path_sum():
    torch.manual_seed(0)
    model = TokenMean()
    scores = prunelab.score(model, "synflow", input_shape=(5,), include_embeddings=True)
    assert set(scores) == {"emb.weight", "lin.weight"}
    # SynFlow's all-ones input read by the table is every token at once: the embedding is the sum of
    # the |rows|, identical at every position, so the mean over positions is that sum again.
    E = model.emb.weight.detach().double().abs().requires_grad_()
    W = model.lin.weight.detach().double().abs().requires_grad_()
    b = model.lin.bias.detach().double().abs()
    R = (W @ E.sum(0) + b).sum()
    gE, gW = torch.autograd.grad(R, [E, W])
    torch.testing.assert_close(scores["emb.weight"].double(), (gE * E).abs().detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["lin.weight"].double(), (gW * W).abs().detach(), rtol=1e-12, atol=0)
    # and pruning with it runs, covering the table
    mask = prunelab.prune(model, "synflow", 0.5, input_shape=(5,), iterations=2, include_embeddings=True)
    assert set(mask) == {"emb.weight", "lin.weight"}
    assert mask.num_total - mask.num_kept == round(0.5 * (7 * 4 + 3 * 4))


class BagNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(7, 4, mode="mean")
        self.lin = nn.Linear(4, 3)

    def forward(self, tokens):
        return self.lin(self.bag(tokens))


@pytest.mark.parametrize("embeddings", [False, True])
def test_synflow_on_embedding_bag_is_a_value_error_naming_it(embeddings):
    torch.manual_seed(0)
    model = BagNet()
    with pytest.raises(ValueError, match="EmbeddingBag"):
        prunelab.score(model, "synflow", input_shape=(5,), include_embeddings=embeddings)
    with pytest.raises(ValueError, match="EmbeddingBag"):
        prunelab.prune(model, "synflow", 0.5, input_shape=(5,), iterations=2, include_embeddings=embeddings)


# ---- every criterion on the zoo's attention and recurrent models ---------------------------------

def _zoo(name):
    return prunelab.models.create(name, num_classes=10, input_shape=(1, 28, 28), seed=0)


def _zoo_covered(name):
    """{name: numel} of the default coverage, by hand from the architecture in models/sequence.py."""
    if name == "vit_tiny":
        d, ff = 64, 128
        out = {"patches.weight": d * 49, "head.weight": 10 * d}
        for i in range(4):
            p = f"encoder.layers.{i}."
            out |= {p + "self_attn.in_proj_weight": 3 * d * d, p + "self_attn.out_proj.weight": d * d,
                    p + "linear1.weight": ff * d, p + "linear2.weight": d * ff}
        return out
    h = 128
    return {"lstm.weight_ih_l0": 4 * h * 28, "lstm.weight_hh_l0": 4 * h * h, "head.weight": 10 * h}


_ZOO = {}


def zoo_model(name):
    if name not in _ZOO:
        _ZOO[name] = _zoo(name)
    return _ZOO[name]


# What a criterion refuses, before any work, in one line: PHEW's walks go from layer to layer of a chain (Patil &
# Dovrolis 2021), and attention and recurrence are not one; NPB solves linear and convolution layers (Pham et al.
# 2023), not a fused attention projection or a recurrent cell; PX decomposes ReLU networks (Iurada et al. 2024),
# not GELU, attention or an LSTM's gates
REFUSES = {"phew": "phew walks", "npb": "npb builds masks of linear and convolution weights",
           "px": "has no path decomposition"}


@pytest.mark.filterwarnings("ignore:structured pruning kept the last channel")
@pytest.mark.parametrize("method", sorted(prunelab.methods()))
@pytest.mark.parametrize("name", ["vit_tiny", "lstm"])
def test_every_criterion_prunes_attention_and_recurrent_weights(name, method):
    model = zoo_model(name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 1, 28, 28, generator=g)
    y = torch.arange(20) % 10
    m = prunelab.methods()[method]
    kwargs = {"iterations": 2} if m.default_iterations > 1 else {}
    if method in REFUSES:
        with pytest.raises(ValueError, match=REFUSES[method]):
            prunelab.prune(model, method, sparsity=0.8, batch=(x, y), input_shape=(1, 28, 28), **kwargs)
        return
    mask = prunelab.prune(model, method, sparsity=0.8, batch=(x, y), input_shape=(1, 28, 28), **kwargs)
    covered = _zoo_covered(name)
    assert {n: t.numel() for n, t in mask.items()} == covered
    n = sum(covered.values())
    if not m.structured:
        assert mask.num_total == n
        assert n - mask.num_kept == math.floor(0.8 * n + 0.5)
    else:
        assert 0 < n - mask.num_kept <= n
    # the attention and recurrent weights were ranked and pruned, not just carried along
    for k in covered:
        if "self_attn" in k or k.startswith("lstm."):
            kept, total = mask.layer_counts()[k]
            assert kept < total, k
    # the criterion left the caller's model as it was
    for k, p in model.named_parameters():
        assert torch.equal(p.detach(), before[k]), k
