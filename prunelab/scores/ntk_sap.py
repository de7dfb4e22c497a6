"""NTK-SAP: prune what least changes the spectrum of the neural tangent kernel (Wang et al. 2023).

Wang et al. (2023, §4) take the nuclear norm of the NTK ``Θ = J Jᵀ`` (its trace, ``Θ`` being positive
semi-definite) as the proxy of its spectrum, and estimate the trace without any Jacobian by a finite
difference of the output under a random perturbation of the weights::

    E_{Δθ ~ N(0, ε² I)} ‖f(x; θ) − f(x; θ + Δθ)‖²  ≈  ε² · Σ_x tr Θ(x, x)

With the mask ``m`` as a multiplicative gate on the weights, the saliency of weight ``j`` is the
sensitivity of that estimate to its gate, at fresh random weights ``θ₀`` (the "multi-sampling"
formulation: the weights themselves are redrawn from the initialization, so the score is weight-agnostic)
and on Gaussian-noise inputs (data-agnostic)::

    S(m_j) = | ∂/∂m_j  Σ_{r=1..R}  Σ_x ‖f(x; θ₀⁽ʳ⁾ ⊙ m) − f(x; (θ₀⁽ʳ⁾ + Δθ⁽ʳ⁾) ⊙ m)‖² |,   x ~ N(0, I)

pruned iteratively over ``T`` rounds with the exponential schedule (20 in the authors' scripts), the weights
redrawn in every round. Like SynFlow it needs no data, only ``input_shape``.

Where this follows the authors' code (github.com/YiteWang/NTK-SAP, ``Pruners/pruners.py``) rather than the
text: ``ε`` is the standard deviation of the perturbation (``θ + ε·N(0, 1)``; default 0.01); BatchNorm
normalizes both networks with the statistics of the unperturbed one on the noise batch (a train-mode pass,
then eval mode), and every other module is in eval mode. Differences: the code redraws *every* parameter
with the model's own initializer; here only the weights the mask covers are redrawn (``init``, by default
the initializer the model was created with, else Kaiming normal with fan-in as in the code), and biases and
normalization parameters keep the caller's values (their initial values, when pruning at initialization).
One noise batch of ``noise_batch_size`` examples is drawn per sample (the code draws one per batch of its
pruning loader: 100 noise images for CIFAR-10).

``R`` (``weight_samples``), the number of weight draws per round: the authors' CIFAR-10 script
(``scripts/run.sh``) runs ``--ntksap_R 5``, while their code's default is 1. prunelab's default is 1, the
code's (runs at the default keep their ids); to match the script, set ``weight_samples=5``
(``prunelab.prune(..., weight_samples=5)``, or ``--method-options weight_samples=5`` in a run's settings), at
five times the cost per round.

Random draws, all from one CPU generator seeded with ``seed`` that advances over the rounds of one
:func:`prunelab.prune` call, in this order for each of the ``R`` samples: ``θ₀`` for every covered tensor
of two or more dimensions (in the mask's order, by the initializer), then ``Δθ = ε · randn`` for every
covered tensor (same order), then the noise batch ``randn(noise_batch_size, *input_shape)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from prunelab.batches import logits, model_device, model_dtype
from prunelab.masks import Mask
from prunelab.scores.isolation import eval_mode
from prunelab.scores.registry import Scores, register_method
from prunelab.validate import check_input_shape, check_int, check_name, check_seed

DEFAULT_EPSILON = 0.01  # the authors' code (--ntksap_epsilon)
DEFAULT_ITERATIONS = 20  # the authors' scripts (--prune-epochs 20)


def _check_epsilon(epsilon) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (
        math.isfinite(epsilon) and epsilon > 0
    ):
        raise ValueError(f"epsilon must be a positive number, the standard deviation of the weight perturbation "
                         f"(0.01 in Wang et al. 2023); got {epsilon!r}")
    return float(epsilon)


OWN_INIT = "model"  # init=OWN_INIT: the initializer the model was created with


def _initializer(model: nn.Module, init: str) -> tuple[str, str]:
    """(initializer name, fan mode): ``init``, or for ``"model"`` the model's own (``prunelab_init``), else
    Kaiming normal (the authors' code)."""
    from prunelab.models.initializers import INITIALIZERS

    own = getattr(model, "prunelab_init", None) or {}
    name = own.get("init", "kaiming_normal") if init == OWN_INIT else init
    if name not in INITIALIZERS:
        check_name("init", init, [OWN_INIT, *INITIALIZERS.names()])
    return name, own.get("mode", "fan_in")


def _batch_statistics(model: nn.Module, tensors: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fresh BatchNorm buffers holding the statistics of ``model`` (with ``tensors``) on ``x``: the authors'
    reset, a train-mode pass with momentum 1, then eval mode. The model's own buffers are not touched."""
    norms = {n: m for n, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    if not norms:
        return buffers
    for name in norms:
        prefix = f"{name}." if name else ""
        buffers[f"{prefix}running_mean"].zero_()
        buffers[f"{prefix}running_var"].fill_(1.0)
    saved = [(m, m.momentum) for m in norms.values()]
    try:
        for m, _ in saved:
            m.momentum = 1.0
            m.train(True)
        with torch.no_grad():
            functional_call(model, {**buffers, **tensors}, (x,), strict=False)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.train(False)
    return buffers


class NTKSAPScorer:
    """Scores one model over the rounds of one :func:`prunelab.prune` call; the generator advances across
    rounds, so every round sees new weights, perturbations and noise (Wang et al. 2023, §4, multi-sampling)."""

    def __init__(self, model: nn.Module, input_shape, epsilon, weight_samples, noise_batch_size, init, seed):
        from prunelab.models.initializers import INITIALIZERS

        self.model = model
        self.input_shape = check_input_shape(input_shape, "ntk_sap")
        self.epsilon = _check_epsilon(epsilon)
        self.samples = check_int(weight_samples, "weight_samples", 1, "R, random weight draws per round")
        self.batch_size = check_int(noise_batch_size, "noise_batch_size", 1, "Gaussian-noise inputs per draw")
        init_name, self.mode = _initializer(model, init)
        self.draw = INITIALIZERS.get(init_name)
        self.generator = torch.Generator().manual_seed(check_seed(seed))

    def _weights(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """θ₀: covered tensors of two or more dimensions drawn by the initializer, the others as they are."""
        return {n: self.draw(p.shape, self.mode, self.generator) if p.dim() >= 2 else p.detach().cpu().clone()
                for n, p in params.items()}

    def __call__(self, mask: Mask) -> Scores:
        model = self.model
        params = mask.check_compatible(model)
        device, dtype = model_device(model), model_dtype(model) or torch.float32
        gates = {n: mask[n].to(device, dtype).requires_grad_(True) for n in params}
        total = {n: torch.zeros(p.shape, device=device, dtype=dtype) for n, p in params.items()}
        with eval_mode(model):
            for _ in range(self.samples):
                theta = self._weights(params)
                delta = {n: torch.randn(p.shape, generator=self.generator) * self.epsilon for n, p in params.items()}
                x = torch.randn((self.batch_size, *self.input_shape), generator=self.generator).to(device, dtype)
                theta = {n: t.to(device, dtype) for n, t in theta.items()}
                moved = {n: (theta[n] + delta[n].to(device, dtype)) for n in params}
                buffers = _batch_statistics(model, {n: theta[n] * mask[n].to(device, dtype) for n in params}, x)
                out = self._forward(buffers, {n: theta[n] * gates[n] for n in params}, x)
                out_moved = self._forward(buffers, {n: moved[n] * gates[n] for n in params}, x)
                difference = (out - out_moved).pow(2).sum()
                grads = torch.autograd.grad(difference, list(gates.values()), allow_unused=True)
                for n, g in zip(gates, grads):
                    if g is not None:
                        total[n].add_(g)
        # |dS/dm| at the kept weights; a pruned weight's gate is 0 and so is its score (the code's m.grad * (m != 0))
        return Scores({n: total[n].abs_().mul_(mask[n].to(device, dtype)) for n in params})

    def _forward(self, buffers: dict, weights: dict, x: torch.Tensor) -> torch.Tensor:
        try:
            return logits(functional_call(self.model, {**buffers, **weights}, (x,), strict=False))
        except (RuntimeError, IndexError, TypeError, AttributeError, ValueError) as e:
            from prunelab.scores.synflow import failing_module

            where = failing_module(self.model, x)
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(
                f"ntk_sap feeds Gaussian noise of shape {tuple(x.shape)} and {where} cannot take it ({reason}); "
                "NTK-SAP needs a network whose input is a tensor of numbers of shape (batch, *input_shape)"
            ) from e


def _prepare(model, batch=None, *, input_shape=None, epsilon=DEFAULT_EPSILON, weight_samples=1,
             noise_batch_size=100, init=OWN_INIT, seed=0) -> NTKSAPScorer:
    return NTKSAPScorer(model, input_shape, epsilon, weight_samples, noise_batch_size, init, seed)


@register_method(
    "ntk_sap",
    needs_data=False,
    needs_input_shape=True,
    default_iterations=DEFAULT_ITERATIONS,
    description="|d/dm of ||f(x; w*m) - f(x; (w+dw)*m)||^2| at redrawn weights on noise (Wang et al. 2023)",
    prepare=_prepare,
    family="init_data_free",
    year=2023,
)
def ntk_sap(
    model,
    mask,
    batch=None,
    *,
    input_shape=None,
    epsilon: float = DEFAULT_EPSILON,
    weight_samples: int = 1,
    noise_batch_size: int = 100,
    init: str = OWN_INIT,
    seed: int = 0,
) -> Scores:
    """NTK-SAP's saliency (Wang et al. 2023, §4): the sensitivity to each weight's gate of the finite-difference
    estimate of the NTK trace, ``Σ_x ‖f(x; θ₀ ⊙ m) − f(x; (θ₀ + Δθ) ⊙ m)‖²``.

    ``θ₀`` is redrawn from the initializer ``init`` (default ``"model"``: the one the model was created with, else
    Kaiming normal) for each of ``weight_samples`` (R) samples (default 1, the code's; the authors' CIFAR-10 script
    uses 5), ``Δθ = epsilon · N(0, 1)`` and ``x ~ N(0, I)`` of shape ``(noise_batch_size, *input_shape)``; no data:
    ``batch`` is ignored. Iterated over 20 rounds by default with the exponential schedule (the authors' scripts).
    See the module docstring for the draw order.
    """
    return _prepare(model, batch, input_shape=input_shape, epsilon=epsilon, weight_samples=weight_samples,
                    noise_batch_size=noise_batch_size, init=init, seed=seed)(mask)
