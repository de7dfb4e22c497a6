"""What a mask covers (prunelab.coverage), checked against name sets and counts built by hand."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import prunelab
import prunelab.models
from prunelab.experiments.hparams import PruneHparams, nondefault_fields


def names_of(cov):
    return set(cov.covered)


def left_reasons(cov):
    return {t.name: t.reason for t in cov.left_out}


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


# ---- standard layer types ------------------------------------------------------------------------

def test_transformer_encoder_layer_default_bias_norm():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    weights = {"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"}
    biases = {"self_attn.in_proj_bias", "self_attn.out_proj.bias", "linear1.bias", "linear2.bias"}
    norms = {"norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"}
    assert weights | biases | norms == set(shapes(layer))  # the hand list is the whole layer

    cov = prunelab.coverage(layer)
    assert names_of(cov) == weights
    assert cov.covered == {n: s for n, s in shapes(layer).items() if n in weights}
    assert cov.covered["self_attn.in_proj_weight"] == (48, 16)
    assert cov.left_out == ()  # every tensor left out has one dimension
    assert cov.total == sum(p.numel() for p in layer.parameters())
    assert cov.total == (48 * 16 + 48) + (16 * 16 + 16) + (32 * 16 + 32) + (16 * 32 + 16) + 4 * 16
    covered_numel = 48 * 16 + 16 * 16 + 32 * 16 + 16 * 32
    assert cov.covered_share == pytest.approx(covered_numel / cov.total)

    assert names_of(prunelab.coverage(layer, include_bias=True)) == weights | biases
    assert names_of(prunelab.coverage(layer, include_norm=True)) == weights | norms
    assert names_of(prunelab.coverage(layer, include_bias=True, include_norm=True)) == weights | biases | norms


def test_bidirectional_two_layer_lstm_with_projection():
    lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
    weights, biases = {}, set()
    for layer in (0, 1):
        in_features = 4 if layer == 0 else 2 * 3
        for sfx in ("", "_reverse"):
            weights[f"weight_ih_l{layer}{sfx}"] = (4 * 6, in_features)
            weights[f"weight_hh_l{layer}{sfx}"] = (4 * 6, 3)
            weights[f"weight_hr_l{layer}{sfx}"] = (3, 6)
            biases |= {f"bias_ih_l{layer}{sfx}", f"bias_hh_l{layer}{sfx}"}
    assert set(weights) | biases == set(shapes(lstm))
    cov = prunelab.coverage(lstm)
    assert cov.covered == weights
    assert cov.left_out == ()
    assert names_of(prunelab.coverage(lstm, include_bias=True)) == set(weights) | biases
    assert cov.total == sum(math.prod(s) for s in weights.values()) + len(biases) * 24


def test_gru_and_rnn():
    gru = nn.GRU(3, 5)
    assert prunelab.coverage(gru).covered == {"weight_ih_l0": (15, 3), "weight_hh_l0": (15, 5)}
    assert names_of(prunelab.coverage(gru, include_bias=True)) == {
        "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
    rnn = nn.RNN(3, 5, num_layers=2)
    assert prunelab.coverage(rnn).covered == {
        "weight_ih_l0": (5, 3), "weight_hh_l0": (5, 5), "weight_ih_l1": (5, 5), "weight_hh_l1": (5, 5)}
    assert prunelab.coverage(rnn).total == (5 * 3 + 5 * 5 + 2 * 5) + (5 * 5 + 5 * 5 + 2 * 5)


def test_multihead_attention_with_kdim_vdim_and_bias_kv():
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, add_bias_kv=True)
    cov = prunelab.coverage(mha)
    assert cov.covered == {"q_proj_weight": (8, 8), "k_proj_weight": (8, 5), "v_proj_weight": (8, 6),
                           "out_proj.weight": (8, 8)}
    # bias_k / bias_v are (1, 1, 8): biases of more than one dimension, listed as left out for that reason
    assert left_reasons(cov) == {"bias_k": "bias", "bias_v": "bias"}
    assert names_of(prunelab.coverage(mha, include_bias=True)) == {
        "q_proj_weight", "k_proj_weight", "v_proj_weight", "out_proj.weight",
        "in_proj_bias", "out_proj.bias", "bias_k", "bias_v"}
    # same embed dim everywhere: one packed in_proj_weight
    packed = nn.MultiheadAttention(8, 2)
    assert prunelab.coverage(packed).covered == {"in_proj_weight": (24, 8), "out_proj.weight": (8, 8)}


def test_bilinear():
    bil = nn.Bilinear(3, 4, 5)
    cov = prunelab.coverage(bil)
    assert cov.covered == {"weight": (5, 3, 4)}
    assert cov.total == 5 * 3 * 4 + 5
    assert names_of(prunelab.coverage(bil, include_bias=True)) == {"weight", "bias"}


class TokenNet(nn.Module):
    def __init__(self, custom=True):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        if custom:
            self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.emb(x)
        if hasattr(self, "pos"):
            h = h + self.pos[:, : h.shape[1]]
        return self.head(self.norm(h).mean(1))


def test_embedding_and_custom_parameter():
    torch.manual_seed(0)
    net = TokenNet()
    cov = prunelab.coverage(net)
    assert cov.covered == {"head.weight": (3, 8)}
    assert left_reasons(cov) == {"emb.weight": "embedding", "pos": "unrecognized"}
    assert {t.name: t.shape for t in cov.left_out} == {"emb.weight": (10, 8), "pos": (1, 5, 8)}
    assert [t.name for t in cov.unexpected] == ["pos"]
    assert cov.total == 80 + 40 + 16 + 24 + 3
    assert cov.covered_share == pytest.approx(24 / 163)

    assert names_of(prunelab.coverage(net, include_embeddings=True)) == {"emb.weight", "head.weight"}
    cov = prunelab.coverage(net, include=["pos"])
    assert names_of(cov) == {"pos", "head.weight"} and "pos" not in left_reasons(cov)
    cov = prunelab.coverage(net, exclude=["head.weight"])
    assert names_of(cov) == set() and left_reasons(cov)["head.weight"] == "excluded"
    cov = prunelab.coverage(net, include_embeddings=True, filter=lambda n, p: n != "emb.weight")
    assert names_of(cov) == {"head.weight"} and left_reasons(cov)["emb.weight"] == "filtered"
    # include adds anything, even a 1-D norm parameter
    assert names_of(prunelab.coverage(net, include=["norm.bias"])) == {"head.weight", "norm.bias"}
    assert names_of(prunelab.coverage(net, include_norm=True)) == {"head.weight", "norm.weight", "norm.bias"}


def test_include_exclude_errors():
    net = TokenNet()
    with pytest.raises(ValueError, match="posx"):
        prunelab.coverage(net, include=["posx"])
    with pytest.raises(ValueError, match="nope.weight"):
        prunelab.coverage(net, exclude=["nope.weight"])
    with pytest.raises(ValueError, match="pos"):
        prunelab.coverage(net, include=["pos"], exclude=["pos"])
    with pytest.raises(ValueError, match="nope"):
        prunelab.prune(net, "magnitude", 0.5, include=["nope"])
    with pytest.raises(ValueError, match="include: the model has no parameter 'posx'; did you mean 'pos'"):
        prunelab.coverage(net, include=["posx"])


def test_unknown_coverage_option_names_the_closest():
    with pytest.raises(ValueError, match="coverage does not take option 'include_bais'; did you mean 'include_bias'"):
        prunelab.coverage(TokenNet(), include_bais=True)
    with pytest.raises(ValueError, match="did you mean 'exclude'"):
        prunelab.Mask.ones(TokenNet(), exclud=["pos"])


def coverage_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, prunelab.CoverageWarning)]


def test_prune_warns_about_unrecognized_weights_only():
    torch.manual_seed(0)
    net = TokenNet()
    got = coverage_warnings(lambda: prunelab.prune(net, "magnitude", 0.5))
    assert len(got) == 1 and "pos" in str(got[0].message)
    assert "emb.weight" not in str(got[0].message)
    mask = None

    def with_include():
        nonlocal mask
        mask = prunelab.prune(net, "magnitude", 0.5, include=["pos"])

    assert coverage_warnings(with_include) == []
    assert set(mask) == {"pos", "head.weight"}
    # an embedding table left out by default is no surprise: no warning
    plain = TokenNet(custom=False)
    assert coverage_warnings(lambda: prunelab.prune(plain, "magnitude", 0.5)) == []


def test_exclude_silences_unrecognized_warning():
    net = TokenNet()
    assert left_reasons(prunelab.coverage(net, exclude=["pos"]))["pos"] == "excluded"
    assert coverage_warnings(lambda: prunelab.prune(net, "magnitude", 0.5, exclude=["pos"])) == []


def test_register_layer_type_covers_custom_parameter():
    class MyLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.kernel = nn.Parameter(torch.randn(4, 3))
            self.bias = nn.Parameter(torch.zeros(4))

        def forward(self, x):
            return x @ self.kernel.t() + self.bias

    net = nn.Sequential(MyLayer(), nn.Linear(4, 2))
    before = prunelab.coverage(net)
    assert names_of(before) == {"1.weight"} and left_reasons(before) == {"0.kernel": "unrecognized"}
    prunelab.register_layer_type(MyLayer, weights=("kernel",))
    after = prunelab.coverage(net)
    assert after.covered == {"0.kernel": (4, 3), "1.weight": (2, 4)}
    assert after.left_out == ()
    assert names_of(prunelab.coverage(net, include_bias=True)) == {"0.kernel", "0.bias", "1.weight", "1.bias"}
    assert coverage_warnings(lambda: prunelab.prune(net, "magnitude", 0.5)) == []


def test_prune_hparams_accept_coverage_options():
    assert PruneHparams(include=("b", "a")) == PruneHparams(include=("a", "b"))
    assert PruneHparams(include=("b", "a")).include == ("a", "b")
    assert PruneHparams(exclude=["z", "y", "z"]).exclude == ("y", "z")
    assert nondefault_fields(PruneHparams()) == {}
    assert nondefault_fields(PruneHparams(include=("x",), include_embeddings=True)) == {
        "include": ["x"], "include_embeddings": True}


# ---- the zoo ------------------------------------------------------------------------------------

def test_vit_tiny_parameter_count_and_coverage():
    model = prunelab.models.create("vit_tiny", num_classes=10, input_shape=(1, 28, 28), seed=0)
    d, ff, depth, patch, classes, tokens = 64, 128, 4, 7, 10, 16
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * (2 * d)
    expected = (patch * patch * d + d) + d + (tokens + 1) * d + depth * per_layer + 2 * d + (d * classes + classes)
    assert sum(p.numel() for p in model.parameters()) == expected
    cov = prunelab.coverage(model)
    assert cov.total == expected
    want = {"patches.weight": (d, 1, patch, patch), "head.weight": (classes, d)}
    for i in range(depth):
        p = f"encoder.layers.{i}."
        want |= {p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.out_proj.weight": (d, d),
                 p + "linear1.weight": (ff, d), p + "linear2.weight": (d, ff)}
    assert cov.covered == want
    assert left_reasons(cov) == {"embedding.class_token": "embedding", "embedding.positions": "embedding"}


def test_lstm_parameter_count_and_coverage():
    model = prunelab.models.create("lstm", num_classes=10, input_shape=(1, 28, 28), seed=0)
    h, f, classes = 128, 28, 10
    expected = 4 * h * f + 4 * h * h + 2 * 4 * h + h * classes + classes
    assert sum(p.numel() for p in model.parameters()) == expected
    cov = prunelab.coverage(model)
    assert cov.covered == {"lstm.weight_ih_l0": (4 * h, f), "lstm.weight_hh_l0": (4 * h, h),
                           "head.weight": (classes, h)}
    assert cov.total == expected and cov.left_out == ()


# ---- glob patterns, filter and exclude silence the warning, norm layers of other libraries ---------------

class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "mlp": nn.Linear(8, 8)}) for _ in range(2)
        )
        self.head = nn.Linear(8, 3)


def test_include_and_exclude_take_glob_patterns():
    model = Blocks()
    everything = [n for n, _ in model.named_parameters()]
    attn = [n for n in everything if ".attn." in n]  # by hand, not by fnmatch
    default = set(prunelab.coverage(model).covered)
    assert set(prunelab.coverage(model, include=["*.attn.*"]).covered) == default | set(attn)
    assert set(prunelab.coverage(model, exclude=["*.attn.*"]).covered) == default - set(attn)
    assert set(prunelab.coverage(model, exclude=["blocks.?.mlp.weight"]).covered) == default - {
        "blocks.0.mlp.weight", "blocks.1.mlp.weight"}
    # exclusion wins over a pattern in include; exact names and patterns mix
    got = prunelab.coverage(model, include=["*.attn.*", "head.bias"], exclude=["*_bias"])
    assert set(got.covered) == (default | set(attn) | {"head.bias"}) - {n for n in attn if n.endswith("_bias")}


def test_a_pattern_that_matches_nothing_is_an_error_with_the_closest_name():
    model = Blocks()
    with pytest.raises(ValueError, match=r"include: the pattern '\*\.atn\.\*' matches no parameter of the model"):
        prunelab.coverage(model, include=["*.atn.*"])
    with pytest.raises(ValueError, match="exclude: the pattern 'blocks.9.*' matches no parameter"):
        prunelab.coverage(model, exclude=["blocks.9.*"])
    with pytest.raises(ValueError, match="'head.weight' is both in include and in exclude"):
        prunelab.coverage(model, include=["head.weight"], exclude=["head.*"])


def test_filter_silences_the_warning_for_what_it_leaves_out():
    net = TokenNet()
    assert len(coverage_warnings(lambda: prunelab.prune(net, "magnitude", 0.5))) == 1
    keep_all_but_pos = lambda name, p: name != "pos"  # noqa: E731
    cov = prunelab.coverage(net, filter=keep_all_but_pos)
    assert left_reasons(cov)["pos"] == "filtered" and cov.unexpected == ()
    assert coverage_warnings(lambda: prunelab.prune(net, "magnitude", 0.5, filter=keep_all_but_pos)) == []
    # a filter that accepts an unrecognized tensor does not cover it: it only ever leaves out
    cov = prunelab.coverage(net, filter=lambda name, p: True)
    assert "pos" not in cov.covered and left_reasons(cov)["pos"] == "unrecognized"


def norm_layers():
    """Norm layers as other libraries write them: classes of their own, not subclasses of PyTorch's."""
    out = {"nn.RMSNorm": nn.RMSNorm(8)} if hasattr(nn, "RMSNorm") else {}
    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        out.update({"LlamaRMSNorm": LlamaRMSNorm(8), "T5LayerNorm": T5LayerNorm(8)})
    except ImportError:
        pass
    try:
        from timm.layers import LayerNorm2d, RmsNorm, RmsNorm2d

        out.update({"timm RmsNorm": RmsNorm(8), "timm RmsNorm2d": RmsNorm2d(8), "timm LayerNorm2d": LayerNorm2d(8)})
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("kind", sorted(norm_layers()))
def test_include_norm_covers_norm_layers_of_other_libraries(kind):
    model = nn.Sequential(nn.Linear(8, 8), norm_layers()[kind])
    norm_params = {f"1.{n}" for n, _ in model[1].named_parameters()}
    assert norm_params and all(p.dim() == 1 for p in model[1].parameters())
    assert set(prunelab.coverage(model).covered) == {"0.weight"}
    assert set(prunelab.coverage(model, include_norm=True).covered) == {"0.weight"} | norm_params


def test_a_class_called_norm_with_a_matrix_is_no_norm_layer():
    class ProjNorm(nn.Module):  # a name that ends with "Norm", and a weight matrix
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4))
            self.scale = nn.Parameter(torch.ones(4))

    class ScaleNorm1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(4))

    model = nn.Sequential(ProjNorm(), ScaleNorm1d())
    cov = prunelab.coverage(model, include_norm=True)
    assert set(cov.covered) == {"1.gain"}
    assert left_reasons(cov) == {"0.weight": "unrecognized"}
