"""Pruned weights stay exactly 0.0 through training, with prunelab's trainer and a user's own loop."""

import pytest
import torch
from torch import nn

from prunelab import Mask
from prunelab.mask_binding import _GradMask
from prunelab.masks import prunable_parameters, remove_mask


def small_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def half_mask(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=g) < 0.5 for n, p in prunable_parameters(model).items()})


OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_users_own_loop_keeps_pruned_weights_exactly_zero(opt):
    model = small_convnet()
    mask = half_mask(model).apply(model)
    optimizer = OPTIMIZERS[opt](model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i in range(15):
        x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(100 + i))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0.0), name
        # the kept weights did train
        assert not torch.equal(params[name][keep], before[name][keep]), name


def test_apply_replaces_previous_hooks_and_remove_detaches():
    model = small_convnet()
    dense = Mask.ones(model)
    half_mask(model, seed=1).apply(model)
    dense.apply(model)  # replaces the hooks: no gradient is masked anymore
    x = torch.randn(4, 3, 8, 8)
    model(x).sum().backward()
    w = model[0].weight
    # gradient of a surviving conv weight is dense (no hook zeroes entries); compare with a hook-free copy
    remove_mask(model)
    clone = small_convnet()
    clone.load_state_dict(model.state_dict())
    clone(x).sum().backward()
    assert torch.equal(w.grad, clone[0].weight.grad)


def test_mask_fits_checks_names_and_shapes():
    model = small_convnet()
    bad = Mask({"0.weight": torch.ones(8, 3, 1, 1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        bad.apply(model)
    with pytest.raises(ValueError, match="lacks"):
        Mask({"nope.weight": torch.ones(2, dtype=torch.bool)}).apply(model)


def test_mask_counts_save_load(tmp_path):
    model = small_convnet()
    mask = half_mask(model)
    kept = sum(int(t.sum()) for t in mask.values())
    total = sum(p.numel() for p in prunable_parameters(model).values())
    assert mask.num_kept == kept and mask.num_total == total
    assert mask.density == pytest.approx(kept / total)
    assert mask.sparsity == pytest.approx(1 - kept / total)
    ls = mask.layer_sparsity()
    assert ls["0.weight"] == pytest.approx(1 - mask["0.weight"].float().mean().item())
    path = mask.save(tmp_path / "m.pt")
    assert Mask.load(path) == mask
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="corrupted"):
        Mask.load(path)
    with pytest.raises(FileNotFoundError):
        Mask.load(tmp_path / "missing.pt")


def test_prunable_parameters_options():
    model = small_convnet()
    assert list(prunable_parameters(model)) == ["0.weight", "3.weight", "7.weight"]
    with_bias = prunable_parameters(model, include_bias=True)
    assert list(with_bias) == ["0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"]
    with_norm = prunable_parameters(model, include_norm=True)
    assert "1.weight" in with_norm and "1.bias" in with_norm
    assert list(prunable_parameters(model, exclude=["7.weight"])) == ["0.weight", "3.weight"]
    only_conv = prunable_parameters(model, filter=lambda n, p: p.dim() == 4)
    assert list(only_conv) == ["0.weight", "3.weight"]
    with pytest.raises(ValueError, match="no prunable"):
        Mask.ones(nn.Sequential(nn.ReLU()))


def test_mask_files_pack_bits_and_old_files_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = Mask({"a": torch.rand(300, 301, generator=g) < 0.3, "b": torch.rand(7, generator=g) < 0.5,
                 "c": torch.ones(3, 3, 2, 2, dtype=torch.bool)})
    path = mask.save(tmp_path / "m.pt")
    assert path.stat().st_size < (300 * 301) / 8 + 4000  # about one bit per weight
    assert Mask.load(path) == mask
    torch.save({"format": "prunelab.mask", "version": 1, "masks": mask.state_dict()}, tmp_path / "v1.pt")
    assert Mask.load(tmp_path / "v1.pt") == mask


def test_apply_zeroes_frozen_parameters_without_a_hook():
    model = small_convnet()
    model[0].weight.requires_grad_(False)  # e.g. a frozen first layer
    mask = half_mask(model).apply(model)
    assert torch.all(model[0].weight[~mask["0.weight"]] == 0.0)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for i in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i))).sum().backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0.0), name


def test_pruned_nan_and_inf_weights_become_exactly_zero():
    model = small_convnet()
    mask = half_mask(model)
    with torch.no_grad():
        for name, p in prunable_parameters(model).items():
            p[~mask[name]] = float("nan")
        model[7].weight[~mask["7.weight"]] = float("inf")
    mask.apply(model)
    for name, p in prunable_parameters(model).items():
        assert torch.all(p[~mask[name]] == 0.0), name
        assert torch.isfinite(p).all(), name


def test_gradient_hook_follows_the_gradients_device_and_dtype():
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) < 0.5
    hook = _GradMask(keep, like=torch.zeros(4, 6))  # fitted to a float32 CPU parameter
    # After model.cuda() the gradient lives elsewhere: the hook must not mix in a CPU tensor. ("meta"
    # stands in for another device on a CPU-only machine.)
    p = torch.zeros(4, 6, device="meta", requires_grad=True)
    p.grad = torch.ones(4, 6, device="meta")
    hook(p)
    assert p.grad.device.type == "meta"
    q = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)
    q.grad = torch.arange(24, dtype=torch.float64).reshape(4, 6) + 1
    hook(q)
    assert q.grad.dtype == torch.float64
    assert torch.equal(q.grad != 0, keep)  # every pruned entry 0, every kept one untouched (all nonzero)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gradient_hooks_after_model_cuda_keep_pruned_weights_zero():
    model = small_convnet()
    mask = half_mask(model).apply(model)
    model.cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3, 8, 8, device="cuda")).sum().backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.all(params[name][~keep.cuda()] == 0.0), name


def test_zero_dimensional_masks_round_trip(tmp_path):
    mask = Mask({"scale": torch.tensor(False), "gain": torch.tensor(True), "w": torch.rand(3, 5) < 0.5})
    loaded = Mask.load(mask.save(tmp_path / "m.pt"))
    assert loaded == mask and loaded["scale"].shape == torch.Size([]) and not bool(loaded["scale"])
