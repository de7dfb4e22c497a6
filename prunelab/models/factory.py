"""``create(name, ...)``: build a registered model for a dataset's input shape and initialize it by seed."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from prunelab.models import convnets, lenet, resnet_cifar, resnet_imagenet, sequence, vgg  # noqa: F401 - registers
from prunelab.models.initializers import check_init_options, initialize
from prunelab.models.libraries import SEPARATOR, library_of, split_name
from prunelab.models.registry import MODELS, ModelFactory
from prunelab.models.resnet_cifar import WIDE_RESNET_PATTERN, parse_wide_resnet_name, wide_resnet
from prunelab.registry import unknown_name_message
from prunelab.validate import check_seed


def create(
    name: str,
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    init: str = "kaiming_normal",
    init_mode: str = "fan_in",
    bn_init: str = "uniform",
    seed: int = 0,
    **options,
) -> nn.Module:
    """The model ``name`` for inputs of shape ``(channels, height, width)``, initialized from ``seed``.

    ``init``, ``init_mode`` and ``bn_init`` are passed to :func:`prunelab.models.initialize` as ``init``,
    ``mode`` and ``bn_init``; the defaults (Kaiming normal on the fan-in, BatchNorm gamma ~ U(0, 1)) are
    those of Frankle et al. (2021, App. A.3 and D.3). ``options`` go to the model's factory (e.g.
    ``width`` for the CIFAR ResNets). Names are those of :func:`prunelab.models.names`, plus any
    ``wrn_<depth>_<k>``, plus ``timm:NAME`` and ``torchvision:NAME``: those libraries' models, adapted to the
    input channels and classes by the libraries' own options and kept at the libraries' own initialization
    unless another ``init``, ``init_mode`` or ``bn_init`` is given (:mod:`prunelab.models.libraries`); they
    carry no ``prunelab_init`` then.

    The same seed gives bitwise-identical weights on the CPU, and the global RNG is left as it was. The
    result carries ``model.prunelab_init = {"init", "mode", "bn_init"}``, so that
    ``initialize(model, **model.prunelab_init, seed=s)`` re-draws it from the same distribution; a library's
    model at its library's initialization carries ``model.prunelab_rebuild`` instead (``create(**it, seed=s)``).

    Errors a user can make -- an unknown name, option or initializer, ``num_classes < 1``, an input
    shape the model cannot take -- raise ``ValueError`` before anything large is built.
    """
    factory, meta = _resolve(name)
    num_classes = _check_num_classes(num_classes)
    input_shape = _check_input_shape(input_shape)
    check_init_options(init, init_mode, bn_init)
    seed = check_seed(seed)
    _check_options(name, factory, options)
    min_hw = meta.get("min_hw", 1)
    if min(input_shape[1:]) < min_hw:
        raise ValueError(
            f"model {name!r} needs inputs of at least {min_hw}x{min_hw} pixels, got input_shape {input_shape}"
        )

    # Seed the global RNG while building (restored afterwards) so that layers initialize() does not
    # know, in a user's registered factory, are reproducible too.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = _build(name, factory, num_classes, input_shape, options)
    _check_forward(name, model, num_classes, input_shape)
    if meta.get("library") and (init, init_mode, bn_init) == _DEFAULT_INIT:
        # pruned as the library initializes it; re-drawn (the reinit ablation) by building it again
        model.prunelab_rebuild = {"name": name, "num_classes": num_classes, "input_shape": input_shape, **options}
        return model
    initialize(model, init, mode=init_mode, bn_init=bn_init, seed=seed)
    model.prunelab_init = {"init": init, "mode": init_mode, "bn_init": bn_init}
    return model


_DEFAULT_INIT = ("kaiming_normal", "fan_in", "uniform")  # create()'s defaults


def _build(name: str, factory: ModelFactory, num_classes: int, input_shape: tuple[int, int, int],
           options: dict) -> nn.Module:
    """``factory(num_classes, input_shape, **options)``; a library model's own refusal (an option it does not
    take, a shape its constructor asserts against) as a one-line ValueError."""
    try:
        return factory(num_classes, input_shape, **options)
    except (TypeError, AssertionError, RuntimeError) as e:
        if split_name(name) is None:
            raise
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = _shape_hint(name) if isinstance(e, AssertionError) else ""
        raise ValueError(f"model {name!r} cannot be built for {num_classes} classes and inputs of shape "
                         f"{input_shape}: {reason}{hint}") from e


def _resolve(name: str) -> tuple[ModelFactory, dict]:
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if name in MODELS:
        return MODELS.get(name), MODELS.meta(name)
    parsed = parse_wide_resnet_name(name)
    if parsed is not None:
        return wide_resnet(*parsed), {"min_hw": 1}
    if split_name(name) is not None:
        library, prefix, arch = library_of(name)
        module = library.load()

        def factory(num_classes, input_shape, **options):
            return library.build(module, arch, num_classes, input_shape, options)

        return factory, {"min_hw": 1, "library": prefix}
    raise ValueError(f"{unknown_name_message('model', name, MODELS.names())}, or {WIDE_RESNET_PATTERN}, "
                     f"or timm{SEPARATOR}NAME, torchvision{SEPARATOR}NAME")


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            "input_shape must be (channels, height, width) of positive integers, e.g. (1, 28, 28), "
            f"got {input_shape!r}"
        )
    return shape  # type: ignore[return-value]


def _check_options(name: str, factory: ModelFactory, options: dict) -> None:
    params = list(inspect.signature(factory).parameters.values())[2:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise ValueError(f"model {name!r} has no option {unknown[0]!r} (its options: {valid})")


def _check_forward(name: str, model: nn.Module, num_classes: int, input_shape: tuple[int, int, int]) -> None:
    """Run the model once on an input of ``(1, *input_shape)``; ValueError if that fails.

    The pass runs on the ``meta`` device (shapes only, no arithmetic), so it costs next to nothing even
    for ResNet-50; a model using an operation without a meta implementation is run on real zeros.
    """
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                meta_tensors = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
                x = torch.zeros((1, *input_shape), device="meta")
                out = torch.func.functional_call(model, meta_tensors, (x,))
            except NotImplementedError:
                device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
                out = model(torch.zeros((1, *input_shape), device=device))
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:  # AssertionError: timm's shape checks
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"model {name!r} cannot take inputs of shape {input_shape} (channels, height, width): {reason}"
            f"{_shape_hint(name)}"
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {name!r} returned {shape} for one input, expected (1, {num_classes})")


def _shape_hint(name: str) -> str:
    """What to do when a library model cannot take the data's images."""
    parsed = split_name(name)
    if parsed is None:
        return ""
    return ("; choose a model that downsamples less or has a smaller patch (e.g. timm:resnet10t, "
            "torchvision:resnet18), or a dataset with larger images")
