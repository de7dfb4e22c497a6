"""Durations written as strings: ``"160ep"``, ``"1000it"``, ``"2ep50it"`` (OpenLTH's ``Step`` idea).

A duration is turned into a number of iterations only once the iterations per epoch are known, so
a config can say "80ep" for an LR drop or "1000it" for a rewinding point without knowing the dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*it)?\s*$")


@dataclass(frozen=True)
class Duration:
    epochs: int = 0
    iterations: int = 0

    @classmethod
    def parse(cls, text: str | int | Duration) -> Duration:
        """Parse ``"Nep"``, ``"Mit"`` or ``"NepMit"``; a bare int means iterations."""
        if isinstance(text, Duration):
            return text
        if isinstance(text, int) and not isinstance(text, bool):
            if text < 0:
                raise ValueError(f"duration must be >= 0 iterations, got {text}")
            return cls(0, text)
        m = _PATTERN.match(str(text))
        if not str(text).strip() or m is None or (m.group(1) is None and m.group(2) is None):
            raise ValueError(
                f"malformed duration {text!r}: write e.g. '160ep', '1000it' or '2ep50it'"
            )
        return cls(int(m.group(1) or 0), int(m.group(2) or 0))

    def to_iterations(self, iters_per_epoch: int) -> int:
        if iters_per_epoch < 1:
            raise ValueError(f"iterations per epoch must be >= 1, got {iters_per_epoch}")
        return self.epochs * iters_per_epoch + self.iterations

    def __str__(self) -> str:
        if self.epochs and self.iterations:
            return f"{self.epochs}ep{self.iterations}it"
        if self.epochs:
            return f"{self.epochs}ep"
        return f"{self.iterations}it"


def iterations(text: str | int | Duration, iters_per_epoch: int) -> int:
    """Shorthand: ``iterations("2ep50it", 100) == 250``."""
    return Duration.parse(text).to_iterations(iters_per_epoch)
