import pytest
import torch

from prunelab import Mask, ablations, models


def lenet(seed=0):
    return models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), seed=seed)


def random_mask(model, density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(t.shape, generator=g) < density for n, t in Mask.ones(model).items()})


def test_shuffle_keeps_layer_counts_and_moves_positions():
    mask = random_mask(lenet())
    shuffled = ablations.shuffle(mask, seed=3)
    assert shuffled.layer_counts() == mask.layer_counts()
    for name in mask:
        # positions change: a rebinding bug that returns the input would fail here
        agree = (shuffled[name] == mask[name]).float().mean().item()
        assert agree < 0.99, name
    assert ablations.shuffle(mask, seed=3) == shuffled
    assert ablations.shuffle(mask, seed=4) != shuffled


def test_shuffle_is_a_uniform_permutation():
    # Each position is kept with probability = layer density: average many shuffles of one layer.
    keep = torch.zeros(50, dtype=torch.bool)
    keep[:10] = True
    mask = Mask({"w": keep})
    freq = torch.stack([ablations.shuffle(mask, seed=s)["w"].float() for s in range(400)]).mean(0)
    assert freq.sub(0.2).abs().max() < 0.1


def test_reinitialize_redraws_from_the_same_distribution_and_keeps_zeros():
    model = lenet(seed=0)
    mask = random_mask(model)
    mask.apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ablations.reinitialize(model, seed=5, mask=mask)
    params = dict(model.named_parameters())
    fresh = lenet(seed=5)  # independent: what the initializer gives with seed 5
    for name, keep in mask.items():
        assert torch.all(params[name][~keep] == 0)
        assert not torch.equal(params[name], before[name])
        assert torch.equal(params[name][keep], dict(fresh.named_parameters())[name][keep])


def test_fixed_variance_init_has_unit_std():
    model = ablations.fixed_variance_init(lenet(), seed=1)
    w = model.get_parameter(next(iter(Mask.ones(model))))
    assert w.std().item() == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("scale", ["sigma", "one"])
def test_sign_reinit(scale):
    model = lenet(seed=0)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    mask = random_mask(model)
    with torch.no_grad():  # pretend training moved everything
        for p in model.parameters():
            p.add_(1.0)
    ablations.sign_reinit(model, init_state, mask, scale=scale)
    for name, keep in mask.items():
        w, w0 = model.get_parameter(name), init_state[name]
        sigma = float(torch.sqrt(((w0 - w0.mean()) ** 2).sum() / (w0.numel() - 1))) if scale == "sigma" else 1.0
        expected = torch.where(keep, sigma * torch.sign(w0), torch.zeros_like(w0))
        assert torch.allclose(w.detach(), expected, atol=1e-7)
    # the rest is rewound to init
    for name, t in model.state_dict().items():
        if name not in mask:
            assert torch.equal(t, init_state[name])
    with pytest.raises(ValueError, match="sign scale"):
        ablations.sign_reinit(model, init_state, mask, scale="sgima")


def test_reinitialize_from_another_initializer_keeps_the_mask():
    # Lee et al. 2019, §5.5: a mask found at TN (truncated normal), the pruned network trained from Glorot weights.
    model = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="truncated_normal", seed=0)
    mask = random_mask(model)
    mask.apply(model)
    ablations.reinitialize(model, seed=5, mask=mask, init="xavier_normal")
    assert model.prunelab_init["init"] == "truncated_normal"  # still says what the model was created with
    fresh = models.create("lenet_300_100", num_classes=10, input_shape=(1, 28, 28), init="xavier_normal", seed=5)
    for name, keep in mask.items():
        w = model.get_parameter(name).detach()
        assert torch.all(w[~keep] == 0)
        assert torch.equal(w[keep], fresh.get_parameter(name).detach()[keep])
        # Glorot's statistics, computed here from the layer's shape: std sqrt(2 / (fan_in + fan_out)), normal
        fan_out, fan_in = w.shape
        kept = w[keep]
        if kept.numel() < 5000:  # the 100 -> 10 output layer: too few for a 5% test
            continue
        assert kept.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05), name
        assert (kept.abs().mean() / kept.std()).item() == pytest.approx((2 / torch.pi) ** 0.5, rel=0.05), name


def test_reinitialize_init_names_and_models_without_a_record():
    model = lenet()
    with pytest.raises(ValueError, match="did you mean 'xavier_normal'"):
        ablations.reinitialize(model, seed=1, init="xavier_norml")
    plain = torch.nn.Sequential(torch.nn.Linear(20, 10))
    with pytest.raises(ValueError, match="made by prunelab.models.create"):
        ablations.reinitialize(plain, seed=1)
    ablations.reinitialize(plain, seed=1, init="truncated_normal")  # a model of one's own: init named, defaults kept
    assert plain[0].weight.abs().max().item() <= 2.0 and torch.equal(plain[0].bias, torch.zeros(10))
