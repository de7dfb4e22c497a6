"""Training cost of a run: FLOPs over its whole schedule and the area under its density curve.

Frankle et al. 2021 (Fig. 1, §7) compare methods that prune at different times by what training
costs them. A run's cost is a list of *segments*: a number of training steps at fixed layer
densities (``None`` = dense). Conventions (``docs/guide.md``, "Training cost"):

* One training step on a batch of B examples costs ``3 · B · F`` FLOPs, where ``F`` is the forward
  FLOPs of one example under the segment's layer densities (:func:`prunelab.flops`): the backward pass
  costs twice the forward (gradients with respect to activations and to weights), the convention of
  Evci et al. 2020 (App. H). Evaluation passes are not training and are not counted.
* RigL's update steps compute a dense gradient with an extra forward and backward pass:
  ``B · (2 F_sparse + F_dense)`` more FLOPs at each of them (Evci et al. 2020, App. H).
* ``train_flops`` counts the run's own steps; ``total_train_flops`` adds the training the run needs
  before it: the dense steps to the pruning step t (prune at t, magnitude after training), the dense
  run and every earlier level (lottery tickets, IMP).
* ``density_curve`` is ``[[step, density], ...]``: the overall density from each listed step on,
  over the cumulative steps of the whole protocol (dense pre-training included, so that Fig. 1 of
  Frankle et al. 2021 can be drawn from it), which end at ``protocol_steps``; ``density_auc`` is its
  mean over those steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prunelab.flops import FlopCount
from prunelab.masks import Mask


@dataclass(frozen=True)
class Segment:
    """``steps`` training steps at fixed layer densities (``None``: dense)."""

    steps: int
    layer_density: Mapping[str, float] | None = None
    density: float = 1.0  # the overall density (fraction of the mask's weights kept)
    extra_flops: float = 0.0  # FLOPs beyond 3 B F per step (RigL's dense gradients)


def masked(steps: int, mask: Mask, extra_flops: float = 0.0) -> Segment:
    return Segment(steps, mask.layer_density(), mask.density, extra_flops)


def forward_flops(count: FlopCount, layer_density: Mapping[str, float] | None) -> float:
    """Forward FLOPs of one example at the given layer densities (dense where None or not listed)."""
    if layer_density is None:
        return float(count.dense)
    return count.other + sum(dense * layer_density.get(n, 1.0) for n, (dense, _) in count.per_layer.items())


def account(count: FlopCount, batch_size: int, own: Sequence[Segment], before: Sequence[Segment] = ()) -> dict:
    """The cost fields of a run's ``result.json``: ``own`` segments are the run's training, ``before``
    the training it needs first (dense steps to t, the dense run, earlier IMP levels)."""

    def flops_of(segments: Sequence[Segment]) -> float:
        return sum(3 * batch_size * s.steps * forward_flops(count, s.layer_density) + s.extra_flops
                   for s in segments)

    own_flops = flops_of(own)
    trained = [s for s in own if s.steps > 0]  # the last of them holds the final mask
    curve, step, area = [], 0, 0.0
    for s in [*before, *own]:
        if s.steps == 0:
            continue
        if not curve or curve[-1][1] != s.density:
            curve.append([step, s.density])
        step += s.steps
        area += s.density * s.steps
    return {
        "dense_forward_flops": float(count.dense),
        "forward_flops": forward_flops(count, trained[-1].layer_density) if trained else float(count.dense),
        "train_flops": own_flops,
        "total_train_flops": own_flops + flops_of(before),
        "density_curve": curve,
        "protocol_steps": step,  # where the curve ends: the protocol's cumulative training steps
        "density_auc": area / step if step else 1.0,
    }
