"""Weight initializers, drawn from an explicit ``torch.Generator``.

Frankle et al. (2021, App. A.3, "Pruning Neural Networks at Initialization: Why Are We Missing the
Mark?") initialize every network with Kaiming (He) normal based on the fan-in and BatchNorm ``gamma``
uniform in [0, 1) -- the PyTorch defaults of the time (App. D.3); Tanaka et al. (2020, SynFlow) use fan-out
and ``gamma = 1``, a difference App. D.3 suggests may matter when pruning at initialization, so both
are options here. ``standard_normal`` draws every conv/linear weight from N(0, 1): the fixed-variance
ablation of §5, under which magnitude pruning at initialization loses its per-layer information.

Lee et al. (2019, §5.5, Table 3, SNIP) prune at four initializations: RN (random normal:
``standard_normal``), TN (truncated random normal: ``truncated_normal``), VS-X (variance scaling after
Glorot & Bengio 2010: ``xavier_normal``) and VS-H (variance scaling after He et al. 2015:
``kaiming_normal``). Neither their paper nor their released TensorFlow code (which knows only
``tf.variance_scaling_initializer()``) gives the standard deviations of RN and TN; here they are TensorFlow
1's defaults, ``tf.random_normal_initializer()`` and ``tf.truncated_normal_initializer()``: standard
deviation 1, TN redrawn beyond 2. (TensorFlow 1's variance scaling draws truncated normals too; VS-X and
VS-H here are the untruncated ones.)

Every value is drawn on the CPU from the given generator and then copied into the parameter, so the
same seed gives the same bits whatever device or dtype the model lives on, and the global RNG is never
touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from prunelab.layer_rules import layer_rule
from prunelab.registry import Registry, check_name
from prunelab.validate import check_seed

FAN_MODES = ["fan_in", "fan_out"]
BN_INITS = ["uniform", "ones"]

# (shape, fan mode, generator) -> float32 CPU tensor of that shape.
Initializer = Callable[[torch.Size, str, torch.Generator], torch.Tensor]

INITIALIZERS: Registry[Initializer] = Registry("initializer")

_RELU_GAIN = math.sqrt(2.0)  # He et al. (2015): variance 2/fan keeps ReLU activations' scale


def fans(shape: torch.Size) -> tuple[int, int]:
    """(fan_in, fan_out) of a conv or linear weight of this shape (grouped convs: per group, as PyTorch)."""
    if len(shape) < 2:
        raise ValueError(f"fan-in/fan-out need a weight with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _normal(shape: torch.Size, std: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, std, generator=generator)


def _uniform(shape: torch.Size, bound: float, generator: torch.Generator) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


@INITIALIZERS.register("kaiming_normal")
def kaiming_normal(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """N(0, 2 / fan): He et al. (2015) with the ReLU gain; ``mode`` picks fan-in or fan-out. VS-H of Lee et al.
    (2019, §5.5) with fan-in."""
    fan = fans(shape)[FAN_MODES.index(mode)]
    return _normal(shape, _RELU_GAIN / math.sqrt(fan), generator)


@INITIALIZERS.register("kaiming_uniform")
def kaiming_uniform(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = sqrt(6 / fan), the same variance as :func:`kaiming_normal`.

    Not PyTorch's layer default (which uses ``a = sqrt(5)``, i.e. variance 1/(3 fan_in)).
    """
    fan = fans(shape)[FAN_MODES.index(mode)]
    return _uniform(shape, _RELU_GAIN * math.sqrt(3.0 / fan), generator)


@INITIALIZERS.register("xavier_normal")
def xavier_normal(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """N(0, 2 / (fan_in + fan_out)): Glorot & Bengio (2010), gain 1 (``mode`` does not apply). VS-X of Lee et al.
    (2019, §5.5), from which they train every pruned network of their Table 3."""
    fan_in, fan_out = fans(shape)
    return _normal(shape, math.sqrt(2.0 / (fan_in + fan_out)), generator)


@INITIALIZERS.register("xavier_uniform")
def xavier_uniform(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """U(-b, b) with b = sqrt(6 / (fan_in + fan_out)): Glorot & Bengio (2010), gain 1."""
    fan_in, fan_out = fans(shape)
    return _uniform(shape, math.sqrt(6.0 / (fan_in + fan_out)), generator)


def _torch_default_bound(weight_shape: torch.Size) -> float:
    """1 / sqrt(fan_in): the bound of PyTorch's default uniform draw of a layer's weight and bias."""
    return 1.0 / math.sqrt(fans(weight_shape)[0])


@INITIALIZERS.register("torch_default", random_bias=True)
def torch_default(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """PyTorch's own default for ``nn.Linear`` and ``nn.Conv*``: U(-b, b) with b = 1 / sqrt(fan_in)
    (``kaiming_uniform_`` with ``a = sqrt(5)``), and random biases from the same range (registered with
    ``random_bias=True``; every other initializer zeroes the biases). The initialization of Paganini & Forde
    2020's LeNet (``lenet_pf``); ``mode`` does not apply."""
    return _uniform(shape, _torch_default_bound(shape), generator)


@INITIALIZERS.register("standard_normal")
def standard_normal(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) for every weight: the fixed-variance ablation of Frankle et al. (2021, §5), and RN ("random
    normal", TensorFlow 1's ``tf.random_normal_initializer()``: standard deviation 1) of Lee et al. (2019,
    §5.5, Table 3). ``mode`` does not apply."""
    return _normal(shape, 1.0, generator)


TRUNCATION = 2.0  # in standard deviations: values beyond are redrawn (TensorFlow's truncated_normal)


@INITIALIZERS.register("truncated_normal")
def truncated_normal(shape: torch.Size, mode: str, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) redrawn outside [-2, 2] for every weight: TN ("truncated random normal") of Lee et al. (2019,
    §5.5, Table 3), TensorFlow 1's ``tf.truncated_normal_initializer()`` (standard deviation 1 before the
    truncation, about 0.88 after). ``mode`` does not apply."""
    return nn.init.trunc_normal_(torch.empty(shape), 0.0, 1.0, -TRUNCATION, TRUNCATION, generator=generator)


def check_init_options(init: str, mode: str, bn_init: str) -> None:
    """ValueError naming the closest valid choice for an unknown initializer, fan mode or BN init."""
    INITIALIZERS.get(init)
    check_name("fan mode", mode, FAN_MODES)
    check_name("BatchNorm init", bn_init, BN_INITS)


@torch.no_grad()
def initialize(
    model: nn.Module,
    init: str = "kaiming_normal",
    *,
    mode: str = "fan_in",
    bn_init: str = "uniform",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-draw the parameters of ``model``; returns ``model``.

    - The weights a mask covers by default (convolutions, linear and bilinear layers, attention
      projections, recurrent weights; see :mod:`prunelab.coverage`): the initializer ``init`` (one of
      :data:`INITIALIZERS`); ``mode`` (``"fan_in"`` or ``"fan_out"``) applies to the Kaiming
      initializers; their biases are set to 0, except under ``torch_default`` (PyTorch's layer default:
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn after the layer's weight).
    - BatchNorm: ``gamma`` ~ U(0, 1) (``bn_init="uniform"``, Frankle et al. 2021, App. D.3) or 1
      (``\"ones\"``, Tanaka et al. 2020); ``beta`` = 0; running statistics reset, as in a freshly built layer.
    - Any other module with parameters of its own (embeddings, LayerNorm, a user's layer) is reset
      by its own ``reset_parameters()``, under a global RNG seeded from the generator and restored
      after; so the reinitialization ablation re-draws every parameter, not only the convolutions.

    Values come from ``generator`` if given (a CPU generator), else from a new one seeded with
    ``seed``. Layers are visited in ``model.modules()`` order, so the same model and seed give the same
    bits. ``initialize(model, **model.prunelab_init, seed=s)`` re-draws a model made by
    :func:`prunelab.models.create` from its own initializer with another seed (the reinitialization
    ablation of §5).
    """
    check_init_options(init, mode, bn_init)
    draw = INITIALIZERS.get(init)
    random_bias = INITIALIZERS.meta(init).get("random_bias", False)
    if generator is None:
        generator = torch.Generator().manual_seed(check_seed(seed))
    reset_seed = None
    for module in model.modules():
        rule = layer_rule(module)
        if rule is not None and rule.role == "layer":
            bound = None  # of the biases, from the fan-in of the layer's weight (PyTorch's layer default)
            for name, p in module.named_parameters(recurse=False):
                if rule.is_weight(name):
                    p.copy_(draw(p.shape, mode, generator))
                    if random_bias and p.dim() >= 2:
                        bound = _torch_default_bound(p.shape)
                elif rule.is_bias(name):
                    if bound is None:
                        p.zero_()
                    else:
                        p.copy_(_uniform(p.shape, bound, generator))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.affine:
                if bn_init == "uniform":
                    module.weight.copy_(
                        torch.empty(module.weight.shape).uniform_(0.0, 1.0, generator=generator)
                    )
                else:
                    module.weight.fill_(1.0)
                module.bias.zero_()
            if module.track_running_stats:
                module.reset_running_stats()
        elif hasattr(module, "reset_parameters") and next(module.parameters(recurse=False), None) is not None:
            if reset_seed is None:  # drawn only when needed: models without such layers keep their bits
                reset_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(reset_seed)
                reset_seed += 1
                module.reset_parameters()
    return model
