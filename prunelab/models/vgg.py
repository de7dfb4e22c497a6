"""VGG networks for CIFAR-sized inputs (Frankle et al. 2021, App. A.1; the OpenLTH ``cifar_vgg``).

3x3 convolutions (padding 1) each followed by BatchNorm and then ReLU ("batch normalization before
each ReLU activation"), 2x2 max-pooling after every stage but the last, global average pooling and a
single linear layer 512 -> classes (the "VGG-like" network of SNIP, which Frankle et al. 2021 call VGG-16:
App. B.3). VGG-16 has about 14.7M parameters. The convolutions keep their bias, as OpenLTH's do.

Global average pooling equals OpenLTH's final 2x2 average pooling on 32x32 inputs and also works on
larger ones (e.g. 64x64 TinyImageNet); inputs must be at least 16x16 (four poolings).
"""

from __future__ import annotations

from torch import nn

from prunelab.models.registry import register

# Channels per convolution; "M" is a 2x2 max-pool. VGG-11/13/16/19 are configurations A/B/D/E of
# Simonyan & Zisserman (2015) without the last pooling.
PLANS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
    ],
}


class CifarVGG(nn.Module):
    """``features`` (conv-BN-ReLU and pooling layers), global average pooling, ``fc``."""

    def __init__(self, plan: list[int | str], num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(),
                ]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _register(name: str) -> None:
    @register(
        name, paper="Frankle et al. 2021, App. A.1 (OpenLTH cifar_vgg); Lee et al. 2019 (VGG-like)", min_hw=16
    )
    def factory(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        return CifarVGG(PLANS[name], num_classes, input_shape[0])

    factory.__doc__ = f"{name.upper()} for CIFAR: plan {PLANS[name]}, global average pool, one linear layer."


for _name in PLANS:
    _register(_name)
