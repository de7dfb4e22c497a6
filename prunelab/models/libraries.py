"""Models of other libraries by name: ``timm:NAME`` and ``torchvision:NAME``, pruned as they are.

``prunelab.models.create("timm:resnet10t", num_classes=10, input_shape=(1, 28, 28))`` builds the library's
model with random weights for a dataset's input shape and classes, using the library's own mechanisms:

``timm``  (``pip install prunelab[timm]``)
    ``timm.create_model(NAME, pretrained=False, num_classes=..., in_chans=C, **options)``. Models with a
    fixed image size (ViT, DeiT, Swin, ...) also get ``img_size=(H, W)``, timm's own option, when their
    class takes it; one that still cannot take the input stops with a one-line ``ValueError``.
``torchvision``  (a dependency)
    ``torchvision.models.get_model(NAME, weights=None, num_classes=..., **options)``, with
    ``image_size=H`` for square images when the model takes it (its ViTs). torchvision has no
    input-channel option, so for ``C != 3`` the first ``nn.Conv2d`` (the stem) is replaced by one of the
    same kernel, stride, padding and bias taking ``C`` channels, whose kernel is the first ``C`` input
    channels of torchvision's initialized one (so its entries are draws of torchvision's own init; under a
    fan-in init their variance is that of the 3-channel stem). A model whose first layer is not a
    convolution (torchvision's ViT: ``conv_proj`` is one; a model taking no images is not) stops with a
    one-line error.

Initialization: these models keep their library's initialization (Issue 28: "pruned as they are"), drawn
under the global RNG seeded with ``create``'s ``seed`` (so the same seed gives the same bits); prunelab's
initializers are applied only when ``create`` is given another ``init``, ``init_mode`` or ``bn_init`` than
its defaults. A prefix is a registry entry (:data:`LIBRARIES`); its library is imported only when a model
of it is built or its names are listed, so configs and light commands never import timm.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunelab.registry import Registry
from prunelab.validate import closest

__all__ = ["LIBRARIES", "Library", "library_of", "split_name"]

SEPARATOR = ":"


@dataclass(frozen=True)
class Library:
    """How to list and build the models of one library.

    ``module``: the library to import; ``extra``: the prunelab extra that installs it (None: a dependency);
    ``list_models(module) -> names``; ``build(module, arch, num_classes, input_shape, options) -> nn.Module``;
    ``lister``: the library's own call that lists its names, for messages.
    """

    module: str
    extra: str | None
    list_models: Callable[[object], list[str]]
    build: Callable[..., nn.Module]
    lister: str

    def load(self):
        try:
            return importlib.import_module(self.module)
        except ImportError:
            how = f"pip install prunelab[{self.extra}]" if self.extra else f"pip install {self.module}"
            raise ValueError(f"{self.module} models need {self.module}: {how}") from None

    def check(self, prefix: str, arch: str) -> None:
        """ValueError with the closest name the library knows unless it knows ``arch``."""
        names = self.list_models(self.load())
        if arch not in names:
            near = closest(arch, names)
            hint = f"; did you mean '{prefix}{SEPARATOR}{near}'?" if near else ""
            raise ValueError(f"unknown {prefix} model {arch!r}{hint} ({self.lister} lists its {len(names)} models)")


LIBRARIES: Registry[Library] = Registry("model library")


def split_name(name: str) -> tuple[str, str] | None:
    """``("timm", "resnet10t")`` for ``"timm:resnet10t"``; None for a name without a library prefix."""
    prefix, sep, arch = name.partition(SEPARATOR)
    return (prefix, arch) if sep else None


def library_of(name: str) -> tuple[Library, str, str]:
    """(library, prefix, architecture) of a prefixed name, the prefix and the architecture checked."""
    prefix, arch = split_name(name)
    if prefix not in LIBRARIES:
        from prunelab.validate import unknown_name_message

        raise ValueError(unknown_name_message("model library", prefix, LIBRARIES.names())
                         + f"; write <library>{SEPARATOR}<model>, e.g. timm{SEPARATOR}resnet10t")
    library = LIBRARIES.get(prefix)
    if not arch:
        raise ValueError(f"model {name!r} names no {prefix} model: write {prefix}{SEPARATOR}<model>")
    library.check(prefix, arch)
    return library, prefix, arch


# ---- timm ---------------------------------------------------------------------------------------

def _timm_build(timm, arch: str, num_classes: int, input_shape: tuple[int, int, int], options: dict) -> nn.Module:
    channels, height, width = input_shape
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": channels, **options}
    return _sized(timm.create_model, arch, kwargs, "img_size", (height, width))


def _sized(build: Callable[..., nn.Module], arch: str, kwargs: dict, option: str, size) -> nn.Module:
    """``build(arch, **kwargs)`` with the library's image-size ``option`` set to the data's ``size`` when the
    model takes it (a model with a fixed image size: ViT, Swin, ...) and the caller did not set it."""
    if option in kwargs:
        return build(arch, **kwargs)
    try:
        return build(arch, **{option: size}, **kwargs)
    except TypeError as e:
        if option not in str(e):
            raise
    return build(arch, **kwargs)


LIBRARIES.register("timm", paper="Wightman 2019, PyTorch Image Models (timm)")(
    Library("timm", "timm", lambda timm: timm.list_models(), _timm_build, "timm.list_models()"))


# ---- torchvision --------------------------------------------------------------------------------

def _torchvision_build(torchvision, arch: str, num_classes: int, input_shape: tuple[int, int, int],
                       options: dict) -> nn.Module:
    kwargs = {"weights": None, "num_classes": num_classes, **options}
    _, height, width = input_shape
    if height == width:  # torchvision's ViT takes one image_size
        model = _sized(torchvision.models.get_model, arch, kwargs, "image_size", height)
    else:
        model = torchvision.models.get_model(arch, **kwargs)
    if input_shape[0] != 3:
        _adapt_stem(model, arch, input_shape[0])
    return model


@torch.no_grad()
def _adapt_stem(model: nn.Module, arch: str, channels: int) -> None:
    """Replace the first ``nn.Conv2d`` (3 input channels) by one taking ``channels``, keeping the first
    ``channels`` input channels of its kernel (repeated when ``channels > 3``)."""
    found = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None or found[1].in_channels != 3 or found[1].groups != 1:
        raise ValueError(f"torchvision:{arch} has no 3-channel first convolution to adapt to {channels}-channel "
                         "inputs; use a dataset with 3 channels or a timm model (in_chans)")
    name, old = found
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    bias=old.bias is not None, padding_mode=old.padding_mode,
                    device=old.weight.device, dtype=old.weight.dtype)
    index = torch.arange(channels) % 3
    new.weight.copy_(old.weight[:, index])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    owner, _, local = name.rpartition(".")
    setattr(model.get_submodule(owner), local, new)


LIBRARIES.register("torchvision", paper="TorchVision maintainers 2016, torchvision models")(
    Library("torchvision", None, lambda tv: tv.models.list_models(), _torchvision_build,
            "torchvision.models.list_models()"))
