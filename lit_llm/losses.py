"""Cross-entropy over a vocabulary, from scratch, with a hand-written backward.

For a row of logits x and target t:  loss = logsumexp(x) - x[t]  and  d loss / dx = softmax(x) - onehot(t).
Autograd through max/exp/sum/log/gather would allocate and traverse several logits-sized tensors
(batch x seq x vocab, the largest activation of the model); the explicit backward needs one.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows of logits handled at a time: temporaries of ~8 MB stay in cache and are recycled by the allocator,
# where a full (tokens, vocab) temporary would be fresh pages from the OS on every call.
_BLOCK_ELEMENTS = 2**21


def _log_sum_exp(logits: Tensor) -> Tensor:
    """(N, V) -> (N, 1): log sum exp of each row, a block of rows at a time."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, logits.shape[-1]))
    lse = torch.empty(logits.shape[0], 1, dtype=logits.dtype, device=logits.device)
    for i in range(0, logits.shape[0], rows):
        block = logits[i : i + rows]
        row_max = block.amax(dim=-1, keepdim=True)  # exp() of (x - max) <= 1 cannot overflow
        lse[i : i + rows] = row_max + (block - row_max).exp_().sum(dim=-1, keepdim=True).log_()
    return lse


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        # logits (N, V) float32, targets (N,) int64 -> scalar mean loss
        lse = _log_sum_exp(logits)  # (N, 1)
        target_logits = logits.gather(-1, targets.unsqueeze(-1))  # (N, 1)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_loss: Tensor) -> tuple[Tensor, None]:
        logits, targets, lse = ctx.saved_tensors
        scale = grad_loss / logits.shape[0]  # d mean / d row
        grad = torch.empty_like(logits)
        rows = max(1, _BLOCK_ELEMENTS // max(1, logits.shape[-1]))
        for i in range(0, logits.shape[0], rows):  # softmax(x) = exp(x - lse), rebuilt block by block
            torch.sub(logits[i : i + rows], lse[i : i + rows], out=grad[i : i + rows]).exp_().mul_(scale)
        grad.scatter_add_(-1, targets.unsqueeze(-1), (-scale).expand(targets.shape[0], 1))  # - onehot(t)
        return grad, None


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    logits: (..., vocab) float; targets: (...) int, same leading dims. Computed in float32 (the input
    itself when already float32 or float64), stable for logits of any magnitude. Returns a scalar of that
    dtype.
    """
    flat_logits, flat_targets = _flatten(logits, targets, "cross_entropy")
    return _CrossEntropy.apply(flat_logits, flat_targets)


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """The loss of each token, not their mean: logits (..., vocab), targets (...) -> (...) float32
    (or float64). For evaluation (no backward of its own): validation's per-position loss."""
    flat_logits, flat_targets = _flatten(logits, targets, "token_cross_entropy")
    losses = _log_sum_exp(flat_logits) - flat_logits.gather(-1, flat_targets.unsqueeze(-1))  # (N, 1)
    return losses.reshape(targets.shape)


def _flatten(logits: Tensor, targets: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Checked (N, V) float32-or-wider logits and (N,) int64 targets."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must share "
            "their leading dims (logits has one extra, the vocabulary)"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{name}: targets must be integer class ids, got dtype {targets.dtype}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_logits = flat_logits.to(torch.promote_types(flat_logits.dtype, torch.float32))
    return flat_logits, targets.reshape(-1).long()
