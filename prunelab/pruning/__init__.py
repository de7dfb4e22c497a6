"""Pruning = score + remove, one shot or iterated (Frankle et al. 2021, §3; Tanaka et al. 2020, Alg. 1).

:func:`score` asks a registered criterion (see :mod:`prunelab.scores`) for ``{name: scores}``;
:func:`remove` turns scores into a :class:`~prunelab.masks.Mask`; :func:`prune` iterates the two
along a density schedule. Nothing here knows about datasets, training or the run store: any
``nn.Module`` and a batch of tensors will do.

Ranking rules shared by every path (each has a test):

* Already-pruned weights rank as pruned first: ``remove`` never revives a weight.
* Exactly ``round(sparsity * n)`` weights are pruned (halves round up), over all covered weights
  (``scope="global"``) or in each tensor (``scope="layer"``). Structured criteria remove whole
  channels, as many as bring the count nearest to that number, but never a tensor's last live
  channel (a warning says when that keeps the count short); ``mask.sparsity`` is the achieved value.
* Ties in score are broken by position: the weight that comes first (in ``named_parameters`` order,
  then in flattened order) is pruned first, whichever direction is pruned.
* ``invert=True`` prunes the other end of the same ranking (the inversion ablation, Frankle et al.
  2021, §5). It uses ranks, never ``1/score``, which is wrong for GraSP's negative scores and infinite at 0.

Selecting the k-th score never concatenates and sorts all scores: a seeded sample brackets the
threshold, one counting pass over the tensors (in chunks) confirms the bracket and collects the few
scores inside it, and ``torch.kthvalue`` on those finds the exact threshold. A bracket holding more
than ``_CAP`` scores is narrowed by sampling inside it, never widened, so extra memory stays a
fraction of the scores' size, and the cost is a few passes over memory (see ``bench/pruning_speed.py``).

The package: :mod:`~prunelab.pruning.targets` (how much to prune, schedules),
:mod:`~prunelab.pruning.selection` (the k-th score without a full sort),
:mod:`~prunelab.pruning.removal` (scores to masks, never reviving) and :mod:`~prunelab.pruning.api`
(``score`` and ``prune``).
"""

from prunelab.pruning.api import (
    COMMON_OPTIONS,
    PRUNABLE_OPTIONS,
    LayerCollapseWarning,
    prune,
    score,
    uniform_attention,
)
from prunelab.pruning.removal import remove
from prunelab.pruning.targets import density_schedule, num_to_prune
from prunelab.validate import SCHEDULES, SCOPES

__all__ = [
    "COMMON_OPTIONS",
    "PRUNABLE_OPTIONS",
    "SCHEDULES",
    "SCOPES",
    "LayerCollapseWarning",
    "uniform_attention",
    "density_schedule",
    "num_to_prune",
    "prune",
    "remove",
    "score",
]
