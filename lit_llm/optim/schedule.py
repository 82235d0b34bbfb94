"""Learning-rate schedule: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(it: int, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """Learning rate at iteration ``it``.

    - ``it < warmup_iters``: linear ramp ``it / warmup_iters * max_lr`` (0 at it=0: the first updates,
      taken with untrained Adam moment estimates, are the riskiest).
    - ``warmup_iters <= it <= cosine_cycle_iters``: half a cosine from ``max_lr`` down to ``min_lr``.
    - afterwards: ``min_lr``.
    """
    if warmup_iters < 0 or cosine_cycle_iters < warmup_iters:
        raise ValueError(
            "warmup_cosine: expected 0 <= warmup_iters <= cosine_cycle_iters, got "
            f"warmup_iters={warmup_iters}, cosine_cycle_iters={cosine_cycle_iters}"
        )
    if it < warmup_iters:
        return it / warmup_iters * max_lr
    if it <= cosine_cycle_iters:
        span = cosine_cycle_iters - warmup_iters
        progress = (it - warmup_iters) / span if span > 0 else 1.0
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
    return min_lr
