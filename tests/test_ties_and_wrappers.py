"""Tied parameters (one tensor, several owners) and wrapped models (torch.compile, DataParallel, DDP).

Every expectation is computed here: pruned entries counted by brute force over the state dict, masks
built by hand or on the unwrapped twin, roles read off the owners' types.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
from prunelab import Mask, mask_binding
from prunelab.mask_binding import applied_mask, remove_mask
from prunelab.wrappers import unwrap, wrapper_prefix

VOCAB, DIM = 50, 16


class Tied(nn.Module):
    """A language-model toy whose output layer is the embedding table (``head.weight is emb.weight``)."""

    def __init__(self, head_first: bool = False):
        super().__init__()
        if head_first:  # then named_parameters names the tensor "head.weight"
            self.head = nn.Linear(DIM, VOCAB, bias=False)
            self.emb = nn.Embedding(VOCAB, DIM)
        else:
            self.emb = nn.Embedding(VOCAB, DIM)
            self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.fc = nn.Linear(DIM, DIM)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.fc(self.emb(ids))))


def tied(seed: int = 0, head_first: bool = False) -> Tied:
    torch.manual_seed(seed)
    return Tied(head_first)


def hand_mask(model: nn.Module, names, seed: int = 1) -> Mask:
    """Half of each named tensor kept, at random positions (not the code under test)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(unwrap(model).named_parameters())
    return Mask({n: torch.rand(params[n].shape, generator=g) < 0.5 for n in names})


def nonzero_pruned(model: nn.Module, mask: Mask) -> int:
    """Pruned entries that are not exactly 0, counted in every state-dict key that holds the tensor (a tied
    tensor is in the state dict once per owner)."""
    inner, prefix = unwrap(model), wrapper_prefix(model)
    names = dict(inner.named_parameters(remove_duplicate=False))
    state = model.state_dict()
    count = 0
    for name, keep in mask.items():
        for other, p in names.items():
            if p is names[name]:
                count += int((state[prefix + other][~keep] != 0).sum())
    return count


def dense_state(model: nn.Module, seed: int = 7) -> dict[str, torch.Tensor]:
    """A state dict with every float entry nonzero (the dense checkpoint a rewind loads)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) + 0.5 if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


def lm_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 6), generator=g)
    opt.zero_grad()
    F.cross_entropy(model(ids).reshape(-1, VOCAB), ids.reshape(-1)).backward()
    opt.step()


# ---- coverage of a tied tensor --------------------------------------------------------------------

@pytest.mark.parametrize("head_first", [False, True])
def test_a_tied_embedding_stays_out_by_default_whatever_else_owns_it(head_first):
    model = tied(head_first=head_first)
    name = "head.weight" if head_first else "emb.weight"
    other = "emb.weight" if head_first else "head.weight"
    cov = prunelab.coverage(model)
    assert cov.covered == {"fc.weight": (DIM, DIM)}
    assert {t.name: t.reason for t in cov.left_out} == {name: "embedding"}
    assert cov.ties == {name: (name, other)}
    assert cov.total == VOCAB * DIM + DIM * DIM + DIM  # the shared table once
    assert f"{name} = {other}: left out (embedding)" in str(cov)
    assert cov.to_dict()["ties"] == {name: [name, other]}

    cov = prunelab.coverage(model, include_embeddings=True)
    assert cov.covered == {name: (VOCAB, DIM), "fc.weight": (DIM, DIM)}
    assert f"{name} = {other}: covered" in str(cov)
    assert set(prunelab.prune(model, "magnitude", 0.5)) == {"fc.weight"}


def test_a_model_without_ties_reports_none():
    cov = prunelab.coverage(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))
    assert cov.ties == {} and "ties" not in cov.to_dict() and "shared" not in str(cov)


class Holder(nn.Module):
    """A module of no registered type that holds a tensor of another module."""

    def __init__(self, p: nn.Parameter):
        super().__init__()
        self.w = p


def test_an_owner_of_no_known_type_says_nothing_of_the_tensor():
    emb, lin = nn.Embedding(6, 4), nn.Linear(4, 3)
    model = nn.ModuleDict({"emb": emb, "lin": lin, "a": Holder(emb.weight), "b": Holder(lin.weight)})
    cov = prunelab.coverage(model)
    assert cov.covered == {"lin.weight": (3, 4)}
    assert {t.name: t.reason for t in cov.left_out} == {"emb.weight": "embedding"}
    assert cov.ties == {"emb.weight": ("emb.weight", "a.w"), "lin.weight": ("lin.weight", "b.w")}
    alone = nn.ModuleDict({"a": Holder(nn.Parameter(torch.ones(3, 3))), "b": None})
    alone.b = Holder(alone.a.w)
    assert {t.name: t.reason for t in prunelab.coverage(alone).left_out} == {"a.w": "unrecognized"}


# ---- a tied tensor stays zero -------------------------------------------------------------------------

@pytest.mark.parametrize("head_first", [False, True])
def test_load_state_dict_zeroes_a_tied_tensor_after_its_last_owner_loads(head_first):
    model = tied(head_first=head_first)
    mask = hand_mask(model, prunelab.coverage(model, include_embeddings=True).covered)
    mask.apply(model)
    assert nonzero_pruned(model, mask) == 0
    model.load_state_dict(dense_state(model))
    assert nonzero_pruned(model, mask) == 0
    assert model.head.weight is model.emb.weight  # still tied
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for i in range(3):
        lm_step(model, opt, seed=i)
    assert nonzero_pruned(model, mask) == 0
    kept = torch.cat([(p.detach()[mask[n]] != 0).reshape(-1) for n, p in model.named_parameters() if n in mask])
    assert kept.all()


def test_without_the_other_owners_hook_the_tied_tensor_grows_back(monkeypatch):
    """The failure the hooks on the other owners prevent (issue 28: 1,414 entries of a toy model)."""
    monkeypatch.setattr(mask_binding, "_bind_aliases", lambda model, bindings: None)
    model = tied()
    mask = hand_mask(model, ["emb.weight", "fc.weight"])
    mask.apply(model)
    model.load_state_dict(dense_state(model))
    assert nonzero_pruned(model, mask) == 2 * int((~mask["emb.weight"]).sum())  # under both of its keys


def test_a_tied_tensor_stays_zero_in_copies_and_after_a_dtype_move():
    model = tied()
    mask = hand_mask(model, ["emb.weight", "fc.weight"])
    mask.apply(model)
    for net in (copy.deepcopy(model), model.to(torch.float64)):
        net.load_state_dict(dense_state(net))
        assert nonzero_pruned(net, mask) == 0
        lm_step(net, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9))
        assert nonzero_pruned(net, mask) == 0
    assert set(applied_mask(model)) == {"emb.weight", "fc.weight"}  # the tie is listed once


def test_remove_mask_drops_the_other_owners_hooks_too():
    model = tied()
    mask = hand_mask(model, ["emb.weight"])
    mask.apply(model)
    remove_mask(model)
    assert all(not m._load_state_dict_post_hooks and "_apply" not in m.__dict__ for m in model.modules())
    state = dense_state(model)
    model.load_state_dict(state)
    assert torch.equal(model.emb.weight, state["head.weight"])  # the last owner's copy, untouched


# ---- wrappers -----------------------------------------------------------------------------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def wrapped(kind: str, model: nn.Module) -> nn.Module:
    if kind == "compile":
        return torch.compile(model)
    if kind == "dataparallel":
        return nn.DataParallel(model)
    return nn.DataParallel(torch.compile(model))  # nested: "module._orig_mod."


WRAPPERS = ["compile", "dataparallel", "nested"]
PREFIXES = {"compile": "_orig_mod.", "dataparallel": "module.", "nested": "module._orig_mod."}


@pytest.mark.parametrize("kind", WRAPPERS)
def test_coverage_of_a_wrapped_model_names_what_the_plain_model_names(kind):
    plain = net()
    w = wrapped(kind, plain)
    assert wrapper_prefix(w) == PREFIXES[kind] and unwrap(w) is plain
    assert all(n.startswith(PREFIXES[kind]) for n, _ in w.named_parameters())  # what the wrapper calls them
    assert prunelab.coverage(w) == prunelab.coverage(plain)
    assert set(Mask.ones(w)) == {"conv.weight", "fc.weight"}


@pytest.mark.parametrize("kind", WRAPPERS)
def test_a_mask_of_the_plain_model_applies_to_the_wrapped_one_and_back(kind, tmp_path):
    plain = net()
    mask = hand_mask(plain, ["conv.weight", "fc.weight"])
    w = wrapped(kind, copy.deepcopy(plain))
    mask.save(tmp_path / "m.pt")
    Mask.load(tmp_path / "m.pt").apply(w)
    for name, keep in mask.items():
        p = dict(unwrap(w).named_parameters())[name].detach()
        assert int((p[~keep] != 0).sum()) == 0 and bool((p[keep] != 0).all())
    assert set(applied_mask(w)) == set(mask)
    w.load_state_dict({k: v + 1 if v.is_floating_point() else v for k, v in w.state_dict().items()})
    assert nonzero_pruned(w, mask) == 0
    # the mask read off the wrapped model, by its weights, is the mask, and applies to the plain model
    back = Mask.from_weights(w)
    assert back == mask
    fresh = net(seed=1)
    back.apply(fresh)
    assert nonzero_pruned(fresh, mask) == 0


@pytest.mark.parametrize("kind", WRAPPERS)
def test_a_mask_keyed_by_wrapped_names_applies_to_the_plain_model(kind):
    plain = net()
    w = wrapped(kind, copy.deepcopy(plain))
    by_hand = {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(2)) < 0.5
               for n, p in w.named_parameters() if n.endswith(("conv.weight", "fc.weight"))}
    mask = Mask(by_hand)  # e.g. built from a compiled model's named_parameters()
    assert all(n.startswith(PREFIXES[kind]) for n in mask)
    mask.apply(plain)
    assert set(applied_mask(plain)) == {"conv.weight", "fc.weight"}
    for name, keep in by_hand.items():
        p = plain.get_parameter(name[len(PREFIXES[kind]):]).detach()
        assert int((p[~keep] != 0).sum()) == 0
    assert prunelab.mask_coverage(plain, mask).covered == prunelab.coverage(plain).covered


def test_a_name_that_is_valid_as_it_is_keeps_its_prefix():
    """A model's own submodule called ``module`` is not a wrapper: its names are kept."""
    model = nn.Sequential()
    model.module = nn.Linear(3, 2)
    assert list(prunelab.coverage(model).covered) == ["module.weight"]
    mask = hand_mask(model, ["module.weight"])
    mask.apply(model)
    assert set(applied_mask(model)) == {"module.weight"}


@pytest.mark.parametrize("kind", ["compile", "dataparallel"])
def test_prune_on_the_wrapped_model_gives_the_plain_models_mask(kind):
    plain = net()
    w = wrapped(kind, copy.deepcopy(plain))
    for method in ("magnitude", "random"):
        assert prunelab.prune(w, method, 0.6, seed=4) == prunelab.prune(plain, method, 0.6, seed=4)


@pytest.mark.parametrize(("kind", "method"), [
    ("compile", "snip"), ("dataparallel", "snip"), ("compile", "synflow"), ("dataparallel", "synflow"),
])
def test_criteria_that_run_the_model_on_the_wrapped_model(kind, method):
    plain = net()
    w = wrapped(kind, copy.deepcopy(plain))
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(6, 2, 6, 6, generator=g), torch.randint(0, 3, (6,), generator=g))
    opts = {"batch": batch, "input_shape": (2, 6, 6)}
    assert prunelab.prune(w, method, 0.6, **opts) == prunelab.prune(plain, method, 0.6, **opts)


def test_a_compiled_model_runs_with_its_mask_and_keeps_it_through_training():
    plain = net()
    mask = hand_mask(plain, ["conv.weight", "fc.weight"])
    w = torch.compile(copy.deepcopy(plain))
    mask.apply(w)
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.AdamW(w.parameters(), lr=0.1)
    F.cross_entropy(w(x), y).backward()
    opt.step()
    assert nonzero_pruned(w, mask) == 0
    with torch.no_grad():
        assert torch.allclose(w(x), unwrap(w)(x), atol=1e-6)


@pytest.fixture
def process_group(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group yet")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wrapped_model(process_group):
    plain = net()
    ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(plain))
    assert wrapper_prefix(ddp) == "module."
    assert prunelab.coverage(ddp) == prunelab.coverage(plain)
    assert prunelab.prune(ddp, "magnitude", 0.5) == prunelab.prune(plain, "magnitude", 0.5)
    mask = hand_mask(plain, ["conv.weight", "fc.weight"])
    mask.apply(ddp)
    x, y = torch.randn(4, 2, 6, 6), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
    assert nonzero_pruned(ddp, mask) == 0
    assert Mask.from_weights(ddp) == mask


# ---- transformers' GPT-2: Conv1D covered, the tied table left out ----------------------------------------

def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def test_gpt2_covers_its_conv1d_weights_and_leaves_the_tied_table_out():
    model = gpt2()
    conv1d = {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    assert len(conv1d) == 2 * 4  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per block
    cov = prunelab.coverage(model)
    assert cov.covered == conv1d
    assert {t.name: t.reason for t in cov.left_out} == {
        "transformer.wte.weight": "embedding", "transformer.wpe.weight": "embedding"}
    assert cov.ties == {"transformer.wte.weight": ("transformer.wte.weight", "lm_head.weight")}
    assert cov.unexpected == ()
    covered = prunelab.coverage(model, include_embeddings=True).covered
    assert set(covered) == set(conv1d) | {"transformer.wte.weight", "transformer.wpe.weight"}


def test_gpt2_tied_table_stays_zero_through_load_state_dict():
    model = gpt2()
    mask = hand_mask(model, prunelab.coverage(model, include_embeddings=True).covered)
    mask.apply(model)
    model.load_state_dict(dense_state(model))
    assert nonzero_pruned(model, mask) == 0


@pytest.mark.parametrize("axis", ["input", "output"])
def test_gpt2_conv1d_is_pruned_along_its_own_axes(axis):
    """Conv1D stores (in, out): the mask of each layer is the transpose of an nn.Linear twin's."""
    model = gpt2()
    layers = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    twins = nn.ModuleDict()
    for n, m in layers.items():
        lin = nn.Linear(m.weight.shape[0], m.weight.shape[1])
        with torch.no_grad():
            lin.weight.copy_(m.weight.T)
        twins[n.replace(".", "_")] = lin
    got = prunelab.prune(model, "l1_channel", 0.5, axis=axis)
    want = prunelab.prune(twins, "l1_channel", 0.5, axis=axis)
    for n in layers:
        assert torch.equal(got[f"{n}.weight"], want[f"{n.replace('.', '_')}.weight"].T), n
    # and by hand for one layer: input channels are the rows of (in, out)
    w = layers["transformer.h.0.mlp.c_fc"].weight.detach()
    dim = 0 if axis == "input" else 1
    norms = w.abs().sum(dim=1 - dim)
    keep = torch.zeros(w.shape[dim], dtype=torch.bool)
    keep[norms.argsort(descending=True)[: w.shape[dim] // 2]] = True
    shape = [1, 1]
    shape[dim] = -1
    assert torch.equal(got["transformer.h.0.mlp.c_fc.weight"], keep.reshape(shape).expand_as(w))


def test_coverage_does_not_import_transformers():
    code = (
        "import sys, torch, prunelab\n"
        "net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))\n"
        "prunelab.coverage(net, include_norm=True)\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_warning_for_gpt2():
    model = gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error", prunelab.CoverageWarning)
        prunelab.prune(model, "magnitude", 0.5)
