"""Turning next-token logits into a token: temperature, top-k, top-p (nucleus) and the draw itself.

Pure functions on tensors, no model and no state: each is testable on a hand-made distribution.
Filters work on logits (setting excluded tokens to -inf) so that they compose in any order and the
final softmax renormalises over whatever is left.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_sampling_args(temperature: float, top_p: float, top_k: int | None) -> None:
    """Raise one ``ValueError`` naming every bad argument (called before any model work)."""
    problems = []
    if not isinstance(temperature, int | float) or not temperature >= 0:
        problems.append(f"temperature={temperature!r}: expected a number >= 0 (0 = greedy)")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        problems.append(f"top_p={top_p!r}: expected a number in (0, 1]")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        problems.append(f"top_k={top_k!r}: expected a positive integer or None")
    if problems:
        raise ValueError("; ".join(problems))


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row, -inf elsewhere. logits: (..., vocab).

    Ties at the k-th value are all kept (a threshold, not an index set): which of two equal logits
    "is" in the top k would otherwise depend on the sort implementation.
    """
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most-probable tokens whose total probability reaches ``p``; -inf elsewhere.

    logits: (..., vocab). Sorted by probability, a token is kept when the mass of the tokens before it
    is still below p, so the set stops at the first token that brings the total to >= p (at least one
    token always survives).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., vocab)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # exclusive cumulative sum
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of ``logits`` (..., vocab) -> (...) int64.

    ``temperature == 0`` is greedy decoding (argmax; top-k/top-p cannot change the argmax). Otherwise
    the logits are divided by the temperature (< 1 sharpens, > 1 flattens), filtered by top-k then
    top-p, and one token is drawn from the softmax with ``generator`` (a seeded generator makes the
    draw reproducible).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial wants 1-D or 2-D
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
