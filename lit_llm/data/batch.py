"""Token windows from one long array of token ids: the one place windows are cut, and random batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def windows(tokens: np.ndarray, starts: np.ndarray, context_length: int) -> tuple[Tensor, Tensor]:
    """The windows of ``context_length + 1`` tokens at ``starts``, as inputs and next-token targets.

    Returns ``(x, y)``, both (len(starts), context_length) int64, with y[b, i] = tokens[starts[b] + i + 1],
    the token that follows x[b, i]. ``tokens`` is a 1-D integer array, possibly an ``np.memmap``: one
    fancy index over all windows gathers just the elements it names, so only the pages those touch
    are read from disk (a window spans a page or two), never the whole file; the result is an
    ordinary in-memory array.
    """
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) and (starts.min() < 0 or starts.max() + context_length >= len(tokens)):
        raise ValueError(
            f"window starts must lie in 0..{len(tokens) - context_length - 1} for windows of "
            f"{context_length + 1} tokens in {len(tokens)}, got {starts.min()}..{starts.max()}"
        )
    offsets = starts[:, None] + np.arange(context_length + 1)  # (batch, context_length + 1)
    block = torch.from_numpy(np.asarray(tokens[offsets], dtype=np.int64))
    return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def get_batch(
    dataset: np.ndarray,
    batch_size: int,
    context_length: int,
    device: torch.device | str,
    rng: np.random.Generator | torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample ``batch_size`` windows of ``context_length + 1`` consecutive tokens at random offsets.

    Returns ``(x, y)``, both (batch_size, context_length) int64 on ``device``, with ``y`` = ``x`` shifted
    by one token: y[b, i] is the token that follows x[b, i]. ``dataset`` is a 1-D integer array (a
    ``np.memmap`` works: only the sampled windows are read, see ``windows``). ``rng`` makes the draw
    reproducible; None uses numpy's global generator (seed it with ``np.random.seed``).
    """
    if dataset.ndim != 1:
        raise ValueError(f"get_batch: dataset must be a 1-D array of token ids, got shape {dataset.shape}")
    if not np.issubdtype(dataset.dtype, np.integer):
        raise ValueError(f"get_batch: dataset must hold integer token ids, got dtype {dataset.dtype}")
    if batch_size < 1 or context_length < 1:
        raise ValueError(
            f"get_batch: batch_size={batch_size} and context_length={context_length} must be positive"
        )
    num_starts = len(dataset) - context_length  # valid starts: 0 .. len - context_length - 1
    if num_starts < 1:
        raise ValueError(
            f"get_batch: dataset of {len(dataset)} tokens is too short for windows of "
            f"context_length + 1 = {context_length + 1} tokens"
        )
    if isinstance(rng, torch.Generator):
        starts = torch.randint(num_starts, (batch_size,), generator=rng).numpy()
    elif rng is not None:
        starts = rng.integers(0, num_starts, size=batch_size)
    else:
        starts = np.random.randint(0, num_starts, size=batch_size)
    x, y = windows(dataset, starts, context_length)
    device = torch.device(device)
    if device.type == "cuda":
        # Pinned host memory lets the copy overlap with the GPU work already queued.
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
