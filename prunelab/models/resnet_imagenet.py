"""ImageNet ResNets from torchvision (Frankle et al. 2021, App. A.1: "We use the TorchVision
implementations"), plus the modified ResNet-18 of the SynFlow paper (App. A.1 and D.3).

``weights=None`` always: prunelab studies networks at initialization. For inputs with other than
three channels the stem convolution is replaced by one with the same shape otherwise. torchvision is
imported when one of these models is built, not when prunelab is imported (it takes seconds).
"""

from __future__ import annotations

from torch import nn

from prunelab.models.registry import register


def _torchvision_resnet(arch: str, num_classes: int) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _replace_stem(model: nn.Module, in_channels: int, kernel_size: int, stride: int) -> nn.Module:
    """Swap ``model.conv1`` for a bias-free ``kernel_size`` convolution from ``in_channels`` channels."""
    out_channels = model.conv1.out_channels
    model.conv1 = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    return model


@register("resnet18", paper="He et al. 2016; torchvision (Frankle et al. 2021, App. A.1)", min_hw=1)
def resnet18(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision's ResNet-18 (7x7 stride-2 stem, max-pool), 11,689,512 parameters with 1000 classes."""
    model = _torchvision_resnet("resnet18", num_classes)
    return model if input_shape[0] == 3 else _replace_stem(model, input_shape[0], 7, 2)


@register("resnet50", paper="He et al. 2016; torchvision (Frankle et al. 2021, App. A.1)", min_hw=1)
def resnet50(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision's ResNet-50 (bottleneck blocks), 25,557,032 parameters with 1000 classes."""
    model = _torchvision_resnet("resnet50", num_classes)
    return model if input_shape[0] == 3 else _replace_stem(model, input_shape[0], 7, 2)


@register(
    "resnet18_modified", paper="Tanaka et al. 2020 (SynFlow); Frankle et al. 2021, App. A.1, D.3", min_hw=1
)
def resnet18_modified(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem (padding 1) and no max-pool, for 32x32 or 64x64 inputs.

    The network of Synaptic-Flow's TinyImageNet and CIFAR experiments (Frankle et al. 2021, App. D.3:
    "first conv is 3x3 stride 1; no max-pool"); otherwise torchvision's ResNet-18.
    """
    model = _replace_stem(_torchvision_resnet("resnet18", num_classes), input_shape[0], 3, 1)
    model.maxpool = nn.Identity()
    return model
