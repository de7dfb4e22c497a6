"""The two naive baselines of Frankle et al. 2021, §3: random and magnitude scores."""

from __future__ import annotations

import torch

from prunelab.scores.registry import Scores, register_method


@register_method("random", needs_data=False, family="baseline", year=2021,
                 description="uniform random scores from the seed (Frankle et al. 2021, §3)")
def random(model, mask, batch=None, *, seed: int = 0) -> Scores:
    """Scores drawn uniformly from [0, 1) with a generator seeded by ``seed`` (Frankle et al. 2021, §3).

    Removing the lowest scores then prunes an exact number of weights chosen uniformly at random;
    it is never a Bernoulli draw per weight, whose count would vary. The draws are float64 on the
    CPU (ties are then practically impossible, and the same seed gives the same mask on any device).
    """
    gen = torch.Generator().manual_seed(int(seed))
    params = mask.check_compatible(model)
    return Scores({n: torch.rand(p.shape, generator=gen, dtype=torch.float64).to(p.device) for n, p in params.items()})


@register_method("magnitude", needs_data=False, family="after_training", year=2015,
                 description="|w| (Han et al. 2015; Frankle et al. 2021, §3)")
def magnitude(model, mask, batch=None) -> Scores:
    """``|w|`` (Frankle et al. 2021, §3; Han et al. 2015). Applied to trained weights this is magnitude
    pruning after training; applied at initialization it is the "magnitude at init" baseline."""
    params = mask.check_compatible(model)
    out = Scores()
    for n, p in params.items():
        s = p.detach().abs()
        keep = mask[n]
        out[n] = s if bool(keep.all()) else s * keep.to(s.device)
    return out
