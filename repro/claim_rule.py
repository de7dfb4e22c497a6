"""The one rule that turns a claim's numbers into its verdict (docs/results.md, "Claims and verdicts").

Pure arithmetic on numbers already read (no torch, no files), so that a test can feed it synthetic records. Its
sums are exact (``math.fsum``): the same numbers in another order (the run store lists runs in its file system's
order) give the same bits, and the committed tables regenerate byte for byte on any machine.

A claim makes one or more *predictions*, each of one kind (:data:`KINDS`):

- ``greater``: A > B (or A > a constant). The effect is the mean of A - B, paired by seed when A and B are paired
  runs (the same seeds, the same dense network); its 95% interval is Student's t over the seeds.
- ``equivalent``: |A - B| < delta. Holds when the whole 95% interval lies inside (-delta, delta); rejected when it
  lies wholly outside.
- ``trend``: a statistic grows (or falls) along an axis; the effect is each seed's least-squares slope, averaged
  over seeds, with its t interval.
- ``identity``: an exact quantity (no training, no seeds) equals a target within a tolerance.

Each prediction ends *holds*, *fails* (the opposite direction beyond noise, or an equivalence or identity the
numbers reject) or *undecided* (the interval contains no effect, or too few seeds). Then the claim:

- **reproduced**: every prediction holds, with >= 3 seeds where training is involved, and no part of the claim is
  left untested; **reproduced (analogue)** when the network or dataset is a substitute for the paper's;
- **partly**: some predictions hold and others fail, are undecided, or parts of the claim are untested (a claim
  holding on one network and failing on another is partly);
- **not reproduced**: no prediction holds and at least one fails;
- **inconclusive**: no prediction holds or fails.

A prediction whose runs are not (yet) in the run store is *not run* (no seeds, no interval): it counts as an untested
part of its claim (:data:`NOT_RUN_RULE`), so the claim can be at best partly reproduced until it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_SEEDS = 3  # a prediction about trained networks needs at least this many seeds to hold
LEVEL = 0.95

RULE = (
    "A prediction holds when its effect has the paper's direction and the 95% interval over seeds (Student's t, "
    "paired by seed where the runs are paired) excludes no effect, with at least 3 seeds where training is "
    "involved; an equivalence |A - B| < delta holds when the whole interval lies inside (-delta, delta); an exact "
    "identity (no training) holds within its stated tolerance. It fails when the interval lies wholly on the "
    "other side (the opposite direction beyond noise, an equivalence or identity the numbers reject), and is "
    "undecided otherwise. A claim is **reproduced** when every prediction holds and no part is untested "
    "(**reproduced (analogue)** on a substitute network or dataset), **partly** when some hold and others fail, "
    "are undecided or untested, **not reproduced** when none holds and one fails, **inconclusive** when none "
    "holds or fails. Standard deviations are sample ones (ddof 1)."
)

# Said after RULE above a table in which a prediction is not run (the claims table has none: its text is RULE alone).
NOT_RUN_RULE = ("A prediction whose runs are not yet in the run store is *not run* (n=0) and counts as an untested "
                "part of its claim.")

# Two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1..30 (standard tables; the test recomputes
# them by integrating the density). Beyond 30 degrees of freedom the normal quantile is used.
_T975 = [12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272]
_Z975 = 1.959964


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def sample_sd(values: list[float]) -> float:
    """Sample standard deviation (ddof 1); nan for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Estimate:
    """An effect with its 95% interval over ``n`` seeds (``n = 0``: an exact quantity, the interval a point)."""
    effect: float
    low: float
    high: float
    n: int
    paired: bool = False


def exact(value: float) -> Estimate:
    return Estimate(value, value, value, 0)


def mean_interval(values: list[float], paired: bool = False) -> Estimate:
    """Mean of per-seed values (differences, slopes) and its t interval; a point when only one value."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate an effect from")
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, paired)
    half = t975(n - 1) * sample_sd(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, paired)


def welch_interval(a: list[float], b: list[float]) -> Estimate:
    """Mean of A minus mean of B for unpaired samples, Welch's interval (Welch-Satterthwaite degrees of freedom)."""
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        raise ValueError("an unpaired comparison needs values on both sides")
    diff = math.fsum(a) / na - math.fsum(b) / nb
    if na < 2 or nb < 2:
        return Estimate(diff, math.nan, math.nan, min(na, nb))
    va, vb = sample_sd(a) ** 2 / na, sample_sd(b) ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, diff, diff, min(na, nb))
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t975(max(1, math.floor(df))) * se
    return Estimate(diff, diff - half, diff + half, min(na, nb))


def compare(a: dict, b: dict | float, paired: bool) -> Estimate:
    """A - B from per-seed values ``{seed: value}`` (``{None: value}`` for an exact quantity) or a constant B."""
    if not isinstance(b, dict):
        if list(a) == [None]:
            return exact(a[None] - b)
        return mean_interval([v - b for v in a.values()])
    if list(a) == [None] and list(b) == [None]:
        return exact(a[None] - b[None])
    if paired:
        common = sorted(set(a) & set(b) - {None})
        if not common:
            raise ValueError(f"paired comparison without common seeds: {sorted(a)} vs {sorted(b)}")
        return mean_interval([a[s] - b[s] for s in common], paired=True)
    return welch_interval(list(a.values()), list(b.values()))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys on xs."""
    n = len(xs)
    if n < 2 or len(ys) != n:
        raise ValueError(f"a slope needs two or more points of equal count, got {len(xs)} and {len(ys)}")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a slope needs at least two distinct x values")
    return math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def trend(xs: list[float], series: dict) -> Estimate:
    """Per-seed slopes of ``series`` ({seed: [y at each x]}, ``{None: [...]}`` when exact) along ``xs``."""
    if list(series) == [None]:
        return exact(slope(xs, series[None]))
    return mean_interval([slope(xs, ys) for ys in series.values()])


# ---- outcomes ----------------------------------------------------------------------------------------------

HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"
NOT_RUN = "not run"  # no finished runs to read: an untested part of the claim, not an outcome of the rule


def directional(est: Estimate, sign: int, training: bool) -> tuple[str, str]:
    """Outcome of "effect has sign ``sign``" (+1: A > B, grows; -1: A < B, falls), and why."""
    if est.n == 0:  # exact: no noise to exclude
        value = sign * est.effect
        return (HOLDS, "exact") if value > 0 else (FAILS, "exact, opposite or no effect")
    if math.isnan(est.low):
        return UNDECIDED, "one seed, no interval"
    lo, hi = sorted((sign * est.low, sign * est.high))
    if lo > 0:
        if training and est.n < MIN_SEEDS:
            return UNDECIDED, f"{est.n} seeds, fewer than {MIN_SEEDS}"
        return HOLDS, "interval excludes 0"
    if hi < 0:
        return FAILS, "opposite direction beyond noise"
    return UNDECIDED, "interval contains 0"


def equivalence(est: Estimate, delta: float, training: bool) -> tuple[str, str]:
    """Outcome of |effect| < delta."""
    if est.n == 0:
        return (HOLDS, "exact") if abs(est.effect) < delta else (FAILS, f"exact, |effect| >= {delta:g}")
    if math.isnan(est.low):
        return UNDECIDED, "one seed, no interval"
    if -delta < est.low and est.high < delta:
        if training and est.n < MIN_SEEDS:
            return UNDECIDED, f"{est.n} seeds, fewer than {MIN_SEEDS}"
        return HOLDS, f"interval inside ±{delta:g}"
    if est.low >= delta or est.high <= -delta:
        return FAILS, f"interval outside ±{delta:g}"
    return UNDECIDED, f"interval crosses ±{delta:g}"


def identity(est: Estimate, tolerance: float) -> tuple[str, str]:
    """Outcome of an exact quantity equal to its target: |value - target| <= tolerance."""
    if est.n != 0:
        raise ValueError("an identity is checked on an exact quantity (no seeds); use an equivalence over seeds")
    if abs(est.effect) <= tolerance:
        return HOLDS, f"within {tolerance:g}"
    return FAILS, f"off by more than {tolerance:g}"


# ---- claim verdicts ---------------------------------------------------------------------------------------

REPRODUCED, PARTLY, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "partly", "not reproduced", "inconclusive"


@dataclass
class Outcome:
    says: str
    estimate: Estimate
    result: str
    why: str
    network: str = ""


@dataclass
class Judged:
    outcomes: list[Outcome]
    untested: list[str] = field(default_factory=list)
    analogue: bool = False

    @property
    def verdict(self) -> str:
        """The claim's verdict; a prediction not run is an untested part, not an outcome."""
        ran = [o.result for o in self.outcomes if o.result != NOT_RUN]
        return verdict(ran, bool(self.untested) or len(ran) < len(self.outcomes), self.analogue)


def verdict(results: list[str], untested: bool, analogue: bool) -> str:
    """The claim's verdict from its predictions' outcomes (module docstring)."""
    held = sum(r == HOLDS for r in results)
    failed = sum(r == FAILS for r in results)
    if results and held == len(results) and not untested:
        return REPRODUCED + (" (analogue)" if analogue else "")
    if held:
        return PARTLY
    if failed:
        return NOT_REPRODUCED
    return INCONCLUSIVE
