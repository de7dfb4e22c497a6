"""The model registry: one name -> one factory ``fn(num_classes, input_shape, **options) -> nn.Module``.

One registry and plain ``nn.Module`` results, as in timm's ``create_model``. The metadata stored with
each name says where the architecture comes from (``paper``) and the smallest input height/width it
accepts (``min_hw``), so that :func:`prunelab.models.create` can reject an input shape with a clear
message before building anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunelab.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")


def register(name: str, **meta: Any) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers ``fn(num_classes, input_shape, **options) -> nn.Module`` under ``name``.

    ``input_shape`` is ``(channels, height, width)``. Useful metadata keys: ``paper`` (the source of
    the architecture) and ``min_hw`` (the smallest height and width the model's forward accepts).
    """
    return MODELS.register(name, **meta)


def names() -> list[str]:
    """The registered model names, in registration order (families stay together).

    Wide ResNets are not listed one by one: :func:`prunelab.models.create` accepts any name of the form
    ``wrn_<depth>_<k>`` (see :mod:`prunelab.models.resnet_cifar`).
    """
    return MODELS.names()
