"""The models researchers bring, pruned as their libraries build them: Hugging Face transformers, timm and
torchvision, from small configs with random weights (no downloads), with no wrapper.

For each model: what the mask covers (tied tensors and their roles), every registered criterion at 90%
sparsity with the pruned count checked by a count over the mask's tensors (exact for unstructured criteria),
and a mask that holds through deepcopy, whole-module save/load, load_state_dict, a dtype change, AdamW and
SGD steps (pruned entries counted by brute force). Skipped when a library is missing (they are in the
``dev`` extra).
"""

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

import prunelab
from prunelab.scores import methods

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SPARSITY = 0.9
# prunelab's own criteria (other test modules register criteria of their own for their models)
CRITERIA = [n for n, m in methods().items() if m.fn.__module__.startswith("prunelab.")]
FAST = {"iterations": 2}  # iterative criteria: two iterations are enough to check coverage and counts


def _tokens(n=4, t=8, vocab=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, t), generator=g)


def _images(shape, n=4, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


# ---- the models --------------------------------------------------------------------------------------
# name -> (build, batch, input_shape for SynFlow, options for GraSP)

def bert():
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=32, num_labels=3)
    ids = _tokens()
    return (transformers.BertForSequenceClassification(cfg),
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 1])},
            (8,))


def gpt2():
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    ids = _tokens()
    return transformers.GPT2LMHeadModel(cfg), {"input_ids": ids, "labels": ids}, (8,)


def llama():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    ids = _tokens()
    return transformers.LlamaForCausalLM(cfg), {"input_ids": ids, "labels": ids}, (8,)


def t5():
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2,
                                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    ids = _tokens()
    return transformers.T5ForConditionalGeneration(cfg), {"input_ids": ids, "labels": ids}, (8,)


def timm_model(name, **kw):
    def build():
        x, y = _images((3, 32, 32))
        return timm.create_model(name, num_classes=10, **kw), (x, y), (3, 32, 32)
    return build


def tv_resnet18():
    x, y = _images((3, 32, 32))
    return torchvision.models.resnet18(num_classes=10), (x, y), (3, 32, 32)


def tv_mobilenet():
    x, y = _images((3, 32, 32))
    return torchvision.models.mobilenet_v3_small(num_classes=10), (x, y), (3, 32, 32)


def tv_vit():
    x, y = _images((3, 32, 32))
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=32, mlp_dim=48, num_classes=10)
    return vit, (x, y), (3, 32, 32)


def tv_swin():
    x, y = _images((3, 32, 32))
    swin = torchvision.models.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                              window_size=[4, 4], num_classes=10)
    return swin, (x, y), (3, 32, 32)


MODELS = {
    "bert": bert, "gpt2": gpt2, "llama": llama, "t5": t5,
    "convnext_atto": timm_model("convnext_atto"),
    "deit_tiny": timm_model("deit_tiny_patch16_224", img_size=32),
    "regnetx_002": timm_model("regnetx_002"),
    "resnet18": tv_resnet18, "mobilenet_v3_small": tv_mobilenet, "vit": tv_vit, "swin": tv_swin,
}
# Where a criterion cannot score a model as built, the one-line error it must give instead.
EXPECTED_ERRORS = {
    # the encoder-decoder needs decoder inputs, which SynFlow's all-ones input cannot give
    ("t5", "synflow"): "synflow feeds an all-ones",
    # torchvision's ViT starts its head at zero: no gradient, no synaptic flow reaches the other layers (GraSP
    # still scores them: its Hessian term carries the head's gradient back)
    ("vit", "snip"): "heads.head.weight is all zeros", ("vit", "iterative_snip"): "heads.head.weight is all zeros",
    ("vit", "synflow"): "heads.head.weight is all zeros",
    ("vit", "force"): "heads.head.weight is all zeros", ("vit", "iter_snip_dejorge"): "heads.head.weight is all zeros",
}
GROUPED = {"convnext_atto", "regnetx_002", "mobilenet_v3_small"}  # depthwise or grouped convolutions
TOKENS = {"bert", "gpt2", "llama", "t5"}  # inputs are token ids: no all-ones or noise input of floats
GATELESS = {"bert", "convnext_atto", "deit_tiny", "gpt2", "llama", "mobilenet_v3_small", "swin", "vit"}  # GELU, SiLU..
EXPECTED_ERRORS.update({(name, "ntk_sap"): "ntk_sap feeds Gaussian noise" for name in TOKENS})
EXPECTED_ERRORS.update({(name, "npb"): "npb counts paths with an all-ones input" for name in TOKENS - {"gpt2"}})
EXPECTED_ERRORS.update({(name, "npb"): "grouped Conv2d" for name in GROUPED})
EXPECTED_ERRORS.update({
    # NPB solves linear and convolution layers (Pham et al. 2023); a fused attention projection is neither
    ("vit", "npb"): "is not a layer's weight", ("swin", "npb"): "never calls", ("gpt2", "npb"): "weight of a Conv1D",
})
# PX decomposes ReLU networks into paths (Iurada et al. 2024): other nonlinearities and attention are refused by
# name; on torchvision's ResNet-18 its second iteration finds no signal left (a layer it emptied)
EXPECTED_ERRORS.update({(name, "px"): "has no path decomposition" for name in GATELESS | {"t5"}})
EXPECTED_ERRORS.update({("resnet18", "px"): "every score is 0"})
# PHEW walks a chain of layers (Patil & Dovrolis 2021), which none of these models is: it says so before any work
CHAIN_ONLY = {"phew": "phew walks"}
LANGUAGE_MODELS = {"gpt2", "llama", "t5"}  # they compute their own (shifted) loss: GraSP without temperature


def _options(name, method):
    opts = {}
    meta = methods()[method]
    if meta.default_iterations > 1:
        opts.update(FAST)
    if method.startswith("grasp") and name in LANGUAGE_MODELS | {"bert"}:
        opts["temperature"] = 1  # the model's own loss: no logits of ours to divide (see the guide)
    if meta.structured and name in GROUPED:
        opts["axis"] = "output"  # a grouped convolution's input channels are not slices of its weight
    return opts


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    torch.manual_seed(0)
    model, batch, shape = MODELS[request.param]()
    return request.param, model, batch, shape


def _pruned_by_hand(mask):
    return sum(int((~keep).sum()) for keep in mask.values())


def test_every_criterion_prunes_what_the_coverage_says(built):
    name, model, batch, shape = built
    cover = prunelab.coverage(model)
    covered = dict(prunelab.prunable_parameters(model))
    total = sum(p.numel() for p in covered.values())
    assert total == cover.covered_numel and total > 0
    # every tied tensor the model has is one entry, and an embedding table stays out by default
    embeddings = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    for n in covered:
        assert n.rpartition(".")[0] not in embeddings, n
    state = copy.deepcopy(model.state_dict())
    assert len(CRITERIA) >= 13
    for method in CRITERIA:
        options = dict(batch=batch, input_shape=shape, **_options(name, method))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = EXPECTED_ERRORS.get((name, method), CHAIN_ONLY.get(method))
            if expected is not None:
                with pytest.raises(ValueError, match=expected):
                    prunelab.prune(model, method, SPARSITY, **options)
                continue
            mask = prunelab.prune(model, method, SPARSITY, **options)
        assert set(mask) == set(covered), (name, method)
        pruned = _pruned_by_hand(mask)
        assert math.isclose(mask.sparsity, pruned / total), (name, method)
        if not methods()[method].structured:
            assert pruned == math.floor(SPARSITY * total + 0.5), (name, method)
        else:  # whole channels: the nearest achievable count, never a tensor's last channel
            assert abs(pruned / total - SPARSITY) < 0.1, (name, method, pruned / total)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # scoring leaves the model as it was


def _zeros_hold(model, mask):
    params = dict(model.named_parameters())
    return all(not bool(params[n].detach()[~keep.to(params[n].device)].any()) for n, keep in mask.items())


def _train_step(model, batch, optimizer):
    optimizer.zero_grad()
    inputs = batch if isinstance(batch, dict) else None
    if inputs is not None:
        out = model(**inputs)
        loss = out.loss if getattr(out, "loss", None) is not None else out.logits.float().pow(2).mean()
    else:
        x, y = batch
        out = model(x)
        loss = nn.functional.cross_entropy(prunelab.batches.logits(out), y)
    loss.backward()
    optimizer.step()


def test_the_mask_holds_through_copies_saves_loads_dtypes_and_optimizers(built):
    name, model, batch, shape = built
    model = copy.deepcopy(model)
    dense = copy.deepcopy(model.state_dict())
    mask = prunelab.prune(model, "random", SPARSITY, seed=1).apply(model)
    assert _zeros_hold(model, mask)
    assert _zeros_hold(copy.deepcopy(model), mask)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert _zeros_hold(torch.load(buffer, weights_only=False), mask)
    model.load_state_dict(dense)  # a dense state: the binding zeroes the pruned entries again, ties included
    assert _zeros_hold(model, mask)
    for make in (lambda ps: torch.optim.AdamW(ps, lr=1e-2), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)):
        opt = make(model.parameters())
        model.train()
        _train_step(model, batch, opt)
        assert _zeros_hold(model, mask), name
    model.to(torch.float64)
    assert _zeros_hold(model, mask)


@pytest.mark.parametrize("name", ["bert", "resnet18"])  # one language and one vision model: the wrapper's names
def test_a_mask_applies_to_the_compiled_model_and_back(name):
    torch.manual_seed(0)
    model, batch, shape = MODELS[name]()
    plain = copy.deepcopy(model)
    mask = prunelab.prune(plain, "magnitude", SPARSITY)
    compiled = torch.compile(copy.deepcopy(model), backend="eager")  # the wrapper, without a compiler
    mask.apply(compiled)
    assert _zeros_hold(compiled._orig_mod, mask)
    again = prunelab.prune(compiled, "magnitude", SPARSITY)
    assert again == mask
