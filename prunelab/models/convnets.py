"""The Conv-2 / Conv-4 / Conv-6 networks of the lottery-ticket paper (Frankle & Carbin 2019, Fig. 2).

VGG-like: pairs of 3x3 convolutions (padding 1, with bias, ReLU, no BatchNorm) of 64, then 128, then
256 channels, each pair followed by 2x2 max-pooling; then fully-connected 256 -> 256 -> classes.
Conv-2 on CIFAR-10 has about 4.3M parameters, as in that figure.
"""

from __future__ import annotations

from torch import nn

from prunelab.models.registry import register

_PAIR_WIDTHS = (64, 128, 256)


def conv_k(num_classes: int, input_shape: tuple[int, int, int], pairs: int) -> nn.Sequential:
    """Conv-(2 * pairs): ``pairs`` conv-conv-pool stages, then fc 256, 256, classes."""
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out in _PAIR_WIDTHS[:pairs]:
        for _ in range(2):
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            channels = out
        layers.append(nn.MaxPool2d(2))
        height, width = height // 2, width // 2
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, num_classes),
    ]
    return nn.Sequential(*layers)


_PAPER = "Frankle & Carbin 2019, Fig. 2"


@register("conv2", paper=_PAPER, min_hw=2)
def conv2(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Conv-2: 64, 64, pool; fc 256, 256, classes."""
    return conv_k(num_classes, input_shape, pairs=1)


@register("conv4", paper=_PAPER, min_hw=4)
def conv4(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Conv-4: 64, 64, pool, 128, 128, pool; fc 256, 256, classes."""
    return conv_k(num_classes, input_shape, pairs=2)


@register("conv6", paper=_PAPER, min_hw=8)
def conv6(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool; fc 256, 256, classes."""
    return conv_k(num_classes, input_shape, pairs=3)
