"""Forward FLOPs (prunelab.flops) against hand counts.

Convention checked here (torch.utils.flop_counter's): 2 FLOPs per multiply-add of a matrix product or
convolution; bias additions, activations, normalization, pooling and embedding lookups count 0.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunelab.models
from prunelab import Mask
from prunelab.flops import FlopCount, flops


def lenet():
    return prunelab.models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=0)


def random_mask(model, names, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    out = {}
    for k, n in enumerate(names):
        keep = (0.05, 0.3, 0.7, 1.0)[k % 4]
        out[n] = torch.rand(params[n].shape, generator=gen) < keep
    return Mask(out)


def test_lenet_300_100_hand_count_bias_adds_not_counted():
    # addmm(bias, x, W^T) counts 2 * in * out (the bias add is not counted by torch's formula)
    count = flops(lenet(), (1, 28, 28))
    hand = {"1.weight": 2 * 784 * 300, "3.weight": 2 * 300 * 100, "5.weight": 2 * 100 * 10}
    assert count.per_layer == {n: (f, float(f)) for n, f in hand.items()}
    assert count.other == 0
    assert count.dense == 2 * (784 * 300 + 300 * 100 + 100 * 10) == count.masked
    assert count.ratio == 1.0


def test_lenet_covered_bias_gets_no_flops_excluded_weight_goes_to_other():
    count = flops(lenet(), (1, 28, 28), include_bias=True)
    assert count.per_layer["1.weight"][0] == 2 * 784 * 300
    assert all(count.per_layer[b] == (0, 0.0) for b in ("1.bias", "3.bias", "5.bias"))
    count = flops(lenet(), (1, 28, 28), exclude=["5.weight"])
    assert "5.weight" not in count.per_layer and count.other == 2 * 100 * 10


def resnet20_hand_count():
    """{conv or fc weight name: FLOPs}, output sizes worked out from the architecture (He et al. 2016)."""

    def out_size(h, k, stride, pad):
        return (h + 2 * pad - k) // stride + 1

    counts = {}
    h = out_size(32, 3, 1, 1)
    counts["conv1.weight"] = 2 * h * h * 3 * 3 * 3 * 16
    c_in = 16
    for stage, c_out in enumerate((16, 32, 64)):
        for i in range(3):
            stride = 2 if stage > 0 and i == 0 else 1
            h_out = out_size(h, 3, stride, 1)
            prefix = f"layer{stage + 1}.{i}"
            counts[f"{prefix}.conv1.weight"] = 2 * h_out * h_out * 9 * c_in * c_out
            counts[f"{prefix}.conv2.weight"] = 2 * h_out * h_out * 9 * c_out * c_out
            if stride != 1 or c_in != c_out:
                assert out_size(h, 1, stride, 0) == h_out
                counts[f"{prefix}.shortcut.0.weight"] = 2 * h_out * h_out * 1 * c_in * c_out
            h, c_in = h_out, c_out
    counts["fc.weight"] = 2 * 64 * 10
    return counts


def test_resnet20_dense_and_random_mask():
    model = prunelab.models.create("resnet20", num_classes=10, input_shape=(3, 32, 32), seed=0)
    hand = resnet20_hand_count()
    dense = flops(model, (3, 32, 32))
    assert {n: d for n, (d, _) in dense.per_layer.items()} == hand
    assert dense.other == 0  # BatchNorm, ReLU, residual adds and pooling count 0
    with FlopCounterMode(display=False) as plain:  # the library's own total, no attribution
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 32, 32))
    assert dense.dense == plain.get_total_flops() == sum(hand.values())

    mask = random_mask(model, list(hand))
    count = flops(model, (3, 32, 32), mask=mask)
    expected = {n: hand[n] * int(mask[n].sum()) / mask[n].numel() for n in hand}
    assert {n: m for n, (_, m) in count.per_layer.items()} == pytest.approx(expected, rel=1e-12)
    assert count.masked == pytest.approx(sum(expected.values()), rel=1e-12)
    assert count.ratio == pytest.approx(sum(hand.values()) / sum(expected.values()), rel=1e-12)
    json.dumps(count.to_dict(), allow_nan=False)
    assert "layer2.0.shortcut.0.weight" in str(count)


class TinyAttention(nn.Module):
    def __init__(self, need_weights):
        super().__init__()
        self.need_weights = need_weights
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [False, True])  # fused attention kernel, or explicit bmm
def test_attention_scores_go_to_other(need_weights):
    torch.manual_seed(0)
    model = TinyAttention(need_weights)
    tokens, dim, heads = 5, 8, 2
    count = flops(model, (tokens, dim))
    assert count.per_layer["attn.in_proj_weight"][0] == 2 * tokens * dim * 3 * dim  # q, k, v projections
    assert count.per_layer["attn.out_proj.weight"][0] == 2 * tokens * dim * dim
    head_dim = dim // heads
    assert count.other == heads * (2 * tokens * tokens * head_dim + 2 * tokens * tokens * head_dim)

    mask = Mask({n: torch.arange(p.numel()).reshape(p.shape) % 4 == 0 for n, p in model.named_parameters()
                 if n in count.per_layer})
    masked = flops(model, (tokens, dim), mask=mask)
    assert masked.other == count.other  # no pruned weight enters the attention products
    assert masked.per_layer["attn.in_proj_weight"][1] == pytest.approx(count.per_layer["attn.in_proj_weight"][0] / 4)


def test_embedding_model_long_input_and_zero_lookup_flops():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3))
    count = flops(model, (4,), include_embeddings=True)
    assert count.per_layer == {"0.weight": (0, 0.0), "1.weight": (2 * 4 * 8 * 3, float(2 * 4 * 8 * 3))}


def test_training_flags_and_fastpath_restored():
    model = lenet()
    model.train()
    model[5].eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    flops(model, (1, 28, 28))
    assert [m.training for m in model.modules()] == [True] * 6 + [False]
    assert torch.backends.mha.get_fastpath_enabled() == fastpath


def test_flopcount_zero_remaining():
    count = FlopCount(per_layer={"w": (100, 0.0)}, other=0)
    assert count.ratio == float("inf") and count.to_dict()["ratio"] is None


def test_errors():
    model = lenet()
    with pytest.raises(ValueError, match="input_shape"):
        flops(model, "784")  # a string, not a shape (an int n is the shape (n,), as for every input_shape)
    with pytest.raises(ValueError, match="input_shape"):
        flops(model, ())
    with pytest.raises(ValueError, match="input_shape"):
        flops(model, (1, 0, 28))
    mask = Mask.ones(model)
    with pytest.raises(ValueError, match="not both"):
        flops(model, (1, 28, 28), mask=mask, include_bias=True)
    other = Mask({"1.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        flops(model, (1, 28, 28), mask=other)
    with pytest.raises(ValueError, match="input_dtype"):
        flops(model, (1, 28, 28), input_dtype="float32")


class PackedPair(nn.Module):
    """Two linear layers whose weights are views of one buffer (as cuDNN packs RNN weights)."""

    def __init__(self):
        super().__init__()
        buf = torch.randn(3 * 4 + 2 * 3)
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(3, 2, bias=False)
        self.a.weight = nn.Parameter(buf[:12].view(3, 4))
        self.b.weight = nn.Parameter(buf[12:].view(2, 3))

    def forward(self, x):
        return self.b(self.a(x))


def test_weights_sharing_one_storage_are_told_apart():
    model = PackedPair()
    assert model.a.weight.untyped_storage().data_ptr() == model.b.weight.untyped_storage().data_ptr()
    count = flops(model, (4,))
    assert count.per_layer == {"a.weight": (2 * 4 * 3, 24.0), "b.weight": (2 * 3 * 2, 12.0)}


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_weights_count_two_flops_per_weight_per_step(cls, bidirectional):
    """Each step multiplies one example's input (or hidden state) by every weight matrix once: 2 FLOPs per
    weight element per step, the same for both directions and every layer (a formula, not the counter)."""
    steps = 3
    model = cls(4, 6, num_layers=2, batch_first=True, bidirectional=bidirectional)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "counted as 0" warning
        count = flops(model, (steps, 4))
    expected = {n: 2 * steps * p.numel() for n, p in model.named_parameters() if p.dim() == 2}
    assert {n: d for n, (d, _) in count.per_layer.items()} == expected
    assert count.other == 0


def test_projected_lstm_counts_the_projection():
    steps = 5
    model = nn.LSTM(4, 6, proj_size=3, batch_first=True)
    count = flops(model, (steps, 4))
    assert count.per_layer["weight_hr_l0"][0] == 2 * steps * 6 * 3


def test_an_operator_without_formula_warns_that_its_weights_count_zero():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 4))

        def forward(self, x):
            return (x.unsqueeze(1) * self.weight).sum(-1)  # elementwise: no formula

    with pytest.warns(UserWarning, match="weight.*counted as 0"):
        count = flops(Custom(), (4,), include=["weight"])
    assert count.dense == 0
