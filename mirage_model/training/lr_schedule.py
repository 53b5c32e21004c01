"""The learning-rate schedule shared by every trainer: linear warm-up, a constant plateau, then a
cosine decay to ``min_ratio`` of the peak over the last ``decay_steps`` (warm-up/stable/decay).

``decay_steps = 0`` keeps the rate constant after the warm-up; ``decay_steps = total - warmup``
is the usual warm-up + cosine. Because the plateau does not depend on the total, a run stopped
during it and resumed with a longer total and a decay continues exactly as if it had been
configured that way from the start.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, total: int, warmup: int = 0, decay_steps: int = 0, min_ratio: float = 0.0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``, as a fraction of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    start = total - decay_steps
    if decay_steps <= 0 or step < start:
        return 1.0
    t = min(1.0, (step - start) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_stable_decay(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0, decay_steps: int = 0,
                        min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping ``lr_factor`` once per optimizer step (its state dict resumes it)."""
    if warmup + decay_steps > total:
        raise ValueError(f"warm-up ({warmup}) + decay ({decay_steps}) steps exceed the {total} steps")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, decay_steps, min_ratio))
