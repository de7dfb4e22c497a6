"""Points in training written as strings: ``"160ep"``, ``"1000it"``, ``"2ep50it"``, ``"end"`` (OpenLTH's
``Step`` idea).

A :class:`Step` is turned into a number of iterations only once the iterations per epoch (and, for
``"end"``, the length of training) are known, so a config can say "80ep" for an LR drop, "1000it" for
a rewinding point or "end" for pruning after training without knowing the dataset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*it)?\s*$")


END = "end"


@dataclass(frozen=True)
class Step:
    """``epochs`` epochs and ``iterations`` iterations into training, or its ``end``."""

    epochs: int = 0
    iterations: int = 0
    end: bool = False

    @classmethod
    def parse(cls, text: str | int | Step, allow_end: bool = False) -> Step:
        """Parse ``"Nep"``, ``"Mit"`` or ``"NepMit"`` (and ``"end"`` with ``allow_end``); a bare int means
        iterations."""
        if isinstance(text, Step):
            return text
        if allow_end and isinstance(text, str) and text.strip() == END:
            return cls(end=True)
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
        if self.end:
            raise ValueError("the step 'end' needs the length of training: use resolve()")
        return self.epochs * iters_per_epoch + self.iterations

    def resolve(self, iters_per_epoch: int, total: int) -> int:
        """The iteration this step names in a training of ``total`` iterations; ValueError past its end."""
        t = total if self.end else self.to_iterations(iters_per_epoch)
        if t > total:
            raise ValueError(f"step {self} ({t} it) is beyond the training length ({total} it)")
        return t

    def __str__(self) -> str:
        if self.end:
            return END
        if self.epochs and self.iterations:
            return f"{self.epochs}ep{self.iterations}it"
        if self.epochs:
            return f"{self.epochs}ep"
        return f"{self.iterations}it"


def iterations(text: str | int | Step, iters_per_epoch: int) -> int:
    """Shorthand: ``iterations("2ep50it", 100) == 250``."""
    return Step.parse(text).to_iterations(iters_per_epoch)


Duration = Step  # the name of earlier releases
