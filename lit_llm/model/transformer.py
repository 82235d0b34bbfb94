"""``TransformerBlock`` and the decoder-only ``TransformerLM`` built from a ``ModelConfig``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lit_llm.model.attention import KVCache, MultiHeadSelfAttention
from lit_llm.model.config import ModelConfig
from lit_llm.model.layers import Dropout, Embedding, Linear, RMSNorm, SiLUFeedForward, SwiGLU


def block_config(
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
) -> ModelConfig:
    """The config of a standalone block: ``theta`` None means no RoPE (position="nope"); the fields a
    block does not read (vocab_size, num_layers) are 1."""
    return ModelConfig(
        vocab_size=1,
        context_length=max_seq_len,
        d_model=d_model,
        num_layers=1,
        num_heads=num_heads,
        d_ff=d_ff,
        rope_theta=10000.0 if theta is None else theta,
        norm=norm,
        position="nope" if theta is None else "rope",
        ffn=ffn,
        attn_impl=attn_impl,
        norm_eps=norm_eps,
    )


def _block_index(index: int = 0) -> int:
    return index


class TransformerBlock(nn.Module):
    """One attention sublayer and one feed-forward sublayer, each wrapped in a residual connection.

    norm="pre":  x + attn(ln1(x)), then + ffn(ln2(.)): the residual stream is never normalised, which
                 is what lets deep stacks train without warm-up tricks.
    norm="post": ln1(x + attn(x)), then ln2(. + ffn(.)): the original 2017 layout.
    norm="none": x + attn(x), then + ffn(.): the ablation without any RMSNorm.
    """

    def __init__(
        self,
        config: ModelConfig | int,
        *args: Any,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        """``TransformerBlock(config, index=0)``: block ``index`` of the model ``config`` describes.

        Standalone, ``TransformerBlock(d_model, num_heads, d_ff, max_seq_len, theta, *, norm, ffn,
        attn_impl, norm_eps)`` builds the same block from the config ``block_config`` makes of these.
        """
        super().__init__()
        if isinstance(config, ModelConfig):
            index = _block_index(*args, **kwargs)
        else:
            config, index = block_config(config, *args, **kwargs), 0
        self.config, self.index = config, index
        self.post_norm = config.norm == "post"
        d_model = config.d_model

        def make_norm() -> nn.Module:
            if config.norm == "none":
                return nn.Identity()
            return RMSNorm(d_model, eps=config.norm_eps, device=device, dtype=dtype)

        self.ln1 = make_norm()
        self.attn = MultiHeadSelfAttention(
            d_model,
            config.num_heads,
            config.context_length,
            config.rope_theta if config.position == "rope" else None,
            attn_impl=config.attn_impl,
            dropout=config.resolved_attention_dropout,
            device=device,
            dtype=dtype,
        )
        self.ln2 = make_norm()
        ffn_cls = SwiGLU if config.ffn == "swiglu" else SiLUFeedForward
        self.ffn = ffn_cls(d_model, config.resolved_d_ff, device=device, dtype=dtype)
        self.drop = Dropout(config.dropout)  # on each sublayer's output, before it joins the residual

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> Tensor:
        # x: (..., seq, d_model) -> (..., seq, d_model); kv_cache: this layer's (generation only)
        if self.post_norm:
            x = self.ln1(x + self.drop(self.attn(x, token_positions, kv_cache)))
            return self.ln2(x + self.drop(self.ffn(x)))
        x = x + self.drop(self.attn(self.ln1(x), token_positions, kv_cache))
        return x + self.drop(self.ffn(self.ln2(x)))


class TransformerLM(nn.Module):
    """Decoder-only language model: token embeddings, ``num_layers`` blocks, final norm, ``lm_head``.

    Parameter names (``token_embeddings``, ``layers.{i}.ln1/attn/ln2/ffn``, ``ln_final``, ``lm_head``)
    are part of the public contract: state dicts are interchangeable with any model that follows it.
    ``ln_final`` is an RMSNorm only for norm="pre" (with "post" the last block already ends in a norm;
    with "none" there is none); otherwise it is an ``nn.Identity`` without parameters.
    """

    def __init__(
        self,
        config: ModelConfig | int | None = None,
        *args: Any,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        """``TransformerLM(config)``, or the ``ModelConfig`` fields themselves:
        ``TransformerLM(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta,
        *, norm, position, ffn, attn_impl, tie_embeddings, norm_eps)``, positionally or by name."""
        super().__init__()
        if isinstance(config, ModelConfig):
            if args or kwargs:
                raise TypeError("TransformerLM(config) takes only device= and dtype= besides the config")
        else:
            config = ModelConfig(*(args if config is None else (config, *args)), **kwargs)
        self.config = config
        self.token_embeddings = Embedding(config.vocab_size, config.d_model, device=device, dtype=dtype)
        self.embedding_drop = Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(config, i, device=device, dtype=dtype) for i in range(config.num_layers)
        )
        self.ln_final = (
            RMSNorm(config.d_model, eps=config.norm_eps, device=device, dtype=dtype)
            if config.norm == "pre"
            else nn.Identity()
        )
        self.lm_head = Linear(config.d_model, config.vocab_size, device=device, dtype=dtype)
        if config.tie_embeddings:
            # One Parameter under two names: both appear in the state dict and load back as one tensor.
            self.lm_head.weight = self.token_embeddings.weight

    @classmethod
    def from_config(
        cls, config: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TransformerLM:
        return cls(config, device=device, dtype=dtype)

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
        x = self.embedding_drop(self.token_embeddings(token_ids))  # (batch, seq, d_model)
        if kv_cache is None:
            for layer in self.layers:
                x = layer(x, token_positions)
        else:  # positions default to cached..cached+seq-1, which each layer slices from its cache length
            for layer, cache in zip(self.layers, kv_cache, strict=True):
                x = layer(x, token_positions, cache)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.ln_final(x))  # (batch, seq or 1, vocab_size)
