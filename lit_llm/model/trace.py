"""``trace_forward``: one forward pass of a ``TransformerLM`` that also returns what happens inside it,
the residual stream after each block and each layer's attention weights.

Why hooks rather than a second forward: the blocks' own ``forward`` runs, so what is measured is the
model as it trains (pre-, post- or no norm, RoPE or not), and nothing here has to follow a change to
the architecture. The attention weights are recomputed from each attention layer's input by
``MultiHeadSelfAttention.attention_probabilities``: the fused kernel (or our blocked path) that
training uses never holds the whole (seq, seq) matrix, and stays untouched.

The network-health callback (entropy of the attention, RMS of the residual stream, largest logit) and
the attention-map images (``lit_llm.attention_maps``) are both made from one trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_llm.model.transformer import TransformerLM


@dataclass
class ForwardTrace:
    logits: Tensor  # (batch, seq, vocab)
    residuals: list[Tensor]  # one per block: its output, the residual stream, (batch, seq, d_model)
    attention: list[Tensor]  # one per layer: (batch, heads, seq, seq), rows = queries, rows sum to 1


@torch.no_grad()
def trace_forward(model: TransformerLM, token_ids: Tensor) -> ForwardTrace:
    """``model`` on ``token_ids`` (batch, seq), in eval mode (restored afterwards), without gradients.

    A model compiled in place (``nn.Module.compile``) is traced eagerly: ``model.forward`` is
    the plain method, and the compiled graph (whose guards would see the hooks) is never entered.
    """
    residuals: list[Tensor] = []
    weights: list[Tensor] = []

    def keep_output(module: torch.nn.Module, args: tuple, output: Tensor) -> None:
        residuals.append(output.detach())

    def keep_attention(module: torch.nn.Module, args: tuple) -> None:
        x, positions = args[0], args[1] if len(args) > 1 else None
        weights.append(module.attention_probabilities(x, positions))

    handles = [layer.register_forward_hook(keep_output) for layer in model.layers]
    handles += [layer.attn.register_forward_pre_hook(keep_attention) for layer in model.layers]
    was_training = model.training
    model.eval()
    try:
        logits = model.forward(token_ids)  # (batch, seq, vocab)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return ForwardTrace(logits=logits, residuals=residuals, attention=weights)


def attention_entropy(weights: Tensor) -> Tensor:
    """Entropy in nats of each query's attention distribution, averaged over the batch and the query
    positions: (batch, heads, seq, seq) -> (heads,).

    A head that spreads its attention evenly over the n keys it may see has entropy log(n); a head
    that always looks at one key has 0: a collapsing head shows as its entropy falling to 0. Entries
    the mask forbids are exactly 0 and contribute 0 (x log x -> 0)."""
    per_query = -torch.special.xlogy(weights, weights).sum(-1)  # (batch, heads, seq)
    return per_query.mean(dim=(0, 2))
