"""Numerical robustness (issue: reliability): deep SynFlow, odd SNIP/GraSP batches, layer collapse."""

import pytest
import torch
from torch import nn

import prunelab
from prunelab import models


@pytest.mark.parametrize("name,shape,overflows_float32", [
    ("resnet110", (3, 32, 32), True), ("vgg19", (3, 32, 32), False), ("resnet50", (3, 224, 224), True)])
def test_synflow_scores_are_finite_on_deep_networks(name, shape, overflows_float32):
    """float64 is mandatory: the product of |w| over 50-110 layers overflows float32 (Frankle et al. 2021, App. D.2)."""
    model = models.create(name, num_classes=10, input_shape=shape, seed=0)
    scores = prunelab.score(model, "synflow", input_shape=shape)
    flat = torch.cat([s.flatten() for s in scores.values()])
    assert scores[next(iter(scores))].dtype == torch.float64
    assert torch.isfinite(flat).all() and flat.max() > 0
    # why float64: on ResNet-110 and ResNet-50 the all-ones output of the |w| network is beyond float32's range
    with torch.no_grad():
        probe = models.create(name, num_classes=10, input_shape=shape, seed=0).eval()
        for p in probe.parameters():
            p.abs_()
        for m in probe.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
        out64 = probe.double()(torch.ones(1, *shape, dtype=torch.float64)).sum().item()
    assert (out64 > torch.finfo(torch.float32).max) == overflows_float32, out64


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_driven_criteria_with_a_missing_class_or_one_example(method):
    model = models.create("resnet20", num_classes=10, input_shape=(3, 32, 32), seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, 32, 32, generator=g)
    y = torch.arange(20) % 5  # classes 5..9 absent: the loss is still defined
    mask = prunelab.prune(model, method, 0.9, batch=(x, y))
    assert mask.num_total - mask.num_kept == round(0.9 * mask.num_total)
    mask1 = prunelab.prune(model, method, 0.9, batch=(x[:1], y[:1]))  # BatchNorm2d sees 8x8 > 1 values
    assert mask1.num_total - mask1.num_kept == round(0.9 * mask1.num_total)


def test_batch_of_one_with_batchnorm1d_says_why():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # torch's own reason, kept
        prunelab.prune(model, "snip", 0.5, batch=(torch.randn(1, 4), torch.tensor([0])))


def test_layer_collapse_warns():
    model = models.create("lenet_300_100", input_shape=(1, 28, 28), seed=0)
    with torch.no_grad():
        model.get_parameter(list(prunelab.Mask.ones(model))[-1]).mul_(1e-4)  # tiny output layer
    with pytest.warns(prunelab.LayerCollapseWarning, match="collapse"):
        prunelab.prune(model, "magnitude", 0.999)
