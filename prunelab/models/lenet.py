"""Fully-connected and small convolutional LeNets for MNIST-sized inputs."""

from __future__ import annotations

import math

from torch import nn

from prunelab.models.registry import register


@register("lenet_300_100", paper="LeCun et al. 1998; Frankle et al. 2021, App. A.1, K", min_hw=1)
def lenet_300_100(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Input flattened -> 300 -> 100 -> classes, ReLU after both hidden layers.

    Frankle et al. (2021, App. A.1) and Lee et al. (2019, §5.1: "267k parameters"): 266,610 parameters
    on 28x28x1 inputs with 10 classes.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def _two_conv_lenet(input_shape: tuple[int, int, int], convs: tuple[int, int], kernel: int,
                    hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """conv ``convs[0]``@kxk (no padding) -> max-pool 2 -> conv ``convs[1]``@kxk -> max-pool 2 -> fc ``hidden``...
    -> fc classes, with ReLU after each hidden layer."""
    channels, height, width = input_shape

    def after_conv_pool(size: int) -> int:
        return (size - (kernel - 1)) // 2

    flat = convs[1] * after_conv_pool(after_conv_pool(height)) * after_conv_pool(after_conv_pool(width))
    layers: list[nn.Module] = []
    for c_in, c_out in zip((channels, convs[0]), convs):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=kernel), nn.ReLU(), nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    for f_in, f_out in zip((flat, *hidden), hidden):
        layers += [nn.Linear(f_in, f_out), nn.ReLU()]
    layers.append(nn.Linear((flat, *hidden)[-1], num_classes))
    return nn.Sequential(*layers)


@register("lenet5", paper="Lee et al. 2019, §5.1 (SNIP's LeNet-5-Caffe)", min_hw=16)
def lenet5(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """LeNet-5-Caffe as used by SNIP (Lee et al. 2019, §5.1, Table 1): two convolutions, two fc layers.

    conv 20@5x5 (no padding) -> max-pool 2 -> conv 50@5x5 -> max-pool 2 -> fc 500 -> fc classes, with
    ReLU after each hidden layer: 431,080 parameters on 28x28x1 inputs ("431k" in the paper). The input
    must be at least 16x16 so that two 5x5 convolutions and two poolings leave one pixel. Caffe's original and
    Lee et al.'s released code apply no nonlinearity after the convolutions (max-pooling only); this one, like
    the usual PyTorch versions, has a ReLU after each convolution as well.
    """
    return _two_conv_lenet(input_shape, (20, 50), 5, (500,), num_classes)


@register("lenet_pf", paper="Paganini & Forde 2020, §4, Fig. 5 (their LeNet)", min_hw=10)
def lenet_pf(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The LeNet of Paganini & Forde 2020 (Fig. 5: a second convolution of 6 input and 16 output channels with 3x3
    filters), as in PyTorch's pruning tutorial: conv 6@3x3 -> max-pool 2 -> conv 16@3x3 -> max-pool 2 -> fc 120 ->
    fc 84 -> fc classes, ReLU after each hidden layer; 60,074 parameters on 28x28x1 inputs with 10 classes.
    Paganini & Forde train it with PyTorch's default initialization (``init="torch_default"``), SGD at lr 0.01,
    batch 32 (§3). The input must be at least 10x10 so that both convolutions and poolings leave one pixel.
    """
    return _two_conv_lenet(input_shape, (6, 16), 3, (120, 84), num_classes)
