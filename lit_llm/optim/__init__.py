"""Optimisation from scratch: AdamW, gradient clipping and the warm-up + cosine schedule."""

from __future__ import annotations

from lit_llm.optim.adamw import AdamW, clip_grad_norm
from lit_llm.optim.schedule import warmup_cosine

__all__ = ["AdamW", "clip_grad_norm", "warmup_cosine"]
