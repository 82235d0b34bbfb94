"""``TransformerBlock`` and the decoder-only ``TransformerLM`` built from a ``ModelConfig``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_llm.model.attention import KVCache, MultiHeadSelfAttention
from lit_llm.model.config import ModelConfig
from lit_llm.model.layers import Embedding, Linear, RMSNorm, SiLUFeedForward, SwiGLU


class TransformerBlock(nn.Module):
    """One attention sublayer and one feed-forward sublayer, each wrapped in a residual connection.

    norm="pre":  x + attn(ln1(x)), then + ffn(ln2(.)): the residual stream is never normalised, which
                 is what lets deep stacks train without warm-up tricks.
    norm="post": ln1(x + attn(x)), then ln2(. + ffn(.)): the original 2017 layout.
    norm="none": x + attn(x), then + ffn(.): the ablation without any RMSNorm.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        max_seq_len: int,
        theta: float | None,
        *,
        norm: str = "pre",
        ffn: str = "swiglu",
        attn_impl: str = "sdpa",
        norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.post_norm = norm == "post"
        make_norm = (
            (lambda: nn.Identity())
            if norm == "none"
            else (lambda: RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype))
        )
        self.ln1 = make_norm()
        self.attn = MultiHeadSelfAttention(
            d_model, num_heads, max_seq_len, theta, attn_impl=attn_impl, device=device, dtype=dtype
        )
        self.ln2 = make_norm()
        ffn_cls = SwiGLU if ffn == "swiglu" else SiLUFeedForward
        self.ffn = ffn_cls(d_model, d_ff, device=device, dtype=dtype)

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> Tensor:
        # x: (..., seq, d_model) -> (..., seq, d_model); kv_cache: this layer's (generation only)
        if self.post_norm:
            x = self.ln1(x + self.attn(x, token_positions, kv_cache))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(self.ln1(x), token_positions, kv_cache)
        return x + self.ffn(self.ln2(x))


class TransformerLM(nn.Module):
    """Decoder-only language model: token embeddings, ``num_layers`` blocks, final norm, ``lm_head``.

    Parameter names (``token_embeddings``, ``layers.{i}.ln1/attn/ln2/ffn``, ``ln_final``, ``lm_head``)
    are part of the public contract: state dicts are interchangeable with any model that follows it.
    ``ln_final`` is an RMSNorm only for norm="pre" (with "post" the last block already ends in a norm;
    with "none" there is none); otherwise it is an ``nn.Identity`` without parameters.
    """

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int | None = None,
        rope_theta: float = 10000.0,
        *,
        norm: str = "pre",
        position: str = "rope",
        ffn: str = "swiglu",
        attn_impl: str = "sdpa",
        tie_embeddings: bool = False,
        norm_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfg = ModelConfig(
            vocab_size=vocab_size,
            context_length=context_length,
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            d_ff=d_ff,
            rope_theta=rope_theta,
            norm=norm,
            position=position,
            ffn=ffn,
            attn_impl=attn_impl,
            tie_embeddings=tie_embeddings,
            norm_eps=norm_eps,
        )
        self.config = cfg
        self.token_embeddings = Embedding(vocab_size, d_model, device=device, dtype=dtype)
        theta = rope_theta if position == "rope" else None
        self.layers = nn.ModuleList(
            TransformerBlock(
                d_model,
                num_heads,
                cfg.resolved_d_ff,
                context_length,
                theta,
                norm=norm,
                ffn=ffn,
                attn_impl=attn_impl,
                norm_eps=norm_eps,
                device=device,
                dtype=dtype,
            )
            for _ in range(num_layers)
        )
        self.ln_final = (
            RMSNorm(d_model, eps=norm_eps, device=device, dtype=dtype) if norm == "pre" else nn.Identity()
        )
        self.lm_head = Linear(d_model, vocab_size, device=device, dtype=dtype)
        if tie_embeddings:
            # One Parameter under two names: both appear in the state dict and load back as one tensor.
            self.lm_head.weight = self.token_embeddings.weight

    @classmethod
    def from_config(
        cls, config: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TransformerLM:
        return cls(**config.to_dict(), device=device, dtype=dtype)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> list[KVCache]:
        """Empty per-layer key/value caches for generating ``batch_size`` sequences of up to ``max_len``
        (default: context_length) tokens, on the model's device and dtype. Pass as ``kv_cache=``."""
        weight = self.lm_head.weight
        cfg = self.config
        return [
            KVCache(
                batch_size,
                cfg.num_heads,
                max_len or cfg.context_length,
                cfg.head_dim,
                device=weight.device,
                dtype=weight.dtype,
            )
            for _ in self.layers
        ]

    def forward(
        self,
        token_ids: Tensor,
        token_positions: Tensor | None = None,
        *,
        kv_cache: list[KVCache] | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """token_ids: (batch, seq) int64; token_positions: (batch, seq) or (seq,) ints, None for
        0..seq-1. Returns logits (batch, seq, vocab_size).

        Generation: ``kv_cache`` (from ``new_kv_cache``) makes token_ids the continuation of the tokens
        cached so far (positions default to cached..cached+seq-1) and stores their keys/values;
        ``last_only`` returns the logits of the last position only, (batch, 1, vocab_size).
        """
        seq = token_ids.shape[-1]
        start = 0 if kv_cache is None else kv_cache[0].length
        if start + seq > self.config.context_length:
            held = f"{start} cached + " if start else ""
            raise ValueError(
                f"sequence length {held}{seq} exceeds the model's context_length={self.config.context_length}"
            )
        x = self.token_embeddings(token_ids)  # (batch, seq, d_model)
        if kv_cache is None:
            for layer in self.layers:
                x = layer(x, token_positions)
        else:
            if token_positions is None:  # computed once here rather than in every layer
                token_positions = torch.arange(start, start + seq, device=token_ids.device)
            for layer, cache in zip(self.layers, kv_cache, strict=True):
                x = layer(x, token_positions, cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.ln_final(x))  # (batch, seq or 1, vocab_size)
