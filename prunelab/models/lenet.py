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


@register("lenet5", paper="Lee et al. 2019, §5.1 (SNIP's LeNet-5-Caffe)", min_hw=16)
def lenet5(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """LeNet-5-Caffe as used by SNIP (Lee et al. 2019, §5.1, Table 1): two convolutions, two fc layers.

    conv 20@5x5 (no padding) -> max-pool 2 -> conv 50@5x5 -> max-pool 2 -> fc 500 -> fc classes, with
    ReLU after each hidden layer: 431,080 parameters on 28x28x1 inputs ("431k" in the paper). The input
    must be at least 16x16 so that two 5x5 convolutions and two poolings leave one pixel.
    """
    channels, height, width = input_shape

    def after_conv_pool(size: int) -> int:
        return (size - 4) // 2

    flat = 50 * after_conv_pool(after_conv_pool(height)) * after_conv_pool(after_conv_pool(width))
    return nn.Sequential(
        nn.Conv2d(channels, 20, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


@register("lenet_pf", paper="Paganini & Forde 2020, §4, Fig. 5 (their LeNet)", min_hw=10)
def lenet_pf(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The LeNet of Paganini & Forde 2020 (Fig. 5: a second convolution of 6 input and 16 output channels with 3x3
    filters), as in PyTorch's pruning tutorial: conv 6@3x3 -> max-pool 2 -> conv 16@3x3 -> max-pool 2 -> fc 120 ->
    fc 84 -> fc classes, ReLU after each hidden layer; 60,074 parameters on 28x28x1 inputs with 10 classes.
    Paganini & Forde train it with PyTorch's default initialization (``init="torch_default"``), SGD at lr 0.01,
    batch 32 (§3). The input must be at least 10x10 so that both convolutions and poolings leave one pixel.
    """
    channels, height, width = input_shape

    def after_conv_pool(size: int) -> int:
        return (size - 2) // 2

    flat = 16 * after_conv_pool(after_conv_pool(height)) * after_conv_pool(after_conv_pool(width))
    return nn.Sequential(
        nn.Conv2d(channels, 6, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
