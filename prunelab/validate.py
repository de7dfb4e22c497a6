"""One validator for what a user names or types: names, fractions, counts, option keys.

Every check raises ``ValueError`` with one line in one style, saying what was wrong and what would be
right, with the closest valid name where there is one::

    unknown scope 'layers'; did you mean 'layer'? (valid: global, layer)
    sparsity must be a number in [0, 1), the fraction of weights pruned; got 1.5
    snip does not take option 'temprature'; did you mean 'temperature'? (it takes: batchnorm_train, ...)

The module imports nothing heavy (no torch), so configs and light commands can use it. The choices
several layers of the package share (:data:`SCOPES`, :data:`SCHEDULES`, :data:`TIE_RULES`) live here, once.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

__all__ = [
    "SCHEDULES",
    "SCOPES",
    "TIE_RULES",
    "check_fraction",
    "check_int",
    "check_name",
    "check_options",
    "check_seed",
    "check_target_sparsity",
    "closest",
    "unknown_name_message",
]

SCOPES = ("global", "layer")  # rank all covered weights together, or each tensor alone
SCHEDULES = ("exponential", "linear")  # how the density falls over pruning iterations
TIE_RULES = ("position", "random")  # how a large tie at a pruning threshold is broken

_INTERVALS = {"[0, 1)": (False, True), "(0, 1)": (True, True), "(0, 1]": (True, False), "[0, 1]": (False, False)}


def closest(name: object, valid: Iterable[str]) -> str | None:
    """The valid name closest to ``name`` (difflib's ratio above 0.6), or None."""
    found = difflib.get_close_matches(str(name), list(valid), n=1)
    return found[0] if found else None


def _hint(name: object, valid: Iterable[str]) -> str:
    near = closest(name, valid)
    return f"; did you mean {near!r}?" if near else ""


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """``unknown <kind> <name>; did you mean <closest>? (valid: a, b, c)``."""
    valid = [str(v) for v in valid]
    return f"unknown {kind} {name!r}{_hint(name, valid)} (valid: {', '.join(sorted(valid))})"


def check_name(kind: str, name: object, valid: Iterable[str]) -> str:
    """``name`` if it is one of ``valid``; the standard unknown-name ValueError otherwise."""
    valid = list(valid)
    if not isinstance(name, str) or name not in valid:
        raise ValueError(unknown_name_message(kind, name, valid))
    return name


def check_options(owner: str, given: Iterable[str], accepted: Iterable[str], what: str = "option") -> None:
    """Refuse keys of ``given`` that ``owner`` does not take, naming the closest accepted key and all of them."""
    accepted = sorted(set(accepted))
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise ValueError(
            f"{owner} does not take {what}{plural} {', '.join(map(repr, unknown))}{_hint(unknown[0], accepted)} "
            f"(it takes: {', '.join(accepted) or 'none'})"
        )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def check_fraction(value: object, name: str, interval: str = "[0, 1)", meaning: str = "", hint: str = "") -> float:
    """``value`` as a float if it is a finite number in ``interval`` (one of ``[0, 1)``, ``(0, 1)``,
    ``(0, 1]``, ``[0, 1]``); ``meaning`` says what the number is, ``hint`` is added when it is refused."""
    low_open, high_open = _INTERVALS[interval]
    ok = _is_real(value)
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        what = f", {meaning}" if meaning else ""
        raise ValueError(f"{name} must be a number in {interval}{what}; got {value!r}{hint}")
    return float(value)


def check_int(value: object, name: str, minimum: int, meaning: str = "") -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{what}; got {value!r}")
    return int(value)


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as an int if it is an integer (not a bool): the seed of a random draw; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


RHO_HINT = "; for a compression ratio rho use sparsity = 1 - 1/rho (e.g. 0.999 for rho = 1000)"


def check_target_sparsity(value: object, needed_by: str) -> float:
    """The target sparsity (fraction of the covered weights pruned, in [0, 1)) that ``needed_by``, a criterion
    that builds its mask to a budget of kept weights (NPB, PHEW), needs; named when it is missing."""
    if value is None:
        raise ValueError(f"{needed_by} needs the target sparsity: it builds its mask to a budget of kept weights; "
                         "prunelab.prune passes its own, with prunelab.score pass sparsity=...")
    big = _is_real(value) and float(value) >= 1.0
    return check_fraction(value, "sparsity", "[0, 1)", "the fraction of the covered weights pruned",
                          RHO_HINT if big else "")


def check_label_fraction(fraction) -> float:
    """``fraction`` as a float in [0, 1] (the share of training labels made random); ValueError otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"random_labels must be a fraction of the training labels in [0, 1] (1 = all random, "
                         f"Zhang et al. 2017, §2), got {fraction!r}")
    return float(fraction)


def check_input_shape(input_shape: object, needed_by: str | None = None) -> tuple[int, ...]:
    """The shape of one input without the batch dimension, as a tuple of positive ints (an int ``n`` is
    ``(n,)``). ``needed_by``: the criterion or analysis that feeds a synthetic input of that shape (ones, noise),
    named when the shape is missing."""
    if input_shape is None and needed_by:
        raise ValueError(f"{needed_by} needs input_shape, the shape of one input without the batch dimension (e.g. "
                         "(3, 32, 32) for CIFAR-10): it feeds a synthetic input of that shape, and the shape cannot "
                         "be inferred from a module")
    if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
        input_shape = (int(input_shape),)
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in input_shape)):
        raise ValueError("input_shape must be the shape of one input without the batch dimension, a tuple of "
                         f"positive ints such as (3, 32, 32); got {input_shape!r}")
    return tuple(int(s) for s in input_shape)
