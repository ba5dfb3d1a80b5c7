"""Learning-rate schedule of the RWKV trainers (docs/reference.md, "Learning rates").

Warmup multiplies the rate by 0.01 + 0.99 * step / warmup; afterwards it decays from lr_init to
lr_final over the remaining planned steps, exponentially (the RWKV default), by a cosine, or
linearly (what RWKV-LM falls back to when a final rate is 0, and the CTC encoder's schedule).
Expressed as a factor of lr_init so that parameter groups with their own rates (state tuning
uses a far larger one than the projector) share one shape.
"""

from __future__ import annotations

import math

from ..config import LR_SCHEDULES


def lr_factor(step: int, total_steps: int, warmup_steps: int, final_ratio: float,
              kind: str = "exp") -> float:
    """Multiplier of lr_init at optimizer step `step` (0-based); final_ratio = lr_final / lr_init."""
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; choose one of {', '.join(LR_SCHEDULES)}")
    warm = 0.01 + 0.99 * step / warmup_steps if step < warmup_steps else 1.0
    if kind == "const" or total_steps <= warmup_steps:
        return warm
    progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    if kind == "exp":
        decay = final_ratio**progress
    elif kind == "linear":
        decay = final_ratio + (1 - final_ratio) * (1 - progress)
    else:
        decay = final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return warm * decay
