"""prunelab.models: parameter counts against hand arithmetic, shapes, seeding, initializer statistics."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

import prunelab.models as models
from prunelab.masks import prunable_parameters

EXPECTED_NAMES = {
    "lenet_300_100",
    "lenet5",
    "lenet_pf",
    "conv2",
    "conv4",
    "conv6",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet50",
    "resnet18_modified",
}


@functools.cache
def built(name: str, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    """One shared instance per configuration, for tests that only read the model."""
    return models.create(name, num_classes=num_classes, input_shape=input_shape)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- independent parameter arithmetic -------------------------------------------------------------
def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(c: int) -> int:
    return 2 * c  # gamma and beta


def cifar_resnet_count(depth: int, width: int = 1, classes: int = 10, in_ch: int = 3) -> int:
    n = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    total = conv(in_ch, widths[0], 3, bias=False) + bn(widths[0])
    cin = widths[0]
    for stage, c in enumerate(widths):
        for block in range(n):
            total += conv(cin, c, 3, bias=False) + bn(c) + conv(c, c, 3, bias=False) + bn(c)
            if cin != c or (stage > 0 and block == 0):
                total += conv(cin, c, 1, bias=False) + bn(c)  # projection shortcut
            cin = c
    return total + linear(widths[-1], classes)


def vgg_count(convs: list[int], classes: int = 10) -> int:
    total, cin = 0, 3
    for c in convs:
        total += conv(cin, c, 3) + bn(c)
        cin = c
    return total + linear(512, classes)


# ---- registry -------------------------------------------------------------------------------------
def test_names_lists_every_model():
    assert EXPECTED_NAMES <= set(models.names())


def test_unknown_model_name_suggests_a_close_match():
    with pytest.raises(ValueError, match="did you mean 'lenet_300_100'") as info:
        models.create("lenet_300_10")
    assert "wrn_<depth>_<k>" in str(info.value)


def test_register_custom_model_and_probe_errors(monkeypatch):
    monkeypatch.setattr(models.MODELS, "_items", dict(models.MODELS._items))
    monkeypatch.setattr(models.MODELS, "_meta", dict(models.MODELS._meta))

    @models.register("test_flat_784", paper="none")
    def flat(num_classes, input_shape):  # ignores input_shape on purpose
        return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))

    @models.register("test_ignores_classes")
    def ignores(num_classes, input_shape):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 3))

    assert "test_flat_784" in models.names()
    assert models.MODELS.meta("test_flat_784") == {"paper": "none"}
    m = models.create("test_flat_784", input_shape=(1, 28, 28))
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"cannot take inputs of shape \(3, 32, 32\)"):
        models.create("test_flat_784", input_shape=(3, 32, 32))
    with pytest.raises(ValueError, match=r"expected \(1, 10\)"):
        models.create("test_ignores_classes", input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="already registered"):
        models.register("test_flat_784")(flat)


# ---- parameter counts -----------------------------------------------------------------------------
def test_lenet_300_100_count_and_forward():
    m = built("lenet_300_100", (1, 28, 28))
    assert count(m) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet5_caffe_count_and_forward():
    m = built("lenet5", (1, 28, 28))
    # 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4
    expected = conv(1, 20, 5) + conv(20, 50, 5) + linear(50 * 4 * 4, 500) + linear(500, 10)
    assert count(m) == expected == 431_080
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet_pf_count_and_forward():
    m = built("lenet_pf", (1, 28, 28))
    # 28 -conv3-> 26 -pool-> 13 -conv3-> 11 -pool-> 5 (Paganini & Forde 2020, Fig. 5: conv2 is 6 -> 16, 3x3)
    expected = conv(1, 6, 3) + conv(6, 16, 3) + linear(16 * 5 * 5, 120) + linear(120, 84) + linear(84, 10)
    assert count(m) == expected == 60_074
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert models.create("lenet_pf", input_shape=(1, 10, 10))(torch.zeros(1, 1, 10, 10)).shape == (1, 10)


def test_torch_default_draws_like_pytorchs_own_layers():
    """Weights and biases in PyTorch's own range for the layer (its reset_parameters: +-1/sqrt(fan_in)), with its
    spread; every other initializer keeps zero biases."""
    ours, theirs = nn.Linear(400, 300), nn.Linear(400, 300)
    torch.manual_seed(0)
    theirs.reset_parameters()
    models.initialize(ours, "torch_default", seed=0)
    bound = 1 / math.sqrt(400)
    for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
        assert a.abs().max().item() <= bound and b.abs().max().item() <= bound
        assert close(a.std().item(), b.std().item(), rel=0.15 if a.dim() == 1 else 0.02)
    assert ours.bias.abs().min().item() > 0
    assert close(ours.weight.std().item(), math.sqrt(1 / (3 * 400)))  # U(-b, b): variance b^2 / 3
    models.initialize(ours, "kaiming_normal", seed=0)
    assert torch.equal(ours.bias, torch.zeros(300))
    net = models.create("lenet_pf", input_shape=(1, 28, 28), init="torch_default", seed=3)
    again = models.create("lenet_pf", input_shape=(1, 28, 28), init="torch_default", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), again.parameters()))
    assert net[3].bias.abs().max().item() <= 1 / math.sqrt(6 * 9) and net[3].bias.abs().min().item() > 0


@pytest.mark.parametrize(
    "name, convs, pools",
    [("conv2", [64, 64], 1), ("conv4", [64, 64, 128, 128], 2), ("conv6", [64, 64, 128, 128, 256, 256], 3)],
)
def test_lottery_convnet_counts(name, convs, pools):
    total, cin = 0, 3
    for c in convs:
        total += conv(cin, c, 3)
        cin = c
    side = 32 // 2**pools
    total += linear(cin * side * side, 256) + linear(256, 256) + linear(256, 10)
    assert count(built(name)) == total
    if name == "conv2":
        assert abs(total - 4.3e6) < 0.05e6  # "4.3M" in Frankle & Carbin (2019), Fig. 2


def test_vgg_counts():
    plans = {
        "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
        "vgg13": [64, 64, 128, 128, 256, 256, 512, 512, 512, 512],
        "vgg16": [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512],
        "vgg19": [64, 64, 128, 128] + [256] * 4 + [512] * 8,
    }
    for name, convs in plans.items():
        assert count(built(name)) == vgg_count(convs), name
    assert abs(count(built("vgg16")) - 14.7e6) / 14.7e6 < 0.01
    fcs = [m for m in built("vgg16").modules() if isinstance(m, nn.Linear)]
    assert len(fcs) == 1 and (fcs[0].in_features, fcs[0].out_features) == (512, 10)


def test_cifar_resnet_counts():
    for depth in (20, 32, 44, 56, 110):
        assert count(built(f"resnet{depth}")) == cifar_resnet_count(depth), depth
    assert 260_000 <= count(built("resnet20")) <= 280_000  # "0.27M" in He et al. (2016), Table 6


def test_resnet_width_option_and_wide_resnet_names():
    wide = models.create("resnet20", width=2)
    assert count(wide) == cifar_resnet_count(20, width=2)
    assert count(models.create("wrn_20_2")) == count(wide)
    # WRN-14-8 of Frankle et al. 2021, App. B.3 (WRN-16-8 of Zagoruyko & Komodakis 2016): n = 2, k = 8
    assert count(models.create("wrn_14_8")) == cifar_resnet_count(14, width=8)
    m = models.create("wrn_8_1", input_shape=(1, 28, 28), num_classes=3)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


@pytest.mark.parametrize("name", ["wrn_16_8", "wrn_28_10", "wrn_2_1"])
def test_wide_resnet_depth_must_be_6n_plus_2(name):
    with pytest.raises(ValueError, match=r"6n \+ 2"):
        models.create(name)


def test_wide_resnet_rejects_zero_width_and_width_option():
    with pytest.raises(ValueError, match="at least 1"):
        models.create("wrn_14_0")
    with pytest.raises(ValueError, match="no option 'width'"):
        models.create("wrn_14_2", width=2)


def test_torchvision_resnet_counts():
    # Published ImageNet counts (1000 classes), with the 2048/512-wide output layer resized to 10.
    assert count(built("resnet18")) == 11_689_512 - linear(512, 1000) + linear(512, 10)
    assert count(built("resnet50")) == 25_557_032 - linear(2048, 1000) + linear(2048, 10)
    # modified stem: 3x3 instead of 7x7, 3 -> 64 channels, no bias
    assert count(built("resnet18_modified")) == count(built("resnet18")) - 64 * 3 * 49 + 64 * 3 * 9


def test_resnet18_modified_stem():
    m = built("resnet18_modified")
    assert (m.conv1.kernel_size, m.conv1.stride, m.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert built("resnet18").conv1.kernel_size == (7, 7)


def test_input_channels_follow_input_shape():
    m = models.create("resnet18", input_shape=(1, 32, 32))
    assert m.conv1.in_channels == 1 and m.conv1.kernel_size == (7, 7)
    assert m(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert models.create("resnet20", input_shape=(1, 28, 28)).conv1.in_channels == 1
    assert models.create("vgg11", input_shape=(1, 32, 32)).features[0].in_channels == 1


# ---- forward shapes and prunable parameters for every registered model ----------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_forward_shape_and_prunable_parameters(name):
    m = built(name)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    m.train()
    weights = {
        f"{mod_name}.weight" for mod_name, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))
    }
    assert set(prunable_parameters(m)) == weights
    assert m.training


# ---- argument checking ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, shape, needed",
    [("lenet5", (1, 8, 8), "16x16"), ("vgg16", (3, 8, 8), "16x16"), ("conv6", (3, 4, 4), "8x8")],
)
def test_incompatible_input_shape(name, shape, needed):
    with pytest.raises(ValueError, match=needed):
        models.create(name, input_shape=shape)


def test_smallest_accepted_inputs_work():
    assert models.create("lenet5", input_shape=(1, 16, 16))(torch.zeros(1, 1, 16, 16)).shape == (1, 10)
    assert models.create("conv6", input_shape=(3, 8, 8))(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.5}, "num_classes"),
        ({"input_shape": (28, 28)}, "input_shape"),
        ({"input_shape": (1, 0, 28)}, "input_shape"),
        ({"input_shape": 784}, "input_shape"),
        ({"init": "kaiming_norml"}, "did you mean 'kaiming_normal'"),
        ({"init_mode": "fan_avg"}, "fan mode"),
        ({"bn_init": "zeros"}, "BatchNorm init"),
        ({"seed": "0"}, "seed"),
        ({"width": 2}, "no option 'width'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.create("lenet5", **{"input_shape": (1, 28, 28), **kwargs})


# ---- seeding --------------------------------------------------------------------------------------
def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_bits_other_seed_differs_global_rng_untouched():
    rng = torch.get_rng_state()
    a = state(models.create("resnet20", seed=3))
    assert torch.equal(torch.get_rng_state(), rng)
    b = state(models.create("resnet20", seed=3))
    c = state(models.create("resnet20", seed=4))
    assert same(a, b)
    weights = [k for k in a if k.endswith("weight")]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_prunelab_init_attribute_redraws_like_create():
    m = models.create("resnet20", init="kaiming_uniform", init_mode="fan_out", bn_init="ones", seed=0)
    assert m.prunelab_init == {"init": "kaiming_uniform", "mode": "fan_out", "bn_init": "ones"}
    models.initialize(m, **m.prunelab_init, seed=7)
    fresh = models.create("resnet20", init="kaiming_uniform", init_mode="fan_out", bn_init="ones", seed=7)
    assert same(state(m), state(fresh))
    assert built("lenet5", (1, 28, 28)).prunelab_init == {
        "init": "kaiming_normal",
        "mode": "fan_in",
        "bn_init": "uniform",
    }


def test_generator_argument_and_dtype_independence():
    a = models.initialize(nn.Linear(30, 20), seed=5)
    b = models.initialize(nn.Linear(30, 20), generator=torch.Generator().manual_seed(5))
    c = models.initialize(nn.Linear(30, 20).double(), seed=5)
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(a.weight.double(), c.weight)


# ---- initializer statistics -----------------------------------------------------------------------
FAN_IN, FAN_OUT = 2000, 500  # nn.Linear(2000, 500): weight (500, 2000), one million entries


def drawn(init: str, mode: str = "fan_in") -> torch.Tensor:
    layer = nn.Linear(FAN_IN, FAN_OUT)
    models.initialize(layer, init, mode=mode, seed=0)
    assert torch.equal(layer.bias, torch.zeros(FAN_OUT))
    return layer.weight.detach()


def close(value: float, target: float, rel: float = 0.03) -> bool:
    return abs(value - target) <= rel * target


@pytest.mark.parametrize(
    "init, mode, std, family",
    [
        ("kaiming_normal", "fan_in", math.sqrt(2 / FAN_IN), "normal"),
        ("kaiming_normal", "fan_out", math.sqrt(2 / FAN_OUT), "normal"),
        ("kaiming_uniform", "fan_in", math.sqrt(2 / FAN_IN), "uniform"),
        ("kaiming_uniform", "fan_out", math.sqrt(2 / FAN_OUT), "uniform"),
        ("xavier_normal", "fan_in", math.sqrt(2 / (FAN_IN + FAN_OUT)), "normal"),
        ("xavier_uniform", "fan_in", math.sqrt(2 / (FAN_IN + FAN_OUT)), "uniform"),
        ("standard_normal", "fan_in", 1.0, "normal"),
    ],
)
def test_initializer_statistics(init, mode, std, family):
    w = drawn(init, mode)
    assert close(w.std().item(), std)
    assert abs(w.mean().item()) < 0.01 * std
    # E|w| / std tells a normal (sqrt(2/pi) = 0.798) from a uniform (sqrt(3)/2 = 0.866)
    ratio = w.abs().mean().item() / w.std().item()
    assert close(ratio, math.sqrt(2 / math.pi) if family == "normal" else math.sqrt(3) / 2, rel=0.01)
    if family == "uniform":
        assert w.abs().max().item() <= math.sqrt(3) * std * (1 + 1e-6)


def test_initializer_names():
    assert set(models.INITIALIZERS) == {
        "kaiming_normal",
        "kaiming_uniform",
        "xavier_normal",
        "xavier_uniform",
        "standard_normal",
        "truncated_normal",
        "torch_default",
    }


# ---- Lee et al. 2019, §5.5: TN, the standard normal redrawn outside [-2, 2] ------------------------
def standard_normal_pdf(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def standard_normal_cdf(x: float) -> float:
    return (1 + math.erf(x / math.sqrt(2))) / 2


def test_truncated_normal_matches_the_truncated_distribution():
    # Independent moments of N(0, 1) truncated to [-c, c] (Johnson, Kotz & Balakrishnan): with Z = Phi(c) - Phi(-c),
    # Var = 1 - 2 c phi(c) / Z, E|w| = 2 (phi(0) - phi(c)) / Z, P(|w| > 1) = 2 (Phi(c) - Phi(1)) / Z.
    c = 2.0
    z = standard_normal_cdf(c) - standard_normal_cdf(-c)
    std = math.sqrt(1 - 2 * c * standard_normal_pdf(c) / z)
    assert std == pytest.approx(0.87962566103423978, abs=1e-12)  # TensorFlow's constant for this std
    w = drawn("truncated_normal")
    assert w.abs().max().item() <= c
    assert w.abs().max().item() > 0.99 * c  # redrawn, not clipped to a narrower range
    assert (w.abs() == c).float().mean().item() < 1e-4  # nor clamped: no mass piled on the bounds
    assert close(w.std().item(), std, rel=0.005)
    assert abs(w.mean().item()) < 0.005
    assert close(w.abs().mean().item(), 2 * (standard_normal_pdf(0) - standard_normal_pdf(c)) / z, rel=0.005)
    tail = 2 * (standard_normal_cdf(c) - standard_normal_cdf(1)) / z
    assert close((w.abs() > 1).float().mean().item(), tail, rel=0.01)
    # the same for every layer size and fan mode: a fixed variance, as standard_normal
    small = nn.Linear(50, 40)
    models.initialize(small, "truncated_normal", mode="fan_out", seed=0)
    assert small.weight.abs().max().item() <= c and close(small.weight.std().item(), std, rel=0.1)


def test_truncated_normal_is_reproducible_by_seed_on_any_dtype():
    a = models.create("lenet5", input_shape=(1, 28, 28), init="truncated_normal", seed=3)
    b = models.create("lenet5", input_shape=(1, 28, 28), init="truncated_normal", seed=3)
    c = models.create("lenet5", input_shape=(1, 28, 28), init="truncated_normal", seed=4)
    assert same(state(a), state(b))
    weights = [k for k in state(a) if k.endswith("weight")]
    assert all(not torch.equal(state(a)[k], state(c)[k]) for k in weights)
    single = models.initialize(nn.Linear(30, 20), "truncated_normal", seed=5)
    double = models.initialize(nn.Linear(30, 20).double(), "truncated_normal", seed=5)
    assert torch.equal(single.weight.double(), double.weight)


def test_conv_fan_includes_receptive_field():
    layer = nn.Conv2d(64, 128, 3)  # fan_in 64*9 = 576, fan_out 128*9 = 1152
    assert models.fans(layer.weight.shape) == (576, 1152)
    models.initialize(layer, "kaiming_normal", mode="fan_out", seed=1)
    assert close(layer.weight.std().item(), math.sqrt(2 / 1152))
    assert torch.equal(layer.bias, torch.zeros(128))


def test_batchnorm_init_uniform_and_ones():
    layer = nn.BatchNorm2d(20_000)
    with torch.no_grad():
        layer.bias.fill_(3.0)
    layer.running_mean.fill_(5.0)
    layer.running_var.fill_(7.0)
    models.initialize(layer, bn_init="uniform", seed=0)
    gamma = layer.weight.detach()
    assert gamma.min().item() >= 0.0 and gamma.max().item() < 1.0
    assert abs(gamma.mean().item() - 0.5) < 0.01 and close(gamma.std().item(), math.sqrt(1 / 12))
    assert torch.equal(layer.bias, torch.zeros(20_000))
    assert torch.equal(layer.running_mean, torch.zeros(20_000))
    assert torch.equal(layer.running_var, torch.ones(20_000))
    models.initialize(layer, bn_init="ones", seed=0)
    assert torch.equal(layer.weight, torch.ones(20_000))


def test_standard_normal_ignores_layer_size():
    m = models.create("conv4", init="standard_normal")
    for name, p in prunable_parameters(m).items():
        assert close(p.std().item(), 1.0, rel=0.05), name
