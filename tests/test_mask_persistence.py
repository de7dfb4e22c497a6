"""An applied mask stays with its model: copies, whole-module saves, state-dict loads, dtype moves.

Pruned weights must read exactly 0.0 after each of these and after a few optimizer steps; the
reference for gradients is plain autograd on a hook-free model with the same weights.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunelab
import prunelab.models
from prunelab import Mask
from prunelab.mask_binding import applied_mask


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def make(kind):
    """(fresh model, input maker, classes); the same kind and seed give the same weights."""
    if kind == "transformer":
        torch.manual_seed(0)
        return TinyTransformer(), (5, 16), 3
    if kind == "lstm":
        torch.manual_seed(0)
        return TinyLSTM(), (5, 6), 3
    return prunelab.models.create("resnet20", num_classes=10, input_shape=(3, 8, 8), seed=0), (3, 8, 8), 10


def batch(shape, classes, i, dtype=torch.float32, n=4):
    g = torch.Generator().manual_seed(i)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def half_mask(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunelab.prunable_parameters(model).items()})


OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}
MODELS = ("transformer", "lstm", "resnet20")


def train(model, shape, classes, opt, steps=3, dtype=torch.float32):
    optimizer = OPTIMIZERS[opt](model.parameters())
    model.train()
    for i in range(steps):
        x, y = batch(shape, classes, i, dtype)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def assert_pruned_zero(model, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name].detach()[~keep] == 0.0), name


def assert_kept_changed(model, before, mask):
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        now = params[name].detach().to(before[name].dtype)
        assert not torch.equal(now[keep], before[name][keep]), f"{name} did not train"


def dense_random_state(model, seed=5):
    """The model's state dict with every floating parameter replaced by values in [0.5, 1.5): no zero."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {k: (torch.rand(v.shape, generator=g, dtype=v.dtype) + 0.5) if k in params else v.clone()
            for k, v in model.state_dict().items()}


def save_load(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def cases():
    for how in ("deepcopy", "save_load", "load_state_dict", "load_state_dict_assign", "to_float64",
                "to_float64_inplace"):
        for kind in MODELS:
            for opt in sorted(OPTIMIZERS):
                yield pytest.param(how, kind, opt, id=f"{how}-{kind}-{opt}")


@pytest.mark.parametrize("how,kind,opt", list(cases()))
def test_pruned_weights_stay_zero(how, kind, opt):
    model, shape, classes = make(kind)
    mask = half_mask(model).apply(model)
    dtype = torch.float32
    if how == "deepcopy":
        model = copy.deepcopy(model)
    elif how == "save_load":
        model = save_load(model)
    elif how.startswith("load_state_dict"):
        state = dense_random_state(model)
        model.load_state_dict(state, assign=how.endswith("assign"))
        params = dict(model.named_parameters())
        for name, keep in mask.items():  # zero at once, before any forward or step
            assert torch.all(params[name].detach()[~keep] == 0.0), name
            assert torch.equal(params[name].detach()[keep], state[name][keep]), name
    else:
        previous = torch.__future__.get_swap_module_params_on_conversion()
        try:
            torch.__future__.set_swap_module_params_on_conversion(how == "to_float64")
            model = model.to(torch.float64)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(previous)
        dtype = torch.float64
        assert all(p.dtype == torch.float64 for p in model.parameters())
    assert_pruned_zero(model, mask)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, shape, classes, opt, dtype=dtype)
    assert_pruned_zero(model, mask)
    assert_kept_changed(model, before, mask)


@pytest.mark.parametrize("kind", MODELS)
def test_state_dict_keys_and_strict_load_into_plain_model(kind):
    model, shape, classes = make(kind)
    fresh, _, _ = make(kind)
    mask = half_mask(model).apply(model)
    state = model.state_dict()
    assert list(state) == list(fresh.state_dict())
    fresh.load_state_dict(state, strict=True)
    params = dict(fresh.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name].detach()[~keep] == 0.0)
    assert applied_mask(fresh) is None


@pytest.mark.parametrize("kind", MODELS)
def test_applied_mask_and_remove_mask(kind):
    model, shape, classes = make(kind)
    assert applied_mask(model) is None
    mask = half_mask(model).apply(model)
    bound = applied_mask(model)
    assert set(bound) == set(mask)
    for name, keep in mask.items():
        assert torch.equal(bound[name].cpu().bool(), keep), name
    prunelab.remove_mask(model)
    assert applied_mask(model) is None
    train(model, shape, classes, "sgd_momentum_wd", steps=1)
    params = dict(model.named_parameters())
    revived = sum(int((params[n].detach()[~keep] != 0).sum()) for n, keep in mask.items())
    assert revived > 0


@pytest.mark.parametrize("kind", MODELS)
def test_masked_gradient_is_plain_gradient_times_mask(kind):
    model, shape, classes = make(kind)
    model = model.double()
    mask = half_mask(model).apply(model)
    # a hook-free model with the same (masked) weights, built from scratch
    plain, _, _ = make(kind)
    plain = plain.double()
    plain.load_state_dict(model.state_dict())
    model.train()
    plain.train()
    x, y = batch(shape, classes, 7, torch.float64)
    F.cross_entropy(model(x), y).backward()
    reference = dict(zip(
        [n for n, _ in plain.named_parameters()],
        torch.autograd.grad(F.cross_entropy(plain(x), y), list(plain.parameters()), allow_unused=True),
    ))
    params = dict(model.named_parameters())
    for name, p in params.items():
        want = reference[name]
        if name in mask:
            want = want * mask[name].to(want.dtype)
            assert torch.all(p.grad[~mask[name]] == 0.0), name
        torch.testing.assert_close(p.grad, want, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", MODELS)
def test_a_copied_submodule_keeps_its_part_of_the_mask(kind):
    """A part of a masked model copied out on its own (a backbone to finetune) is armed when it is built."""
    model, shape, classes = make(kind)
    mask = half_mask(model).apply(model)
    name, child = next((n, c) for n, c in model.named_children() if any(k.startswith(n + ".") for k in mask))
    part = copy.deepcopy(child)
    kept = {k[len(name) + 1:]: v for k, v in mask.items() if k.startswith(name + ".")}
    params = dict(part.named_parameters())
    with torch.no_grad():
        for p in params.values():
            p.add_(1.0)  # pruned entries nonzero: only the gradient masking can keep them from moving further
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(part.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        out = part(torch.randn(4, *shape))
        (out[0] if isinstance(out, tuple) else out).float().pow(2).mean().backward()
        optimizer.step()
    for n, keep in kept.items():
        assert torch.equal(params[n].detach()[~keep], before[n][~keep]), n  # pruned entries got no update


def test_applying_a_mask_adds_no_forward_hook():
    """Any module hook sends nn.Module.__call__ down its slow path (3-4% per step on LeNet-300-100)."""
    model, _, _ = make("resnet20")
    half_mask(model).apply(model)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_tensor_subclass_parameter_keeps_its_mask_through_a_dtype_move():
    """A traceable tensor-subclass parameter makes ``Module._apply`` swap tensors (as
    ``set_swap_module_params_on_conversion(True)`` does), dropping gradient hooks: the binding re-arms."""
    two_tensor = pytest.importorskip("torch.testing._internal.two_tensor")
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    weight = model[0].weight.detach()
    model[0].weight = nn.Parameter(two_tensor.TwoTensor(weight.clone(), weight.clone()))
    mask = half_mask(model).apply(model)
    model.to(torch.float64)
    assert isinstance(model[0].weight, two_tensor.TwoTensor) and model[0].weight.dtype == torch.float64
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 6, generator=g, dtype=torch.float64)).sum().backward()
        opt.step()
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        p = params[name].detach()
        for part in ((p.a, p.b) if isinstance(p, two_tensor.TwoTensor) else (p,)):
            assert torch.all(part[~keep] == 0.0), name
            assert torch.any(part[keep] != 0.0), name


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.SGD(ps, lr=0.5),
                                      lambda ps: torch.optim.SparseAdam(ps, lr=0.1)], ids=["sgd", "sparse_adam"])
def test_sparse_embedding_gradients_are_masked(make_opt):
    """``nn.Embedding(sparse=True)`` gives sparse COO gradients, with repeated indices uncoalesced."""
    emb = nn.Embedding(10, 4, sparse=True)
    g = torch.Generator().manual_seed(0)
    mask = Mask({"weight": torch.rand(10, 4, generator=g) < 0.5})
    mask.apply(emb)
    opt = make_opt(emb.parameters())
    tokens = torch.tensor([[1, 1, 3, 7], [7, 2, 1, 9]])  # repeated tokens: duplicate sparse indices
    for _ in range(3):
        opt.zero_grad()
        emb(tokens).pow(2).sum().backward()
        assert emb.weight.grad.is_sparse
        assert torch.all(emb.weight.grad.to_dense()[~mask["weight"]] == 0.0)
        opt.step()
    w = emb.weight.detach()
    assert torch.all(w[~mask["weight"]] == 0.0)
    used = torch.zeros(10, dtype=torch.bool)
    used[tokens.unique()] = True
    assert torch.any(w[mask["weight"] & used[:, None]] != emb.weight.new_zeros(()))


class TiedLM(nn.Module):
    """An output layer tied to the embedding table, and a linear layer between, each with a mask."""

    def __init__(self, vocab=30, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mid(self.emb(ids))))


def tied_pruned_entries(model, keep) -> int:
    """Nonzero pruned entries of the tied table, counted under both of its state-dict keys."""
    state = model.state_dict()
    return sum(int((state[k][~keep] != 0).sum()) for k in ("emb.weight", "out.weight"))


@pytest.mark.parametrize("how", ["same", "deepcopy", "save_load", "to_float64"])
def test_a_tied_table_stays_zero_through_load_state_dict_and_training(how):
    torch.manual_seed(0)
    model = TiedLM()
    g = torch.Generator().manual_seed(4)
    keep = torch.rand(model.emb.weight.shape, generator=g) < 0.3
    mask = Mask({"emb.weight": keep, "mid.weight": torch.rand(8, 8, generator=g) < 0.5,
                 "out.bias": torch.rand(30, generator=g) < 0.5})
    mask.apply(model)
    net = {"same": lambda m: m, "deepcopy": copy.deepcopy, "save_load": save_load,
           "to_float64": lambda m: m.to(torch.float64)}[how](model)
    state = dense_random_state(net)
    state["out.weight"] = torch.rand(state["out.weight"].shape, generator=g, dtype=state["out.weight"].dtype) + 0.5
    net.load_state_dict(state)  # the last owner loads a dense table after the first owner's hook ran
    assert tied_pruned_entries(net, keep) == 0
    assert int((net.out.bias[~mask["out.bias"]] != 0).sum()) == 0  # the other owner's own mask still holds
    opt = torch.optim.AdamW(net.parameters(), lr=0.05, weight_decay=0.1)
    ids = torch.randint(0, 30, (4, 5), generator=g)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(net(ids).reshape(-1, 30), ids.reshape(-1)).backward()
        opt.step()
    assert tied_pruned_entries(net, keep) == 0
    assert bool((net.emb.weight[keep] != 0).all())
