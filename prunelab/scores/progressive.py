"""Progressive skeletonization (de Jorge et al. 2021): FORCE and their Iterative SNIP.

Both prune over ``T`` steps along the exponential schedule ``k_t = exp(a log k + (1 - a) log m)``, ``a = t/T``
(``m`` weights, ``k`` kept at the end: prunelab's ``schedule="exponential"``, :func:`prunelab.density_schedule`),
re-scoring the network pruned so far with the connection sensitivity ``|theta * dL/d(theta * c)|`` at the current
mask ``c`` (de Jorge et al. 2021, §3).

* ``force`` scores *every* weight, pruned ones included, by ``|theta * g|`` with ``g = dL/dw`` at
  ``w = theta * c`` (the gradient does reach a zeroed weight) and ``theta`` the weight at initialization; each
  step keeps the top ``k_t`` of all of them, so a weight pruned at one step may come back at a later one
  (registered with ``revives=True``; :func:`prunelab.prune` then ranks everything the starting mask keeps).
* ``iter_snip_dejorge`` scores ``|theta * c * g|``, zero for pruned weights, and removal is permanent.

How ``iter_snip_dejorge`` differs from prunelab's ``iterative_snip`` (Frankle et al. 2021, App. G): not in the
score, the removal or the schedule, which are the same (Frankle et al. 2021 replicate de Jorge et al.'s
procedure), but in the default number of steps, 60 here against Frankle et al.'s 100. ``force`` differs from
both in reviving. ``T = 60`` comes from the example commands of the authors' README (github.com/naver/force,
``README.md``: ``--num_steps 60`` for CIFAR/Tiny-ImageNet and for ImageNet), not from the paper (whose own
``T`` we could not confirm) nor from the code's default (``--num_steps`` 10 in
``train_cifar_tiny_imagenet.py``); set another with ``iterations`` (``prunelab.prune(..., iterations=10)``,
``--iterations`` in a run's settings).

Where both differ from the authors' code (github.com/naver/force): that code draws a fresh mini-batch from the
training loader at every step; here every step scores the one batch given to :func:`prunelab.prune`, as every
prunelab criterion does (pass a larger batch, or a list of batches, for a less noisy gradient). Its selection
keeps every weight tied with the ``k_t``-th score (possibly more than ``k_t``); prunelab keeps exactly ``k_t``
and breaks ties by its own rule.
"""

from __future__ import annotations

from collections.abc import Callable

from prunelab.scores.gradient import loss_gradients, snip
from prunelab.scores.registry import Scores, register_method

STEPS = 60  # the authors' README example commands (github.com/naver/force, README.md): --num_steps 60;
# the code's own default is --num_steps 10


@register_method(
    "force",
    needs_data=True,
    default_iterations=STEPS,
    revives=True,
    family="init_data",
    year=2021,
    description="|w * dL/dw| at the pruned network, pruned weights too: they can come back (de Jorge et al. 2021)",
)
def force(
    model,
    mask,
    batch,
    *,
    loss_fn: Callable | None = None,
    batchnorm_train: bool = True,
    score_batch_size: int | None = None,
    distributed: bool = False,
) -> Scores:
    """FORCE's foresight connection sensitivity of every weight: ``|theta * dL/dw|`` at ``w = theta * c``.

    ``theta``: the model's (unmasked) weights; ``c``: ``mask``. The gradient is that of the pruned network
    (pruned weights are zero in the forward pass, de Jorge et al. 2021, §3) at every position, pruned ones
    included, and it multiplies ``theta`` rather than ``theta * c``: a pruned weight that would matter in the
    pruned network scores high and is kept again at the next step (progressive skeletonization with
    resurrection; :func:`prunelab.prune` re-ranks all weights at every step since this criterion is registered
    with ``revives=True``). On a dense mask this is SNIP's score. Options as for :func:`~prunelab.scores.gradient.snip`.
    """
    grads = loss_gradients(model, mask, batch, loss_fn=loss_fn, batchnorm_train=batchnorm_train,
                           score_batch_size=score_batch_size, distributed=distributed)
    params = mask.check_compatible(model)
    return Scores({n: g.mul_(params[n].detach().to(g.device)).abs_() for n, g in grads.items()})


# The same score function as snip and iterative_snip, registered with de Jorge et al.'s number of steps.
register_method(
    "iter_snip_dejorge",
    needs_data=True,
    default_iterations=STEPS,
    family="init_data",
    year=2021,
    description="SNIP |dL/dw * w| re-scored over 60 steps, removal permanent (de Jorge et al. 2021)",
)(snip)
