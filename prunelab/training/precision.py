"""Mixed precision: which dtype the forward pass runs in, and whether the loss is scaled.

``TrainSettings.amp`` names the mode and is part of a run's identity, because it changes the numbers a
run computes (activations and gradients rounded to 8 bits of mantissa for bfloat16, 11 for float16).

=========  ===============  ============  =====================================================
amp        autocast dtype   loss scaling  why
=========  ===============  ============  =====================================================
False      (none)           no            float32 throughout
"bf16"     bfloat16         no            float32's exponent range: gradients do not underflow
"fp16"     float16          yes           5-bit exponent: small gradients underflow without it
True       fp16 on CUDA,    as fp16 /     the meaning ``amp=True`` had before the named modes,
           bf16 elsewhere   bf16          kept so that those runs keep their hashes
=========  ===============  ============  =====================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: mode name -> (autocast dtype, loss scaling)
MODES: dict[str, tuple[torch.dtype, bool]] = {
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, True),
}


@dataclass(frozen=True)
class Precision:
    """The resolved mixed-precision mode of one training on one device."""

    device_type: str
    dtype: torch.dtype | None  # None: no autocast
    loss_scaling: bool = False

    @classmethod
    def of(cls, amp: bool | str | None, device: torch.device | str) -> Precision:
        """The mode ``amp`` (a :class:`TrainSettings` value) means on ``device``."""
        device_type = torch.device(device).type
        if amp is None or amp is False:
            return cls(device_type, None)
        if amp is True:
            amp = "fp16" if device_type == "cuda" else "bf16"
        if amp not in MODES:
            raise ValueError(f"amp must be true, false or one of {', '.join(MODES)}, got {amp!r}")
        dtype, scaling = MODES[amp]
        return cls(device_type, dtype, scaling)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype or torch.bfloat16, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, a no-op unless this mode scales the loss."""
        return torch.amp.GradScaler(self.device_type, enabled=self.loss_scaling)
