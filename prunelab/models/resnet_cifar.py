"""ResNets for CIFAR (He et al. 2016, §4.2) and their wide variants.

Frankle et al. (2021, App. A.1) use the OpenLTH ``cifar_resnet``, and this follows it:

- a 3x3 stem convolution to ``16 * width`` channels, then three stages of ``n`` basic blocks with
  ``16, 32, 64`` channels times ``width``; the first block of stages 2 and 3 halves the resolution;
- a basic block is conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (BatchNorm before every
  activation); the shortcut is the identity, or a 1x1 convolution (stride 2 where the resolution
  halves) followed by BatchNorm where the shape changes;
- convolutions have no bias; global average pooling; one linear layer to the classes.

Depth counts the stem, the 6n block convolutions and the output layer: depth = 6n + 2 (ResNet-20 has
n = 3 and about 0.27M parameters).

Wide ResNets ``wrn_<depth>_<k>`` are this body with ``width = k`` and the same depth count, the naming
of Frankle et al. (2021, App. B.3 and C.3): their WRN-14-8, WRN-14-10 and WRN-20-8 are Zagoruyko &
Komodakis's WRN-16-8, WRN-16-10 and WRN-22-8 (who count depth as 6n + 4), and their WRN-32-2 is the
doubled-width ResNet-32 of the GraSP paper. So ``wrn_<d>_<k>`` is exactly ``resnet<d>`` with
``width=k``. Unlike Zagoruyko & Komodakis (2016), blocks are post-activation without dropout and the stem
already has ``16 * k`` channels.
"""

from __future__ import annotations

import re

from torch import nn

from prunelab.models.registry import register

WIDE_RESNET_NAME = re.compile(r"wrn_(\d+)_(\d+)")
WIDE_RESNET_PATTERN = "wrn_<depth>_<k>"


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2; ValueError for any other depth."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, 26, 32, 44, 56, 110, ...), "
            f"got {depth!r}; "
            "depth counts the stem, block convolutions and output layer (Frankle et al. 2021, App. B.3), "
            "so the WRN-16-8 of Zagoruyko & Komodakis 2016 is wrn_14_8 here"
        )
    return (depth - 2) // 6


def parse_wide_resnet_name(name: str) -> tuple[int, int] | None:
    """(depth, k) for a name ``wrn_<depth>_<k>``, None for any other name (depth not checked here)."""
    match = WIDE_RESNET_NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected where shapes differ) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem ``conv1``/``bn1``, stages ``layer1``..``layer3`` of :class:`BasicBlock`, average pool, ``fc``."""

    def __init__(self, depth: int, num_classes: int = 10, width: int = 1, in_channels: int = 3):
        super().__init__()
        n = blocks_per_stage(depth)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"ResNet width must be a positive integer, got {width!r}")
        channels = 16 * width
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        stages = []
        for stage, out in enumerate((16 * width, 32 * width, 64 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, out, stride))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def _register(depth: int) -> None:
    @register(f"resnet{depth}", paper="He et al. 2016, §4.2; Frankle et al. 2021, App. A.1 (OpenLTH)", min_hw=1)
    def factory(num_classes: int, input_shape: tuple[int, int, int], width: int = 1) -> nn.Module:
        return CifarResNet(depth, num_classes, width, input_shape[0])

    factory.__doc__ = (
        f"ResNet-{depth} for CIFAR (n = {(depth - 2) // 6}); ``width`` multiplies every channel count."
    )


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)


def wide_resnet(depth: int, k: int):
    """The factory for ``wrn_<depth>_<k>``: :class:`CifarResNet` with ``width=k`` (depth = 6n + 2)."""
    blocks_per_stage(depth)
    if k < 1:
        raise ValueError(f"wide ResNet width k must be at least 1, got {k}")

    def factory(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        return CifarResNet(depth, num_classes, k, input_shape[0])

    return factory
